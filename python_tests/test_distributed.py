"""Data-parallel training and sharded evaluation (jwae_ext.distributed), on real 2-process Gloo
jobs started with torchrun (python_tests/distributed_worker.py is the rank side).

One process on the concatenated batch is the reference throughout: the gradients of a 2-process
step, the exact retrieval ranks of a sharded gallery, and whole training runs.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import distributed_worker as worker
import pytest
import torch

from jwae_ext import distributed, ops, retrieval
from jwae_ext.data import collate
from jwae_ext.evaluation import evaluate_split
from jwae_ext.retrieval_sharded import caption_shard
from jwae_ext.train import Trainer, epoch_batches

HERE = Path(__file__).parent
ROOT = HERE.parent
TIMEOUT = 240
TINY = [
    "--train-images", "48", "--eval-images", "24", "--batch-size", "16",
    "--embed-size", "16", "--img-hidden", "16", "--word-dim", "8", "--warmup-epochs", "1",
    "--no-progress",
]  # fmt: skip


def torchrun(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    """``torchrun --standalone --nproc_per_node 2 ARGS`` (a free port, one machine), bounded."""
    # The worker script's folder, and this checkout's jwae_ext rather than an installed one.
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join([str(HERE), str(ROOT)]))
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
         str(worker.WORLD), *args],
        capture_output=True, text=True, timeout=TIMEOUT, env=env,
    )  # fmt: skip
    if check and proc.returncode != 0:
        raise AssertionError(f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
    return proc


def train_single(run_dir: Path, *args: str) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        [sys.executable, "-m", "jwae_ext.train", "--run-dir", str(run_dir), *TINY, *args],
        capture_output=True, text=True, timeout=TIMEOUT,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    return proc


def train_torchrun(run_dir: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    return torchrun("-m", "jwae_ext.train", "--run-dir", str(run_dir), *TINY, *args, check=check)


@pytest.fixture(scope="module")
def ranks(tmp_path_factory) -> dict[str, list]:
    """Every scenario of the worker in one 2-process job: per scenario, each rank's result."""
    out = tmp_path_factory.mktemp("ranks")
    torchrun(str(HERE / "distributed_worker.py"), str(out), *worker.SCENARIOS)
    return {name: torch.load(out / f"{name}.pt", weights_only=False) for name in worker.SCENARIOS}


# ---- the gather and one training step ---------------------------------------------------------


def test_gather_backward_sums_over_ranks_before_slicing(ranks):
    weights = [torch.arange(12, dtype=torch.float64).view(6, 2) * (r + 1) ** 2 for r in range(2)]
    for rank, result in enumerate(ranks["gather"]):
        assert torch.equal(result["gathered"][:3], torch.full((3, 2), 1.0, dtype=torch.float64))
        assert torch.equal(result["gathered"][3:], torch.full((3, 2), 2.0, dtype=torch.float64))
        rows = slice(3 * rank, 3 * rank + 3)
        assert torch.equal(result["grad"], sum(w[rows] for w in weights))


def _single_process_step(run_dir: Path, variant: str):
    """One process on the concatenated global batch, as the 2-process step sees it."""
    torch.set_default_dtype(torch.float64)
    try:
        trainer = Trainer(worker.trainer_config(str(run_dir), variant))
        batch = worker.cross_rank_batch(trainer)
        prior = worker.fixed_prior(trainer)
        trainer.model.sample_prior = lambda n, like: prior[:n]
        pairs = worker.as_float64(collate([trainer.dataset[j] for j in batch]))
        with torch.no_grad():
            codes = trainer.model.encode_images(pairs.images), trainer.model.encode_captions(
                pairs.captions, pairs.lengths
            )
        values = trainer.train_step(pairs)
    finally:
        torch.set_default_dtype(torch.float32)
    return trainer, pairs, codes, values


def _hardest_negatives(codes, ids):
    img, txt = (torch.nn.functional.normalize(c, dim=1) for c in codes)
    _, _, hardest_i2t, hardest_t2i = torch.ops.jwae_ext.mh_loss(img, txt, 0.2, True, ids, ids)
    return hardest_i2t, hardest_t2i


