"""Index -> search with tiny trained runs (pooled vse++ and SCAN): the index holds evaluation's
codes, answers equal the brute-force ranking of the full score matrix and agree with
``python -m jwae_ext.evaluate``; shards merge into the one-index answer; an interrupted build
resumes to the same bytes; float16 stays within its bound of float32."""

from __future__ import annotations

import json
import re
import shutil

import numpy as np
import pytest
import torch
from test_search_topk import brute_force
from test_train import tiny_trainer

from jwae_ext import evaluate, ops
from jwae_ext.checkpoint import load_model
from jwae_ext.data import export_precomp, load_split, tokenize
from jwae_ext.encoding import caption_codes, encode_split, encode_split_xattn, word_codes
from jwae_ext.search import Index, QueryError, build, build_index, to_faiss
from jwae_ext.search import __main__ as search_cli

VARIANTS = ("vse++", "scan")
TEST_IMAGES = 60


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A tiny trained run per variant and a precomp folder it reads (pooled / region features)."""
    root = tmp_path_factory.mktemp("search")
    out = {}
    for variant in VARIANTS:
        trainer = tiny_trainer(root / "runs", epochs=1, name=variant, variant=variant)
        trainer.fit()
        data = export_precomp(
            root / f"data-{variant}", "a", sizes={"train": 12, "dev": 8, "test": TEST_IMAGES},
            regions=variant == "scan", seed=3,
        )  # fmt: skip
        out[variant] = (root / "runs" / variant, data)
    return out


@pytest.fixture(scope="module")
def indexes(runs, tmp_path_factory):
    """Each variant's test split indexed whole, float32."""
    root = tmp_path_factory.mktemp("indexes")
    return {
        v: build_index(run, root / v, data=f"{data}:test", batch_size=16).out
        for v, (run, data) in runs.items()
    }


def _captions(data) -> list[str]:
    return load_split(data, "test").captions


@pytest.mark.parametrize("variant", VARIANTS)
def test_the_index_holds_evaluations_codes_and_answers_as_brute_force(variant, runs, indexes):
    run, data = runs[variant]
    loaded = load_model(run)
    split = load_split(data, "test")
    codes = torch.from_numpy(np.load(indexes[variant] / "codes.npy"))
    index = Index.open(indexes[variant])
    queries = split.captions[::7]
    k = TEST_IMAGES + 3  # every image: the whole ranking
    # Queries are encoded together, as search_text does (a GRU's batch can change the last bit
    # of a code; the image codes are evaluation's to the bit whatever the batch).
    if variant == "scan":
        want = encode_split_xattn(loaded.model, split, loaded.vocab, batch_size=16)
        assert torch.equal(codes, want.regions)
        words, lengths = word_codes(loaded.model, loaded.vocab, queries)
        scores = ops.xattn_scores(want.regions, words, lengths, **loaded.model.xattn.options()).T
    else:
        img, _ = encode_split(loaded.model, split, loaded.vocab, batch_size=16)
        assert torch.equal(codes, img)
        query_codes = caption_codes(loaded.model, loaded.vocab, queries)
        scores = (img @ query_codes.T).T
        # The scores evaluation ranks by (its GEMM tiles' own-pair scores), to the last bit.
        owners = torch.as_tensor(split.cap_to_img[::7])
        own = ops.retrieval_thresholds(img, query_codes, owners)[1]
        assert torch.equal(scores[torch.arange(len(own)), owners], own)
    want_scores, want_ids = brute_force(scores, TEST_IMAGES)
    results = index.search_text(queries, k=k)
    assert [[h.id for h in r.hits] for r in results] == want_ids.tolist()
    got = torch.tensor([[h.score for h in r.hits] for r in results])
    assert torch.equal(got, want_scores)  # the same bits
    for query, result in zip(queries, results, strict=True):
        words = {w for w in tokenize(query) if w.isalnum()}
        assert set(result.unknown_words) == {w for w in words if w not in loaded.vocab}
    assert results[0].hits[0].name == f"test/{want_ids[0, 0]}"


@pytest.mark.parametrize("variant", VARIANTS)
def test_search_agrees_with_evaluate(variant, runs, indexes, tmp_path):
    run, data = runs[variant]
    out = tmp_path / "eval.json"
    argv = [str(run), "--data", str(data), "--split", "test", "--out", str(out)]
    argv += ["--num-images", str(TEST_IMAGES)]  # (the default is the run's --eval-images)
    assert evaluate.main(argv) == 0
    table = json.loads(out.read_text())
    captions = _captions(data)
    owner = np.arange(len(captions)) // (len(captions) // TEST_IMAGES)
    results = Index.open(indexes[variant]).search_text(captions, k=10)
    found = [owner[j] in {h.id for h in r.hits} for j, r in enumerate(results)]
    # Tie-free: no caption scores another image exactly as its own (a tie is no hit there).
    scores = [[h.score for h in r.hits] for r in results]
    assert all(len(set(s)) == len(s) for s in scores)
    assert 100 * np.mean(found) == pytest.approx(table["t2i"]["r10"], abs=1e-9)


