"""PackedItems (the index build's names and captions, spilled to files) reads back as the list of
Items it replaces: any text, any slice, with or without a root folder; the captions reader
streams a file in chunks exactly as it reads it whole."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from jwae_ext.data.precomp import iter_captions
from jwae_ext.search.items import Item, PackedItems

texts = st.text(max_size=6)  # any unicode, empty strings and newlines included
collections = st.lists(st.tuples(texts, st.lists(texts, max_size=3)), max_size=8)


def spilled(folder: Path, rows, root=None) -> PackedItems:
    return PackedItems.spill(
        folder,
        (name for name, _ in rows),
        (caption for _, captions in rows for caption in captions),
        (len(captions) for _, captions in rows),
        root=root,
    )


@given(collections, st.slices(20), st.booleans())
def test_spilled_items_read_back_as_items(tmp_path_factory, rows, cut, with_root):
    root = Path("/photos") if with_root else None
    packed = spilled(tmp_path_factory.mktemp("items"), rows, root)
    expected = [Item(n, None if root is None else root / n, tuple(c)) for n, c in rows]
    assert list(packed) == expected
    assert list(packed[cut]) == expected[cut]
    assert packed[cut].caption_count() == sum(len(i.captions) for i in expected[cut])
    if expected:
        assert packed[-1] == expected[-1]
        assert packed.caption_counts(0, len(rows)).tolist() == [len(c) for _, c in rows]


def test_counts_must_fit_the_names_and_captions(tmp_path):
    with pytest.raises(ValueError, match=r"one count per name \(2\), got 1"):
        PackedItems.spill(tmp_path, ["a", "b"], ["x"], [1])
    with pytest.raises(ValueError, match="adds up to 2 captions, but 1 were given"):
        PackedItems.spill(tmp_path, ["a", "b"], ["x"], [1, 1])


def _whole_file_captions(data: bytes) -> list[str]:
    """The rule read_captions documents, applied to the whole text at once (the oracle)."""
    text = data.replace(b"\r\n", b"\n").replace(b"\r", b"\n").decode("utf-8")
    lines = text.removeprefix("\ufeff").split("\n")
    if lines[-1] == "":
        lines.pop()
    return [line.strip() for line in lines]


line_ends = st.sampled_from(["\n", "\r\n", "\r"])
caption_text = st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=12)


@given(st.lists(st.tuples(caption_text, line_ends), min_size=1, max_size=12), st.booleans(),
       st.booleans(), st.integers(1, 9))  # fmt: skip
def test_captions_stream_in_chunks_as_read_whole(tmp_path_factory, lines, bom, last_end, chunk):
    body = "".join(text + end for text, end in lines)
    if not last_end:
        body = body[: len(body) - len(lines[-1][1])]
    data = (("\ufeff" if bom else "") + body).encode("utf-8")
    path = tmp_path_factory.mktemp("caps") / "x_caps.txt"
    path.write_bytes(data)
    expected = _whole_file_captions(data)
    if all(expected):
        assert list(iter_captions(path, chunk_bytes=chunk)) == expected
    else:
        with pytest.raises(ValueError, match="empty caption"):
            list(iter_captions(path, chunk_bytes=chunk))
