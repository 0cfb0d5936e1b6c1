"""The rank side of python_tests/test_distributed.py, started by ``torchrun --nproc_per_node 2``.

``python distributed_worker.py OUT SCENARIO...``: every rank runs each scenario; rank 0 writes
what the ranks computed to ``OUT/SCENARIO.pt`` for the test to compare with one process. The
problem builders are shared with the test (it imports this module), so both sides see the same
inputs.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.distributed as dist

from jwae_ext import distributed, ops, retrieval_sharded
from jwae_ext.config import TrainConfig, resolve
from jwae_ext.data import collate
from jwae_ext.train import Trainer, epoch_batches

WORLD = 2
TRAINER_VARIANTS = ("jwae-mh", "vse0", "jwae-mse", "scan")
TINY = {
    "train_images": 48, "eval_images": 24, "batch_size": 16, "embed_size": 16,
    "img_hidden": 16, "word_dim": 8, "warmup_epochs": 0, "word_dropout": 0.0, "grad_clip": 0.0,
    "progress": False,
}  # fmt: skip


# ---- problems (both sides) -----------------------------------------------------------------------


def trainer_config(run_dir: str, variant: str) -> TrainConfig:
    # The adversarial prior for every variant (jwae-mse's default is MMD): its terms are means
    # over codes, so two processes' step is exactly one process's, while MMD, a statistic over
    # pairs of codes, is estimated on each rank's share of the batch.
    return resolve(
        TrainConfig(run_dir=run_dir, name=f"{variant}-r", variant=variant, prior="gan", **TINY)
    )


def cross_rank_batch(trainer: Trainer) -> list[int]:
    """A global batch of epoch 0 in which an image has pairs in both halves (pairs of one image
    on two ranks must not be negatives of each other)."""
    half = trainer.cfg.batch_size // WORLD
    for batch in epoch_batches(len(trainer.dataset), trainer.cfg.batch_size, trainer.cfg.seed, 0):
        ids = [int(trainer.dataset.split.cap_to_img[j]) for j in batch]
        if set(ids[:half]) & set(ids[half:]):
            return batch
    raise AssertionError("no batch with an image on both ranks")


def fixed_prior(trainer: Trainer) -> torch.Tensor:
    """Prior samples for the discriminator step (real codes for every fake one of the global
    batch), the same on both sides: rank r takes its slice, one process all of them."""
    gen = torch.Generator().manual_seed(5)
    rows, size = 2 * trainer.cfg.batch_size, trainer.model.cfg.embed_size
    return torch.randn(rows, size, generator=gen, dtype=torch.float64) * trainer.model.cfg.sigma


def as_float64(batch):
    return batch._replace(images=batch.images.double())


def eval_cases() -> dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor, str, int]]:
    """(images, captions, caption->image, protocol, shard chunk) per case."""
    gen = torch.Generator().manual_seed(3)
    cases = {}
    # float32 with duplicated captions and images placed on different shards: exact ties whose
    # scores come out of different ranks' GEMMs.
    img = torch.randn(300, 24, generator=gen)
    cap = img.repeat_interleave(5, 0) + 1.2 * torch.randn(1500, 24, generator=gen)
    cap[1400] = cap[3]  # a caption of image 280 equal to one of image 0
    cap[700] = cap[2]
    img[250] = img[10]
    cases["float32_ties"] = (img, cap, torch.arange(1500) // 5, "full", 128)
    # Small integers (every score exact, many ties), shuffled captions, 1 to 9 per image.
    counts = torch.randint(1, 10, (200,), generator=gen)
    ids = torch.repeat_interleave(torch.arange(200), counts)[
        torch.randperm(int(counts.sum()), generator=gen)
    ]
    img = torch.randint(-2, 3, (200, 6), generator=gen).float()
    cap = torch.randint(-2, 3, (len(ids), 6), generator=gen).float()
    cases["integer_ties_shuffled"] = (img, cap, ids, "full", 64)
    # COCO 1K and 5K layouts: 5000 images, 25000 captions; integer scores.
    img = torch.randint(-1, 2, (5000, 4), generator=gen).double()
    cap = torch.randint(-1, 2, (25000, 4), generator=gen).double()
    ids = torch.arange(25000) // 5
    cases["coco_1k"] = (img, cap, ids, "1k", 4096)
    cases["coco_5k"] = (img, cap, ids, "5k", 4096)
    # Fewer chunks than ranks: rank 1 holds no caption.
    img = torch.randn(40, 8, generator=gen, dtype=torch.float64)
    cap = torch.randn(200, 8, generator=gen, dtype=torch.float64)
    cases["one_rank_empty"] = (img, cap, torch.arange(200) % 40, "full", 256)
    return cases


def xattn_cases() -> dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, dict]]:
    """(region codes, word codes, lengths, caption->image, evaluate_xattn options) per case."""
    gen = torch.Generator().manual_seed(4)
    cases = {}
    # 61 images, shuffled captions of 1 to 12 words (1 to 9 per image): 5 caption tiles of 512
    # words, split 2 and 3; duplicated captions and images tie across the two ranks' tiles (small
    # integers: exact products, so copies score exactly alike wherever their GEMM row is).
    counts = torch.randint(1, 10, (61,), generator=gen)
    m = int(counts.sum())
    ids = torch.repeat_interleave(torch.arange(61), counts)[torch.randperm(m, generator=gen)]
    images = torch.randn(61, 9, 8, generator=gen, dtype=torch.float64).round()
    captions = torch.randn(m, 12, 8, generator=gen, dtype=torch.float64).round()
    lengths = torch.randint(1, 13, (m,), generator=gen)
    captions[250:290], lengths[250:290] = captions[:40], lengths[:40]
    images[60] = images[0]
    cases["ties_uneven"] = (images, captions, lengths, ids, {})
    # float32, i2t attention with mean pooling: 3 caption tiles (an odd count), 101 images.
    ids = torch.arange(505) // 5
    images = torch.randn(101, 6, 16, generator=gen)
    captions = torch.randn(505, 6, 16, generator=gen)
    lengths = torch.randint(2, 5, (505,), generator=gen)
    cases["float32_i2t"] = (images, captions, lengths, ids, {"direction": "i2t", "agg": "mean"})
    # One caption tile: rank 0 counts nothing, rank 1 everything.
    ids = torch.arange(20) % 10
    images = torch.randn(10, 3, 4, generator=gen, dtype=torch.float64)
    captions = torch.randn(20, 4, 4, generator=gen, dtype=torch.float64)
    cases["one_tile"] = (images, captions, torch.full((20,), 4), ids, {})
    # COCO 1K: 5000 images, one short caption each, 5 folds.
    ids = torch.arange(5000)
    images = torch.randn(5000, 2, 3, generator=gen, dtype=torch.float64)
    captions = torch.randn(5000, 2, 3, generator=gen, dtype=torch.float64)
    lengths = torch.randint(1, 3, (5000,), generator=gen)
    cases["coco_1k"] = (images, captions, lengths, ids, {"protocol": "1k"})
    return cases


# ---- scenarios (rank side) -----------------------------------------------------------------------


def scenario_gather(ctx: distributed.Context, out: Path) -> dict:
    # Rank r's rows enter the loss of every rank with a rank-specific weight: this rank's gradient
    # must be the sum over ranks (the pitfall: slicing before summing keeps only its own term).
    x = torch.full((3, 2), float(ctx.rank + 1), dtype=torch.float64, requires_grad=True)
    gathered = distributed.all_gather_rows(x)
    weights = torch.arange(12, dtype=torch.float64).view(6, 2) * (ctx.rank + 1) ** 2
    (gathered * weights).sum().backward()
    return {"gathered": gathered.detach(), "grad": x.grad}


def scenario_trainer_step(ctx: distributed.Context, out: Path) -> dict:
    results = {}
    torch.set_default_dtype(torch.float64)  # tight tolerances: float64 model and batches
    try:
        for variant in TRAINER_VARIANTS:
            trainer = Trainer(trainer_config(str(out), variant), ctx)
            local = distributed.local_batches([cross_rank_batch(trainer)], ctx)[0]
            prior, rows = fixed_prior(trainer), 2 * len(local)
            trainer.model.sample_prior = lambda n, like, p=prior, r=rows: p[ctx.rank * r :][:n]
            batch = as_float64(collate([trainer.dataset[j] for j in local]))
            values = trainer.train_step(batch)
            params = dict(trainer.model.named_parameters())
            results[variant] = {
                "values": values,
                "grads": {n: p.grad for n, p in params.items() if p.grad is not None},
                "weights": {n: p.detach() for n, p in params.items()},
            }
    finally:
        torch.set_default_dtype(torch.float32)
    return results


def scenario_eval(ctx: distributed.Context, out: Path) -> dict:
    results = {}
    for name, (img, cap, ids, protocol, chunk) in eval_cases().items():
        shard = retrieval_sharded.caption_shard(len(cap), chunk, ctx)
        results[name] = {
            "result": retrieval_sharded.evaluate_sharded(img, cap[shard.start : shard.stop],
                                                   ids[shard.start : shard.stop], ctx, protocol),
            "captions": len(shard),
        }  # fmt: skip
    img, cap, ids, _, _ = eval_cases()["float32_ties"]
    errors = {}
    for name, bad_ids in [
        ("uncaptioned", torch.where(ids == 7, 8, ids)),  # image 7 has no caption on any rank
        ("out_of_range", torch.where(torch.arange(len(ids)) == 1499, 300, ids)),  # on rank 1 only
    ]:
        shard = retrieval_sharded.caption_shard(len(cap), 128, ctx)
        try:
            retrieval_sharded.evaluate_sharded(img, cap[shard.start : shard.stop],
                                         bad_ids[shard.start : shard.stop], ctx)  # fmt: skip
        except ValueError as err:
            errors[name] = str(err)
    results["errors"] = errors
    return results


def scenario_xattn_eval(ctx: distributed.Context, out: Path) -> dict:
    results = {}
    for name, (images, captions, lengths, ids, kwargs) in xattn_cases().items():
        results[name] = {
            "result": retrieval_sharded.evaluate_xattn_sharded(
                images, captions, lengths, ids, ctx, **kwargs
            )
        }
        if "protocol" not in kwargs:  # this rank's share of the count (beyond the thresholds)
            results[name]["part"] = ops.xattn_ranks(
                images, captions, lengths, ids, part=ctx.rank, parts=ctx.world_size
            )
    # Every rank checks the same inputs before any collective: all of them raise, none waits.
    images, captions, lengths, ids, _ = xattn_cases()["one_tile"]
    try:
        retrieval_sharded.evaluate_xattn_sharded(images, captions, lengths, ids % 9, ctx)
    except ValueError as err:
        results["error"] = str(err)
    return results


def scenario_scan_eval(ctx: distributed.Context, out: Path) -> dict:
    """A SCAN trainer's validation and test under the process group, recording how the ranks
    were computed."""
    trainer = Trainer(trainer_config(str(out), "scan"), ctx)
    calls = []
    whole = ops.xattn_ranks

    def recorded(*args, **kwargs):
        calls.append((kwargs.get("part", 0), kwargs.get("parts", 1)))
        return whole(*args, **kwargs)

    ops.xattn_ranks = recorded
    try:
        dev = trainer.validate()
        test = trainer.evaluate(trainer.test_split())
    finally:
        ops.xattn_ranks = whole
    return {"dev": dev, "test": test, "calls": calls}


def scenario_split_eval(ctx: distributed.Context, out: Path) -> dict:
    trainer = Trainer(trainer_config(str(out), "jwae-mh"), ctx)
    shard = retrieval_sharded.caption_shard(trainer.dev_split.num_captions, 32, ctx)
    result = retrieval_sharded.evaluate_split_sharded(
        trainer.model, trainer.dev_split, trainer.vocab, ctx, batch_size=32
    )
    return {"result": result, "captions": len(shard)}


SCENARIOS = {
    "gather": scenario_gather,
    "trainer_step": scenario_trainer_step,
    "eval": scenario_eval,
    "split_eval": scenario_split_eval,
    "xattn_eval": scenario_xattn_eval,
    "scan_eval": scenario_scan_eval,
}


def main(out: str, *names: str) -> None:
    torch.set_num_threads(1)
    ctx = distributed.setup(torch.device("cpu"))
    assert ctx.world_size == WORLD, ctx
    try:
        for name in names:
            result = SCENARIOS[name](ctx, Path(out) / f"{name}-runs")
            gathered = ctx.gather_objects(result)
            if ctx.is_main:
                torch.save(gathered, Path(out) / f"{name}.pt")
            dist.barrier()
    finally:
        ctx.teardown()


if __name__ == "__main__":
    main(*sys.argv[1:])
