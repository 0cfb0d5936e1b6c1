"""R@K tables and the COCO protocols: hand-made cases with known answers, and VSE++ itself."""

from __future__ import annotations

import numpy
import pytest
import torch

from jwae_ext import retrieval

# ---- VSE++'s evaluation, transcribed ------------------------------------------------------------
# i2t / t2i of VSE++ (Faghri et al., evaluation.py, Apache-2.0), dot-product measure, kept as
# written: images come repeated once per caption (5 per image), captions 5 per image in order.


def vsepp_i2t(images, captions):
    npts = images.shape[0] // 5
    ranks = numpy.zeros(npts)
    for index in range(npts):
        im = images[5 * index].reshape(1, images.shape[1])
        d = numpy.dot(im, captions.T).flatten()
        inds = numpy.argsort(d)[::-1]
        rank = 1e20
        for i in range(5 * index, 5 * index + 5, 1):
            tmp = numpy.where(inds == i)[0][0]
            if tmp < rank:
                rank = tmp
        ranks[index] = rank
    return _vsepp_metrics(ranks)


def vsepp_t2i(images, captions):
    npts = images.shape[0] // 5
    ims = numpy.array([images[i] for i in range(0, len(images), 5)])
    ranks = numpy.zeros(5 * npts)
    for index in range(npts):
        queries = captions[5 * index : 5 * index + 5]
        d = numpy.dot(queries, ims.T)
        inds = numpy.zeros(d.shape)
        for i in range(len(inds)):
            inds[i] = numpy.argsort(d[i])[::-1]
            ranks[5 * index + i] = numpy.where(inds[i] == index)[0][0]
    return _vsepp_metrics(ranks)


def _vsepp_metrics(ranks):
    r1 = 100.0 * len(numpy.where(ranks < 1)[0]) / len(ranks)
    r5 = 100.0 * len(numpy.where(ranks < 5)[0]) / len(ranks)
    r10 = 100.0 * len(numpy.where(ranks < 10)[0]) / len(ranks)
    medr = numpy.floor(numpy.median(ranks)) + 1
    meanr = ranks.mean() + 1
    return (r1, r5, r10, medr, meanr)


def _as_tuple(table):
    return tuple(table[key] for key in ("r1", "r5", "r10", "medr", "meanr"))


def _coco_like(n_images: int, d: int, seed: int):
    """Tie-free float64 embeddings, 5 captions per image in order; captions near their image."""
    g = torch.Generator().manual_seed(seed)
    img = torch.randn(n_images, d, generator=g, dtype=torch.float64)
    cap = img.repeat_interleave(5, dim=0) + 1.5 * torch.randn(
        5 * n_images, d, generator=g, dtype=torch.float64
    )
    return img, cap, torch.arange(5 * n_images) // 5


def test_full_protocol_equals_vsepp():
    img, cap, cap_to_img = _coco_like(300, 16, seed=0)
    result = retrieval.evaluate(img, cap, cap_to_img)
    images = img.repeat_interleave(5, dim=0).numpy()
    assert _as_tuple(result["i2t"]) == vsepp_i2t(images, cap.numpy())
    assert _as_tuple(result["t2i"]) == vsepp_t2i(images, cap.numpy())
    assert 0 < result["i2t"]["r1"] < 100  # a case that discriminates
    assert result["ties"] == {"i2t": 0, "t2i": 0}  # tie-free: VSE++'s rule and ours agree
    recalls = ("r1", "r5", "r10")
    assert result["rsum"] == sum(result[d][r] for d in ("i2t", "t2i") for r in recalls)


def test_1k_protocol_equals_vsepp_fold5():
    img, cap, cap_to_img = _coco_like(5000, 8, seed=1)
    images = img.repeat_interleave(5, dim=0).numpy()
    captions = cap.numpy()
    folds = [
        (
            vsepp_i2t(images[i * 5000 : (i + 1) * 5000], captions[i * 5000 : (i + 1) * 5000]),
            vsepp_t2i(images[i * 5000 : (i + 1) * 5000], captions[i * 5000 : (i + 1) * 5000]),
        )
        for i in range(5)
    ]
    # VSE++ averages each metric over the folds, and the per-fold rsum
    i2t_mean = tuple(numpy.array([f[0] for f in folds]).mean(axis=0))
    t2i_mean = tuple(numpy.array([f[1] for f in folds]).mean(axis=0))
    rsum = numpy.mean([sum(f[0][:3]) + sum(f[1][:3]) for f in folds])
    result = retrieval.evaluate(img, cap, cap_to_img, protocol="1k")
    numpy.testing.assert_allclose(_as_tuple(result["i2t"]), i2t_mean, rtol=1e-12)
    numpy.testing.assert_allclose(_as_tuple(result["t2i"]), t2i_mean, rtol=1e-12)
    assert result["rsum"] == pytest.approx(rsum, rel=1e-12)


def _fold_case(shuffle: bool):
    """COCO-5K-shaped case with known answers, made of ties. Images of fold f are all e_f, their
    captions e_f, except caption 0 of image 0 (fold 0): 2 * (e_0 + ... + e_4), which scores 2
    against every image while every own score is 1, as are the scores of the other images and
    captions of the fold, and other folds score 0."""
    eye = torch.eye(5)
    img = eye.repeat_interleave(1000, dim=0)
    cap_to_img = torch.arange(25000) // 5
    cap = img[cap_to_img].clone()
    cap[0] = 2.0
    if shuffle:
        order = torch.randperm(25000, generator=torch.Generator().manual_seed(2))
        cap, cap_to_img = cap[order], cap_to_img[order]
    return img, cap, cap_to_img