@pytest.mark.parametrize("variant", VARIANTS)
def test_shards_merged_equal_one_index(variant, runs, indexes, tmp_path):
    run, data = runs[variant]
    shards = [
        build_index(run, tmp_path / f"s{i}", data=f"{data}:test", shard=f"{i}/3").out
        for i in (2, 0, 1)  # built and given in any order
    ]
    one, merged = Index.open(indexes[variant]), Index.open(shards)
    assert merged.info["shards"] == 3 and merged.info["images"] == one.info["images"]
    queries = _captions(data)[::11]
    assert merged.search_text(queries, k=25) == one.search_text(queries, k=25)
    assert merged.search_item([0, 31, 59], k=7) == one.search_item([0, 31, 59], k=7)
    if variant == "vse++":
        # A caption's code is its text encoder's output in the batch it was encoded in, and the
        # GRU's last bit depends on the batch (shards encode other batches than the whole):
        # the same captions in the same order, scores to float32 rounding.
        got = merged.search_text(queries, k=9, target="captions")
        whole = one.search_text(queries, k=9, target="captions")
        assert [[h.caption_id for h in r.hits] for r in got] == [
            [h.caption_id for h in r.hits] for r in whole
        ]
        assert [h.score for r in got for h in r.hits] == pytest.approx(
            [h.score for r in whole for h in r.hits], abs=1e-6
        )
        assert got[0].hits[0].caption == queries[0] and got[0].hits[0].score == pytest.approx(1)
    assert merged.image_path(40) is None


def test_an_interrupted_build_resumes_to_the_same_bytes(runs, indexes, tmp_path, monkeypatch):
    run, data = runs["vse++"]
    calls = []
    real = build.image_codes

    def dies_on_the_third_batch(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(build, "image_codes", dies_on_the_third_batch)
    with pytest.raises(KeyboardInterrupt):
        build_index(run, tmp_path / "idx", data=f"{data}:test", batch_size=16)
    assert not (tmp_path / "idx" / "manifest.json").exists()
    assert not list((tmp_path / "idx").glob(build.SCRATCH_PREFIX + "*"))  # the items' scratch
    with pytest.raises(ValueError, match="not a finished index"):
        Index.open(tmp_path / "idx")
    lines = []
    summary = build_index(
        run, tmp_path / "idx", data=f"{data}:test", batch_size=16, log=lines.append
    )
    assert summary.resumed == 32 and "continuing an interrupted index build" in lines[0]
    assert len(calls) == 3 + 2  # only the batches left
    assert not (tmp_path / "idx" / build.WORK_DIR).exists()
    assert not list((tmp_path / "idx").glob(build.SCRATCH_PREFIX + "*"))
    for name in ("codes.npy", "caption_codes.npy", "items.txt", "captions.txt", "image_ids.npy"):
        assert (tmp_path / "idx" / name).read_bytes() == (indexes["vse++"] / name).read_bytes()
    again = build_index(run, tmp_path / "idx", data=f"{data}:test", batch_size=16, log=lines.append)
    assert again.resumed == 0 and lines[-1].endswith("already holds this index (nothing to do)")


# float16 rounds each code component by at most 2**-11 relative: for unit-norm codes a score
# moves by at most 2**-11 (Cauchy-Schwarz), plus float32 rounding.
FLOAT16_SCORE_TOLERANCE = 2.0**-11 + 1e-6


@pytest.mark.parametrize("variant", VARIANTS)
def test_float16_index_within_its_bound_of_float32(variant, runs, indexes, tmp_path):
    run, data = runs[variant]
    half = Index.open(build_index(run, tmp_path / "h", data=f"{data}:test", dtype="float16").out)
    full = Index.open(indexes[variant])
    assert np.load(tmp_path / "h" / "codes.npy").dtype == np.float16
    queries = _captions(data)[::5]
    k = TEST_IMAGES
    for got, want in zip(
        half.search_text(queries, k=k), full.search_text(queries, k=k), strict=True
    ):
        exact = {h.id: h.score for h in want.hits}
        for hit in got.hits:
            assert abs(hit.score - exact[hit.id]) <= FLOAT16_SCORE_TOLERANCE
        # Whatever float16 ranks i-th scores within twice the bound of float32's i-th.
        for a, b in zip(got.hits, want.hits, strict=True):
            assert exact[a.id] >= b.score - 2 * FLOAT16_SCORE_TOLERANCE


def test_k_above_the_index_size_returns_every_image(indexes):
    hits = Index.open(indexes["vse++"]).search_item([3], k=10 * TEST_IMAGES)[0]
    assert sorted(h.id for h in hits) == list(range(TEST_IMAGES)) and hits[0].id == 3


def test_a_changed_checkpoint_is_refused(runs, indexes, tmp_path):
    run, data = runs["vse++"]
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    index = build_index(copy, tmp_path / "idx", data=f"{data}:test").out
    state = torch.load(copy / "best.pt", weights_only=True)
    state["global_step"] += 1  # training went on: another checkpoint
    torch.save(state, copy / "best.pt")
    with pytest.raises(ValueError, match="changed since it was indexed"):
        Index.open(index)
    (copy / "best.pt").unlink()
    with pytest.raises(ValueError, match=r"checkpoint .* is gone"):
        Index.open(index)


# ---- every error names what is wrong ---------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"images": "x"}, "exactly one of --data and --images"),
        ({"data": None}, "exactly one of --data and --images"),
        ({"captions": "c.txt"}, "--captions goes with --images"),
        ({"dtype": "int8"}, "--dtype must be float32 or float16, got 'int8'"),
        ({"batch_size": 0}, "--batch-size must be an integer >= 1, got 0"),
        ({"shard": "3/2"}, "--shard must be I/N with 0 <= I < N"),
        ({"shard": "one/two"}, "--shard must be I/N"),
        ({"shard": "5/100"}, "--shard 5/100: the collection has only 60 images"),
        ({"data": "no-such-folder"}, "--data 'no-such-folder' is neither"),
    ],
)
def test_build_errors_name_the_argument(kwargs, message, runs, tmp_path):
    run, data = runs["vse++"]
    args = {"data": f"{data}:test", **kwargs}
    with pytest.raises(ValueError, match=re.escape(message)):
        build_index(run, tmp_path / "idx", **args)
    assert not (tmp_path / "idx").exists()  # a refused build leaves no folder behind


