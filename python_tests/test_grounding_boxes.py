"""IoU, union boxes and R@K of phrase localization, against hand-made cases and a brute-force
reference (the Flickr30k Entities convention: inclusive pixel corners)."""

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from jwae_ext.grounding.boxes import box_iou, rank_proposals, recall_at, union_box


def brute_iou(a, b) -> float:
    """IoU by counting pixels."""
    pa = {(x, y) for x in range(a[0], a[2] + 1) for y in range(a[1], a[3] + 1)}
    pb = {(x, y) for x in range(b[0], b[2] + 1) for y in range(b[1], b[3] + 1)}
    union = len(pa | pb)
    return len(pa & pb) / union if union else 0.0


@pytest.mark.parametrize(
    ("a", "b", "iou"),
    [
        ((0, 0, 9, 9), (0, 0, 9, 9), 1.0),
        ((0, 0, 9, 9), (10, 0, 19, 9), 0.0),  # touching, no shared pixel
        ((0, 0, 9, 9), (9, 0, 18, 9), 10 / 190),  # one shared column of 10 pixels
        ((0, 0, 9, 9), (0, 0, 4, 9), 0.5),  # inclusive: 5 of 10 columns
        ((0, 0, 0, 0), (0, 0, 0, 0), 1.0),  # a one-pixel box is no empty box
        ((2, 2, 1, 1), (0, 0, 5, 5), 0.0),  # degenerate: no area
    ],
)
def test_iou_of_hand_made_boxes(a, b, iou):
    assert box_iou(np.array(a), np.array(b)) == pytest.approx(iou)


boxes = st.tuples(*[st.integers(0, 12)] * 4).map(
    lambda t: (min(t[0], t[2]), min(t[1], t[3]), max(t[0], t[2]), max(t[1], t[3]))
)


@given(st.lists(boxes, min_size=1, max_size=5), boxes)
def test_iou_counts_pixels(proposals, gt):
    got = box_iou(np.array(proposals), np.array(gt)[None])
    assert got == pytest.approx([brute_iou(p, gt) for p in proposals])


def test_union_box_holds_every_box():
    assert union_box(np.array([[5, 6, 7, 8], [1, 9, 3, 12], [4, 2, 6, 3]])).tolist() == [
        1,
        2,
        7,
        12,
    ]
    with pytest.raises(ValueError, match="union_box needs"):
        union_box(np.zeros((0, 4)))


def test_ties_go_to_the_lowest_index_and_padding_is_never_chosen():
    scores = torch.tensor([[0.5, 0.9, 0.9, 0.9, 5.0], [1.0, 1.0, 1.0, 1.0, 1.0]])
    num_boxes = torch.tensor([4, 2])
    top = rank_proposals(scores, num_boxes, 3)
    assert top.tolist() == [[1, 2, 3], [0, 1, -1]]  # 5.0 is padding; row 2 has 2 proposals


def brute_recall(scores, num_boxes, iou, k, threshold=0.5):
    hits = []
    for row in range(len(scores)):
        real = list(range(int(num_boxes[row])))
        ranked = sorted(real, key=lambda j: (-float(scores[row, j]), j))[:k]
        hits.append(any(float(iou[row, j]) >= threshold for j in ranked))
    return hits


@given(
    st.integers(1, 6).flatmap(
        lambda p: st.tuples(
            st.lists(
                st.tuples(
                    st.lists(st.integers(0, 3), min_size=p, max_size=p),  # few values: ties
                    st.lists(st.sampled_from([0.0, 0.3, 0.5, 0.7]), min_size=p, max_size=p),
                    st.integers(0, p),
                ),
                min_size=1,
                max_size=5,
            ),
            st.integers(1, p),
        )
    )
)
def test_recall_matches_a_brute_force_reference(case):
    rows, k = case
    scores = torch.tensor([r[0] for r in rows], dtype=torch.float32)
    iou = torch.tensor([r[1] for r in rows])
    num_boxes = torch.tensor([r[2] for r in rows])
    got = recall_at(rank_proposals(scores, num_boxes, k), iou).tolist()
    assert got == brute_recall(scores, num_boxes, iou, k)