@pytest.mark.parametrize("shuffle", [False, True])
def test_protocols_on_a_known_case(shuffle):
    img, cap, cap_to_img = _fold_case(shuffle)
    # Ties count against the query. 5K, i2t: image 0's best caption (the super one, 2) has nothing
    # as high: rank 0. Another image of fold 0 (best 1): the 4995 other captions of the fold score
    # at least 1 (the super caption 2, the rest tie): rank 4995. An image of folds 1-4: its fold's
    # 4995 other captions tie and the super caption scores 2: rank 4996.
    five_k = retrieval.evaluate(img, cap, cap_to_img, protocol="5k")
    i2t_ranks_sum = 999 * 4995 + 4000 * 4996
    assert five_k["i2t"] == pytest.approx(
        {"r1": 100 / 5000, "r5": 100 / 5000, "r10": 100 / 5000, "medr": 4997.0,
         "meanr": 1 + i2t_ranks_sum / 5000}
    )  # fmt: skip
    # t2i: a caption's own image scores 1 and the 999 other images of its fold tie: rank 999; the
    # super caption's own image scores 2 like every other image: rank 4999.
    t2i_ranks_sum = 24999 * 999 + 4999
    assert five_k["t2i"] == pytest.approx(
        {"r1": 0.0, "r5": 0.0, "r10": 0.0, "medr": 1000.0, "meanr": 1 + t2i_ranks_sum / 25000}
    )
    assert five_k["rsum"] == pytest.approx(3 * 100 / 5000)
    assert five_k["ties"] == {"i2t": 4999, "t2i": 25000}
    assert retrieval.evaluate(img, cap, cap_to_img, protocol="full") == five_k
    # 1K: each fold ranks alone. i2t: fold 0 as in 5K (rank 0 once, 4995 for the other 999);
    # folds 1-4 have no super caption: 4995. t2i: 999 for every caption, the super one included.
    one_k = retrieval.evaluate(img, cap, cap_to_img, protocol="1k")
    assert one_k["i2t"]["r1"] == pytest.approx(0.1 / 5)
    assert one_k["i2t"]["r10"] == pytest.approx(0.1 / 5)
    assert one_k["i2t"]["medr"] == 4996.0
    assert one_k["i2t"]["meanr"] == pytest.approx((1 + 999 * 4995 / 1000 + 4 * 4996) / 5)
    assert one_k["t2i"] == {"r1": 0.0, "r5": 0.0, "r10": 0.0, "medr": 1000.0, "meanr": 1000.0}
    assert one_k["rsum"] == pytest.approx(3 * 0.1 / 5)
    assert one_k["ties"] == {"i2t": 999 + 4 * 1000, "t2i": 25000}  # summed over the folds


def test_the_table_says_how_many_queries_tied():
    img, cap, cap_to_img = _coco_like(20, 4, seed=5)
    untied = retrieval.evaluate(img, cap, cap_to_img)
    assert "ties" not in retrieval.format_table(untied)
    # Image 2's captions copy image 1's: the best caption of each of the two images ties with a
    # caption of the other; no caption ties (the two images differ).
    cap[10:15] = cap[5:10]
    tied = retrieval.evaluate(img, cap, cap_to_img)
    assert tied["ties"] == {"i2t": 2, "t2i": 0}
    assert "ties: 2 i2t and 0 t2i queries" in retrieval.format_table(tied)


def test_recall_table_known_answers():
    table = retrieval.recall_table(torch.tensor([0, 0, 1, 4, 5, 9, 10, 100]))
    assert table["r1"] == 25.0
    assert table["r5"] == 50.0
    assert table["r10"] == 75.0
    assert table["medr"] == 5.0  # median (4 + 5) / 2 = 4.5 -> floor 4, + 1
    assert table["meanr"] == (129 / 8) + 1
    assert retrieval.recall_table(torch.tensor([7]))["medr"] == 8.0


def test_recall_table_equals_vsepp_metrics():
    ranks = torch.randint(0, 50, (1001,), generator=torch.Generator().manual_seed(3))
    assert _as_tuple(retrieval.recall_table(ranks)) == _vsepp_metrics(ranks.numpy().astype(float))


@pytest.mark.parametrize(
    ("ranks", "error", "message"),
    [
        (torch.tensor([]), ValueError, "non-empty 1-D"),
        (torch.zeros(2, 2, dtype=torch.int64), ValueError, "non-empty 1-D"),
        (torch.tensor([0.0, 1.0]), TypeError, "integer tensor"),
        ([0, 1], TypeError, "torch.Tensor"),
    ],
)
def test_bad_ranks(ranks, error, message):
    with pytest.raises(error, match=message):
        retrieval.recall_table(ranks)


def test_bad_protocol_input():
    img, cap, cap_to_img = _coco_like(10, 4, seed=4)
    with pytest.raises(ValueError, match="'protocol' must be one of"):
        retrieval.evaluate(img, cap, cap_to_img, protocol="10k")
    for protocol in ("1k", "5k"):
        with pytest.raises(ValueError, match="must have 5000 rows"):
            retrieval.evaluate(img, cap, cap_to_img, protocol=protocol)
    img, cap, cap_to_img = _fold_case(shuffle=False)
    with pytest.raises(ValueError, match=r"image ids in \[0, 5000\)"):
        retrieval.evaluate(img, cap, cap_to_img + 1, protocol="1k")
    with pytest.raises(ValueError, match="one entry per row of 'cap_emb'"):
        retrieval.evaluate(img, cap[:-1], cap_to_img, protocol="1k")
    with pytest.raises(TypeError, match="1-D int64"):
        retrieval.evaluate(img, cap, cap_to_img.int(), protocol="1k")
    with pytest.raises(ValueError, match="the first is image 4999"):
        retrieval.evaluate(img, cap[:-5], cap_to_img[:-5], protocol="1k")