def test_features_the_run_does_not_read_are_refused_naming_both(runs, tmp_path):
    run, _ = runs["vse++"]
    _, regions_data = runs["scan"]
    with pytest.raises(
        ValueError, match=r"256-dimensional image features, but the run .* reads 1024"
    ):
        build_index(run, tmp_path / "a", data=f"{regions_data}:test")
    with pytest.raises(ValueError, match="no region features"):
        build_index(runs["scan"][0], tmp_path / "b", data=f"{runs['vse++'][1]}:test")
    with pytest.raises(ValueError, match="trained on the embedded dataset synthetic-a"):
        build_index(run, tmp_path / "c", images=tmp_path)


def test_another_index_in_the_folder_is_kept_unless_restart(runs, tmp_path):
    run, data = runs["vse++"]
    build_index(run, tmp_path / "idx", data=f"{data}:test")
    with pytest.raises(ValueError, match=r"--out .* holds another index"):
        build_index(run, tmp_path / "idx", data=f"{data}:test", dtype="float16")
    build_index(run, tmp_path / "idx", data=f"{data}:test", dtype="float16", restart=True)
    assert Index.open(tmp_path / "idx").info["dtype"] == "float16"


def test_query_errors(indexes):
    pooled, scan = Index.open(indexes["vse++"]), Index.open(indexes["scan"])
    for bad in (0, -1, "3", 2.0, True):
        with pytest.raises(
            ValueError, match=f"k must be an integer >= 1, got {re.escape(repr(bad))}"
        ):
            pooled.search_text(["a red circle"], k=bad)
    with pytest.raises(ValueError, match="target must be images or captions, got 'words'"):
        pooled.search_text(["a red circle"], target="words")
    with pytest.raises(QueryError, match="query 'qwxz , !' has no word the model knows"):
        pooled.search_text(["a circle", "qwxz , !"])
    with pytest.raises(QueryError, match="a text query must be a str"):
        pooled.search_text([3])
    with pytest.raises(QueryError, match="cannot take image queries"):
        pooled.search_image(["any.png"])
    with pytest.raises(QueryError, match="image id 60 is not in the index"):
        pooled.search_item([60])
    with pytest.raises(KeyError, match="image id -1 is not in the index"):
        pooled.image_path(-1)
    with pytest.raises(QueryError, match="SCAN index ranks images for a text query"):
        scan.search_text(["a red circle"], target="captions")
    with pytest.raises(QueryError, match="SCAN index holds no caption codes"):
        scan.search_image(["any.png"], target="captions")


