"""PackedItems (the index build's names and captions, packed) reads back as the list of Items it
replaces: any text, any slice, concatenated parts."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from jwae_ext.search.items import Item, PackedItems

texts = st.text(max_size=6)  # any unicode, empty strings and newlines included
collections = st.lists(st.tuples(texts, st.lists(texts, max_size=3)), max_size=8)


def packed(rows: list[tuple[str, list[str]]]) -> PackedItems:
    starts = np.cumsum([0, *(len(caps) for _, caps in rows)])
    return PackedItems([n for n, _ in rows], [c for _, caps in rows for c in caps], starts)


def as_items(rows) -> list[Item]:
    return [Item(name, None, tuple(caps)) for name, caps in rows]


@given(collections, collections, st.slices(20))
def test_packed_items_read_back_as_items(first, second, cut):
    whole = PackedItems.concat([packed(first), packed(second)])
    expected = as_items(first + second)
    assert list(whole) == expected
    assert list(whole[cut]) == expected[cut]
    assert whole[cut].caption_count() == sum(len(i.captions) for i in expected[cut])
    if expected:
        assert whole[-1] == expected[-1]


def test_caption_starts_must_fit_the_names():
    with pytest.raises(ValueError, match=r"caption_starts must have 3 entries.*got 2"):
        PackedItems(["a", "b"], ["x"], np.array([0, 1]))
