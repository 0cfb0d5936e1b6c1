"""Retrieval metrics from exact ranks: R@K tables and the standard COCO / Flickr30k protocols.

Ranks come from :func:`jwae_ext.ops.retrieval_ranks` (0 = the ground truth is first). The metrics
are VSE++'s: R@1/5/10 in percent, ``medr = floor(median) + 1`` (the median of an even count being
the mean of the two middle ranks, as numpy takes it), ``meanr = mean + 1``, and ``rsum`` the sum of
the six recalls. A tie is never a hit (DESIGN.md §3.3: every other item scoring at least as high
as the ground truth counts against the query), and the tables say how many queries tied. With no
tied scores every number equals VSE++'s ``i2t``/``t2i`` exactly.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from jwae_ext import ops
from jwae_ext.ops._checks import check_choice, check_tensor, check_tensors

__all__ = [
    "PROTOCOLS",
    "RanksFn",
    "check_protocol",
    "evaluate",
    "evaluate_xattn",
    "format_table",
    "protocol_tables",
    "recall_table",
]

PROTOCOLS = ("full", "1k", "5k")
_COCO_TEST_IMAGES = 5000
_COCO_FOLDS = 5
_RECALL_KS = (1, 5, 10)

# (img_emb, cap_emb, cap_to_img) -> (i2t ranks, t2i ranks, i2t ties, t2i ties), e.g.
# jwae_ext.ops.retrieval_ranks.
RanksFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], ops.Ranks]


def recall_table(ranks: torch.Tensor) -> dict[str, float]:
    """R@1, R@5, R@10 (percent), medr and meanr of a 1-D integer tensor of 0-based ranks."""
    check_tensor("ranks", ranks)
    if ranks.dim() != 1 or ranks.numel() == 0:
        raise ValueError(
            f"jwae_ext: argument 'ranks' must be a non-empty 1-D tensor, got shape "
            f"{tuple(ranks.shape)}"
        )
    if ranks.dtype.is_floating_point or ranks.dtype.is_complex or ranks.dtype == torch.bool:
        raise TypeError(f"jwae_ext: argument 'ranks' must be an integer tensor, got {ranks.dtype}")
    if ranks.is_meta:
        raise ValueError("jwae_ext: argument 'ranks' must hold values, got a meta tensor")
    values = ranks.detach().to("cpu", torch.int64)
    if values.min() < 0:
        # A rank counts gallery items; a negative one (e.g. a -1 placeholder) would count as a hit.
        raise ValueError(
            f"jwae_ext: argument 'ranks' must hold ranks >= 0, got {values.min().item()} at "
            f"position {values.argmin().item()}"
        )
    n = values.numel()
    # Integer counts and sums divided once, as VSE++ computes them, so the floats match exactly.
    table = {f"r{k}": 100.0 * int((values < k).sum()) / n for k in _RECALL_KS}
    middle = values.sort().values[(n - 1) // 2 : n // 2 + 1]  # numpy's median: mean of the middle
    table["medr"] = math.floor(int(middle.sum()) / len(middle)) + 1.0
    table["meanr"] = int(values.sum()) / n + 1.0
    return table


def _tables(ranks: ops.Ranks) -> dict:
    i2t, t2i, i2t_ties, t2i_ties = ranks
    result = {"i2t": recall_table(i2t), "t2i": recall_table(t2i)}
    result["rsum"] = sum(result[d][f"r{k}"] for d in ("i2t", "t2i") for k in _RECALL_KS)
    # Queries whose ground truth's score another item matches (those items counted against it).
    result["ties"] = {"i2t": int((i2t_ties > 0).sum()), "t2i": int((t2i_ties > 0).sum())}
    return result


def _check_image_ids(cap_emb: torch.Tensor, cap_to_img: torch.Tensor, n_images: int) -> None:
    """What the kernel checks, on the whole set before it is split into folds (where an id out of
    range would silently fall out of every fold, and image ids are fold-local)."""
    if cap_to_img.dtype != torch.int64 or cap_to_img.dim() != 1:
        raise TypeError(
            f"jwae_ext: argument 'cap_to_img' must be a 1-D int64 tensor, got a "
            f"{cap_to_img.dim()}-D {cap_to_img.dtype} tensor"
        )
    if cap_emb.dim() != 2 or cap_to_img.shape[0] != cap_emb.shape[0]:
        raise ValueError(
            f"jwae_ext: argument 'cap_to_img' must have one entry per row of 'cap_emb' "
            f"(shape {tuple(cap_emb.shape)}), got {cap_to_img.shape[0]}"
        )
    if cap_to_img.numel() and (cap_to_img.min() < 0 or cap_to_img.max() >= n_images):
        raise ValueError(
            f"jwae_ext: argument 'cap_to_img' must hold image ids in [0, {n_images}), got values "
            f"from {cap_to_img.min().item()} to {cap_to_img.max().item()}"
        )
    uncaptioned = (torch.bincount(cap_to_img, minlength=n_images) == 0).nonzero()
    if len(uncaptioned):
        raise ValueError(
            f"jwae_ext: every image needs at least one caption in 'cap_to_img', but "
            f"{len(uncaptioned)} of {n_images} images have none, the first is image "
            f"{uncaptioned[0].item()}"
        )


def _fold(img_emb, cap_emb, cap_to_img, first: int, count: int):
    """The images [first, first + count) and their captions, wherever they are."""
    captions = ((cap_to_img >= first) & (cap_to_img < first + count)).nonzero().squeeze(1)
    return img_emb[first : first + count], cap_emb[captions], cap_to_img[captions] - first


def _mean_of(tables: list[dict]) -> dict:
    mean = {
        d: {key: sum(t[d][key] for t in tables) / len(tables) for key in tables[0][d]}
        for d in ("i2t", "t2i")
    }
    mean["rsum"] = sum(t["rsum"] for t in tables) / len(tables)
    # Tied queries are counted, not averaged: every fold's queries are distinct.
    mean["ties"] = {d: sum(t["ties"][d] for t in tables) for d in ("i2t", "t2i")}
    return mean


def evaluate(
    img_emb: torch.Tensor,
    cap_emb: torch.Tensor,
    cap_to_img: torch.Tensor,
    protocol: str = "full",
) -> dict:
    """Image-to-text and text-to-image retrieval metrics under a standard protocol.

    Args:
        img_emb: (N, d) image embeddings; cap_emb: (M, d) caption embeddings; cap_to_img: int64
            (M,) image of each caption (any number per image, any order).
        protocol: ``"full"`` ranks against everything given; ``"5k"`` is COCO 5K (requires
            N = 5000, same as full); ``"1k"`` is COCO 1K: the mean over 5 folds of 1000
            consecutive images and their captions (requires N = 5000), each metric averaged
            over the folds as VSE++ does (medr may then be fractional).

    Returns:
        ``{"i2t": table, "t2i": table, "rsum": float, "ties": {"i2t": int, "t2i": int}}`` with
        tables from :func:`recall_table`; ``ties``: how many queries (summed over the folds for
        ``"1k"``) had another item scoring exactly their ground truth's score, which counts
        against them.
    """
    for name, value in (("img_emb", img_emb), ("cap_emb", cap_emb), ("cap_to_img", cap_to_img)):
        check_tensor(name, value)
    check_protocol(protocol, img_emb)
    if protocol == "1k":
        _check_image_ids(cap_emb, cap_to_img, _COCO_TEST_IMAGES)
    return protocol_tables(img_emb, cap_emb, cap_to_img, protocol)


def check_protocol(
    protocol: str, img_emb: torch.Tensor, name: str = "img_emb", dims: int = 2
) -> None:
    """Raise unless ``protocol`` is known and applies to the images ``img_emb`` (argument
    ``name``, one image per row of a ``dims``-D tensor)."""
    check_choice("protocol", protocol, PROTOCOLS)
    if protocol != "full" and (img_emb.dim() != dims or img_emb.shape[0] != _COCO_TEST_IMAGES):
        raise ValueError(
            f"jwae_ext: protocol {protocol!r} is defined on the {_COCO_TEST_IMAGES} COCO test "
            f"images, so '{name}' must have {_COCO_TEST_IMAGES} rows, got shape "
            f"{tuple(img_emb.shape)}"
        )


def protocol_tables(
    img_emb: torch.Tensor,
    cap_emb: torch.Tensor,
    cap_to_img: torch.Tensor,
    protocol: str,
    ranks: RanksFn = ops.retrieval_ranks,
) -> dict:
    """The tables of :func:`evaluate` with the ranks of each image set computed by ``ranks``.

    ``ranks(img_emb, cap_emb, cap_to_img)`` returns the i2t ranks of the images and the t2i ranks
    of the captions (in any order: a table does not depend on it), then their ties, like
    :func:`jwae_ext.ops.retrieval_ranks`; a sharded evaluation passes one that holds only a part
    of the captions (:func:`jwae_ext.retrieval_sharded.evaluate_sharded`). Arguments are checked
    by the caller.
    """
    if protocol != "1k":
        return _tables(ranks(img_emb, cap_emb, cap_to_img))
    fold = _COCO_TEST_IMAGES // _COCO_FOLDS
    return _mean_of(
        [_tables(ranks(*_fold(img_emb, cap_emb, cap_to_img, f * fold, fold)))
         for f in range(_COCO_FOLDS)]
    )  # fmt: skip


def format_table(result: dict) -> str:
    """The standard table of an :func:`evaluate` result: i2t and t2i R@1/5/10, medr, meanr, and
    rsum, then how many queries tied with their ground truth when any did."""
    cols = ("r1", "r5", "r10", "medr", "meanr")
    header = f"{'':<6}" + "".join(f"{c:>8}" for c in ("R@1", "R@5", "R@10", "medr", "meanr"))
    lines = [header]
    for direction in ("i2t", "t2i"):
        row = result[direction]
        lines.append(f"{direction:<6}" + "".join(f"{row[c]:>8.1f}" for c in cols))
    lines.append(f"rsum {result['rsum']:.1f}")
    ties = result.get("ties", {})  # absent from tables recorded before ties were counted
    if any(ties.values()):
        lines.append(
            f"ties: {ties['i2t']} i2t and {ties['t2i']} t2i queries had another item scoring "
            "exactly their ground truth's score (a tie is not a hit: it counts against them)"
        )
    return "\n".join(lines)


def _caption_rows(captions: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """captions[index]: a view when the index is a consecutive range (a COCO fold of captions in
    image order), a copy of those captions otherwise."""
    n = index.numel()
    first = int(index[0])
    if torch.equal(index, torch.arange(first, first + n, device=index.device)):
        return captions.narrow(0, first, n)
    return captions.index_select(0, index)


def evaluate_xattn(
    images: torch.Tensor,
    captions: torch.Tensor,
    cap_lens: torch.Tensor,
    cap_to_img: torch.Tensor,
    *,
    protocol: str = "full",
    direction: str = "t2i",
    lambda_softmax: float = 9.0,
    agg: str = "lse",
    lambda_lse: float = 6.0,
    raw_feature_norm: str = "clipped_l2norm",
    ranks: Callable[..., ops.Ranks] = ops.xattn_ranks,
) -> dict:
    """:func:`evaluate` for cross-attention (SCAN) scores, streaming: exact ranks without the
    score matrix.

    Args:
        images: ``(N, R, d)`` region codes; captions: ``(M, L, d)`` word codes, padded;
            cap_lens: int64 ``(M,)`` caption lengths; cap_to_img: int64 ``(M,)`` image of each
            caption (any number per image, any order).
        protocol: as :func:`evaluate` (``"1k"`` and ``"5k"`` need N = 5000).
        direction, lambda_softmax, agg, lambda_lse, raw_feature_norm: the score's options, as
            :func:`jwae_ext.ops.xattn_scores`.
        ranks: what computes the ranks of each image set, called as :func:`jwae_ext.ops.xattn_ranks`
            (positionally the codes, lengths and image ids, the options by keyword); a distributed
            evaluation passes one that sums the parts of the ranks over the processes
            (:func:`jwae_ext.retrieval_sharded.evaluate_xattn_sharded`).

    Returns:
        The tables of :func:`evaluate` (scores at least as high count against a query).

    Ranks come from :func:`jwae_ext.ops.xattn_ranks`: the positive pairs' scores first, then one
    counting pass over the same tiles; memory grows with N + M, never with N * M.
    """
    check_tensors(images=images, captions=captions, cap_lens=cap_lens, cap_to_img=cap_to_img)
    check_protocol(protocol, images, name="images", dims=3)
    options = {
        "direction": direction,
        "lambda_softmax": lambda_softmax,
        "agg": agg,
        "lambda_lse": lambda_lse,
        "raw_feature_norm": raw_feature_norm,
    }
    if protocol == "1k":
        _check_image_ids(captions[:, 0], cap_to_img, _COCO_TEST_IMAGES)  # one row per caption

    def fold_ranks(fold_images, caption_index, fold_cap_to_img):
        return ranks(
            fold_images,
            _caption_rows(captions, caption_index),
            cap_lens[caption_index],
            fold_cap_to_img,
            **options,
        )

    # The folds select images by row and captions by index (protocol_tables's "cap_emb").
    caption_index = torch.arange(captions.shape[0], device=captions.device)
    return protocol_tables(images, caption_index, cap_to_img, protocol, fold_ranks)