def test_open_errors(runs, indexes, tmp_path):
    with pytest.raises(ValueError, match=r"index folder .*nowhere does not exist"):
        Index.open(tmp_path / "nowhere")
    with pytest.raises(ValueError, match="is not a finished index"):
        Index.open(tmp_path)
    with pytest.raises(ValueError, match=r"not shards of one collection .* differ in kind"):
        Index.open([indexes["vse++"], indexes["scan"]])
    run, data = runs["vse++"]
    first = build_index(run, tmp_path / "s0", data=f"{data}:test", shard="0/2").out
    with pytest.raises(ValueError, match="shard\\(s\\) 1/2 not given"):
        Index.open([first])
    with pytest.raises(ValueError, match="the same shard given twice"):
        Index.open([first, first])
    (indexes["vse++"] / "codes.npy").rename(tmp_path / "codes.npy")
    try:
        with pytest.raises(ValueError, match=r"codes.npy is missing or damaged"):
            Index.open(indexes["vse++"])
    finally:
        (tmp_path / "codes.npy").rename(indexes["vse++"] / "codes.npy")


def test_search_cli(indexes, capsys):
    folder = str(indexes["vse++"])
    assert search_cli.main([folder, "a red circle qwxz", "-k", "3"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[:2] == ["query: a red circle qwxz", "not in the vocabulary: qwxz"]
    assert len(out) == 5 and out[2].split()[0] == "1"
    assert search_cli.main([folder, "a red circle", "--captions", "-k", "2", "--json"]) == 0
    answer = json.loads(capsys.readouterr().out)
    assert len(answer[0]["hits"]) == 2 and answer[0]["hits"][0]["caption"]
    for argv, message in (
        ([folder], "QUERY: give INDEX and then the text query"),
        ([folder, "--image", "a.png", "--queries", "q.txt"], "give --image or --queries, not both"),
        ([folder, "qwxz"], "has no word the model knows"),
        ([folder, "a circle", "-k", "0"], "k must be an integer >= 1, got 0"),
    ):
        assert search_cli.main(argv) == 2
        err = capsys.readouterr().err
        assert err.startswith("python -m jwae_ext.search: error: ") and message in err, err


def test_shards_built_from_copies_of_the_run_merge(runs, indexes, tmp_path):
    run, data = runs["vse++"]
    copy = tmp_path / "elsewhere"  # another machine's copy of the same checkpoint
    shutil.copytree(run, copy)
    shards = [
        build_index(r, tmp_path / f"s{i}", data=f"{data}:test", shard=f"{i}/2").out
        for i, r in enumerate((run, copy))
    ]
    queries = _captions(data)[:9]
    assert Index.open(shards).search_text(queries) == Index.open(indexes["vse++"]).search_text(
        queries
    )


def test_exhaustive_faiss_returns_the_exact_neighbours(indexes):
    faiss = pytest.importorskip("faiss", reason="faiss-cpu (the faiss extra) is not installed")
    folder = indexes["vse++"]
    codes = torch.from_numpy(np.load(folder / "codes.npy"))
    ids = np.load(folder / "image_ids.npy")
    queries = torch.from_numpy(np.load(folder / "caption_codes.npy"))
    exact_scores, exact_rows = brute_force(queries @ codes.T, 10)
    for kind, settings in (("ivf", {"nlist": 8, "nprobe": 8}), ("hnsw", {"ef_search": 256})):
        index = to_faiss(folder, kind=kind, **settings)
        assert index.ntotal == len(codes)
        scores, found = index.search(queries.numpy(), 10)
        np.testing.assert_array_equal(found, ids[exact_rows.numpy()], err_msg=kind)
        np.testing.assert_allclose(scores, exact_scores.numpy(), rtol=0, atol=1e-5)
    probed = to_faiss(folder, nlist=8, nprobe=1)
    assert faiss.extract_index_ivf(probed).nprobe == 1


def test_faiss_refuses_scan_codes_and_bad_settings(indexes):
    pytest.importorskip("faiss", reason="faiss-cpu (the faiss extra) is not installed")
    with pytest.raises(ValueError, match="holds scan codes"):
        to_faiss(indexes["scan"])
    with pytest.raises(ValueError, match="kind must be one of ivf, hnsw, got 'pq'"):
        to_faiss(indexes["vse++"], kind="pq")
    with pytest.raises(ValueError, match="nlist must be at most the 60 indexed images, got 61"):
        to_faiss(indexes["vse++"], nlist=61)
    with pytest.raises(ValueError, match="nprobe must be an integer >= 1, got 0"):
        to_faiss(indexes["vse++"], nprobe=0)