@pytest.mark.parametrize("variant", worker.TRAINER_VARIANTS)
def test_two_process_step_equals_one_process_on_the_global_batch(ranks, variant, tmp_path):
    trainer, pairs, codes, values = _single_process_step(tmp_path, variant)
    half = len(pairs.image_ids) // 2
    # The case must exercise what could go wrong: an image with pairs on both ranks and, for the
    # max of hinges, hardest negatives that live on the other rank, in both directions.
    assert set(pairs.image_ids[:half].tolist()) & set(pairs.image_ids[half:].tolist())
    if variant == "jwae-mh":
        for hardest in _hardest_negatives(codes, pairs.image_ids):
            assert (hardest[:half] >= half).any() and (hardest[half:] >= 0).logical_and(
                hardest[half:] < half
            ).any()
    one = {n: p.grad for n, p in trainer.model.named_parameters() if p.grad is not None}
    for rank, result in enumerate(ranks["trainer_step"]):
        got = result[variant]
        assert got["grads"].keys() == one.keys(), rank
        for name, grad in one.items():
            torch.testing.assert_close(got["grads"][name], grad, rtol=1e-9, atol=1e-12, msg=name)
        assert got["values"].keys() == values.keys()
        for key, value in values.items():
            assert got["values"][key] == pytest.approx(value, rel=1e-9, abs=1e-12), key
    # After the step every rank holds the same weights, bit for bit, discriminator included.
    first, second = (r[variant]["weights"] for r in ranks["trainer_step"])
    assert all(torch.equal(first[n], second[n]) for n in first)


# ---- sharded evaluation -------------------------------------------------------------------------


@pytest.mark.parametrize("case", list(worker.eval_cases()))
def test_sharded_evaluation_equals_one_process(ranks, case):
    img, cap, ids, protocol, _ = worker.eval_cases()[case]
    want = retrieval.evaluate(img, cap, ids, protocol)
    results = [r[case] for r in ranks["eval"]]
    assert sum(r["captions"] for r in results) == len(cap)
    if case == "one_rank_empty":
        assert min(r["captions"] for r in results) == 0
    if case != "one_rank_empty":  # duplicates or small integers: ties, counted across shards
        assert want["ties"]["i2t"] > 0 and want["ties"]["t2i"] > 0
    for result in results:
        assert result["result"] == want  # exact: same integer counts, same float arithmetic


def test_sharded_evaluation_errors_are_raised_on_every_rank(ranks):
    for result in ranks["eval"]:
        errors = result["errors"]
        assert "1 of 300 images have none, the first is image 7" in errors["uncaptioned"]
        assert "must hold image ids in [0, 300); 1 captions" in errors["out_of_range"]


def test_sharded_split_evaluation_equals_one_process(ranks, tmp_path):
    trainer = Trainer(worker.trainer_config(str(tmp_path), "jwae-mh"))
    want = evaluate_split(trainer.model, trainer.dev_split, trainer.vocab, batch_size=32)
    assert [r["captions"] for r in ranks["split_eval"]] == [64, 56]
    for result in ranks["split_eval"]:
        assert result["result"] == want


@pytest.mark.parametrize("case", list(worker.xattn_cases()))
def test_sharded_xattn_evaluation_equals_one_process(ranks, case):
    images, captions, lengths, ids, kwargs = worker.xattn_cases()[case]
    want = retrieval.evaluate_xattn(images, captions, lengths, ids, **kwargs)
    for result in ranks["xattn_eval"]:
        assert result[case]["result"] == want  # exact: same integer counts, same arithmetic
    if case == "ties_uneven":  # duplicates on both ranks' tiles: ties counted across ranks
        assert want["ties"]["i2t"] > 0 and want["ties"]["t2i"] > 0


@pytest.mark.parametrize(
    "case", [name for name, case in worker.xattn_cases().items() if "protocol" not in case[-1]]
)
def test_each_rank_counts_its_share_of_the_xattn_ranks(ranks, case):
    images, captions, lengths, ids, _ = worker.xattn_cases()[case]
    whole = ops.xattn_ranks(images, captions, lengths, ids)
    parts = [r[case]["part"] for r in ranks["xattn_eval"]]
    # The shares are the whole count, ties included; each rank counted a part, not all of it.
    for field, want in zip(zip(*parts, strict=True), whole, strict=True):
        assert torch.equal(sum(field), want)
    shares = [int(p.i2t.sum()) for p in parts]
    if case == "one_tile":
        assert shares == [0, int(whole.i2t.sum())]
    else:
        assert all(0 < share < int(whole.i2t.sum()) for share in shares)


def test_sharded_xattn_evaluation_errors_are_raised_on_every_rank(ranks):
    for result in ranks["xattn_eval"]:
        assert "1 of 10 images have none, the first is image 9" in result["error"]


def test_sharded_scan_validation_and_test_equal_one_process(ranks, tmp_path):
    trainer = Trainer(worker.trainer_config(str(tmp_path), "scan"))
    want_dev, want_test = trainer.validate(), trainer.evaluate(trainer.test_split())
    for rank, result in enumerate(ranks["scan_eval"]):
        assert result["dev"] == want_dev and result["test"] == want_test
        # Every ranking was this rank's part of a 2-way count, never the whole.
        assert result["calls"] and set(result["calls"]) == {(rank, 2)}


# ---- pieces without a process group -------------------------------------------------------------


def test_local_batches_split_every_global_batch_evenly():
    batches = epoch_batches(37, 8, seed=1, epoch=0)  # 4 batches of 8 and one of 5
    for world in (1, 2, 4):
        parts = [distributed.local_batches(batches, _ctx(r, world)) for r in range(world)]
        assert len({len(p) for p in parts}) == 1
        for step, batch in enumerate(batches):
            if len(batch) < world:
                assert all(len(p) == len(batches) - 1 for p in parts)
                continue
            local = [p[step] for p in parts]
            assert len({len(x) for x in local}) == 1
            assert [i for part in local for i in part] == batch[: len(batch) - len(batch) % world]
    assert distributed.local_batches(batches, _ctx(0, 1)) == batches


def test_caption_shards_are_whole_encoding_batches():
    for count, chunk, world in [(120, 32, 2), (1500, 128, 3), (200, 256, 2), (7, 1, 4)]:
        shards = [caption_shard(count, chunk, _ctx(r, world)) for r in range(world)]
        assert [i for s in shards for i in s] == list(range(count))
        assert all(s.start % chunk == 0 for s in shards if len(s))


def test_rank_seeds_differ_and_are_reproducible():
    seeds = {distributed.rank_seed(0, r) for r in range(8)} | {distributed.rank_seed(1, 0)}
    assert len(seeds) == 9
    assert distributed.rank_seed(3, 1, 7) == distributed.rank_seed(3, 1, 7) < 2**63


def test_global_batch_must_divide_among_the_processes(tmp_path):
    cfg = worker.trainer_config(str(tmp_path), "vse++")
    cfg.batch_size = 15
    with pytest.raises(ValueError, match=r"--batch-size 15 is the global batch .* 2 processes"):
        Trainer(cfg, _ctx(0, 2))


def _ctx(rank: int, world: int) -> distributed.Context:
    return distributed.Context(rank=rank, world_size=world)


# ---- whole runs under torchrun ------------------------------------------------------------------


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, weights_only=True)["model"]


def _records(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_torchrun_trains_and_resumes_exactly(tmp_path):
    proc = train_torchrun(tmp_path, "--epochs", "2", "--name", "straight")
    run = tmp_path / "straight"
    assert {"config.json", "vocab.json", "metrics.jsonl", "last.pt", "best.pt", "test.json"} <= {
        p.name for p in run.iterdir()
    }
    # Rank 0 alone writes and prints: one record per epoch, one table, one baseline line.
    assert [r["epoch"] for r in _records(run)] == [1, 2]
    assert proc.stdout.count("rsum") == 4 and proc.stdout.count("ridge baseline on") == 1
    assert proc.stdout.count("2 processes of 8 pairs") == 1
    assert len(torch.load(run / "last.pt", weights_only=True)["rng"]) == 2

    train_torchrun(tmp_path, "--epochs", "1", "--name", "resumed")
    train_torchrun(tmp_path, "--resume", "--epochs", "2", "--name", "resumed")
    straight, resumed = _weights(run / "last.pt"), _weights(tmp_path / "resumed" / "last.pt")
    assert all(torch.equal(straight[n], resumed[n]) for n in straight)
    assert [r["train"] for r in _records(run)] == [
        r["train"] for r in _records(tmp_path / "resumed")
    ]


def test_torchrun_run_matches_one_process(tmp_path):
    # vse++ draws no random numbers, so two processes must train what one process trains, up to
    # summation order. (The step test above pins the gradient scaling; Adam would hide a constant
    # factor here.)
    args = ("--epochs", "2", "--variant", "vse++")
    train_single(tmp_path / "one", *args, "--name", "run")
    train_torchrun(tmp_path / "two", *args, "--name", "run")
    one, two = _weights(tmp_path / "one/run/last.pt"), _weights(tmp_path / "two/run/last.pt")
    for name in one:
        torch.testing.assert_close(two[name], one[name], rtol=1e-3, atol=1e-4, msg=name)
    for a, b in zip(_records(tmp_path / "one/run"), _records(tmp_path / "two/run"), strict=True):
        assert b["train"]["total"] == pytest.approx(a["train"]["total"], rel=1e-3)


def test_torchrun_rejects_a_batch_it_cannot_split(tmp_path):
    proc = train_torchrun(tmp_path, "--batch-size", "15", "--name", "odd", check=False)
    assert proc.returncode != 0
    assert "--batch-size 15 is the global batch" in proc.stderr
    # Each rank exits with the user-error status; the only traceback is torchrun's own report
    # of a failed child, never one from our code.
    assert "exitcode  : 2" in proc.stderr
    assert "jwae_ext/" not in proc.stderr.partition("Traceback")[2]
