"""``python -m jwae_ext.train``: train a jWAE (or baseline) retrieval model, print its test table.

With no flags it trains ``jwae-mh`` on the embedded dataset in a few CPU minutes. A run lives in
``runs/NAME/``: ``config.json``, ``vocab.json``, ``metrics.jsonl`` (one JSON object per epoch),
``last.pt`` and ``best.pt`` (written atomically; ``--resume`` continues exactly from ``last.pt``)
and ``test.json``.

Under ``torchrun --nproc_per_node N -m jwae_ext.train ...`` the same run is data-parallel over N
processes (docs/distributed.md): ``--batch-size`` stays the global batch, rank 0 writes the files
and prints, and the result is that of one process up to floating-point summation order and the
random streams of word dropout and prior samples, which are per rank.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import random
import signal
import sys
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from jwae_ext import checkpoint, distributed
from jwae_ext.checkpoint import TrainingState, load_training_state
from jwae_ext.collapse import code_spread, collapse_message
from jwae_ext.config import TrainConfig, from_args, resolve, resolve_device
from jwae_ext.data import CaptionSplit, PairBatch, PairDataset, Vocabulary, collate, load_split
from jwae_ext.data.unpaired import UnpairedData, load_unpaired_captions, load_unpaired_images
from jwae_ext.losses import LossConfig
from jwae_ext.losses_distributed import AutoencoderLoss
from jwae_ext.metrics_log import log_epoch
from jwae_ext.models import ModelConfig, build_model
from jwae_ext.retrieval import format_table
from jwae_ext.retrieval_sharded import encode_and_rank_sharded, evaluate_split_sharded


class NonFiniteLoss(RuntimeError):
    """The loss of a step is NaN or infinite."""


class _StopRequested:
    """Turns SIGINT/SIGTERM into a flag the loop checks between steps, so it can save first."""

    def __init__(self) -> None:
        self.signal: int | None = None
        self._previous: dict[int, object] = {}

    def __enter__(self) -> _StopRequested:
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        self.signal = signum

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def model_config(cfg: TrainConfig, img_dim: int, vocab_size: int) -> ModelConfig:
    return ModelConfig(
        img_dim=img_dim,
        vocab_size=vocab_size,
        embed_size=cfg.embed_size,
        word_dim=cfg.word_dim,
        img_hidden=cfg.img_hidden,
        bidirectional=cfg.bidirectional,
        word_dropout=cfg.word_dropout,
        disc_hidden=cfg.disc_hidden,
        prior_sigma=cfg.prior_sigma,
    )


def loss_config(cfg: TrainConfig) -> LossConfig:
    return LossConfig(
        variant=cfg.variant,
        prior=cfg.prior,
        margin=cfg.margin,
        weights=cfg.weights,
        recon=cfg.recon,
    )


def _rng_state(device: torch.device) -> dict:
    state = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if device.type == "cuda":
        # This process's device only: reading every GPU's state would open a CUDA context on
        # each of them from every rank.
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: dict, device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    if "cuda" in state and device.type == "cuda":
        if isinstance(state["cuda"], list):  # every GPU's state, as written before distributed runs
            torch.cuda.set_rng_state_all(state["cuda"])
        else:
            torch.cuda.set_rng_state(state["cuda"], device)


def _seed(seed: int) -> None:
    torch.manual_seed(seed)
    random.seed(seed)


def epoch_batches(num_pairs: int, batch_size: int, seed: int, epoch: int) -> list[list[int]]:
    """The batches of one epoch: a permutation that depends only on (seed, epoch), so a resumed
    run sees the same order without storing it."""
    order = torch.randperm(
        num_pairs, generator=torch.Generator().manual_seed(seed * 100_003 + epoch)
    )
    return [order[i : i + batch_size].tolist() for i in range(0, num_pairs, batch_size)]


# Where the trainer stands: its attributes of these names are saved and restored as they are.
_PROGRESS = ("epoch", "step_in_epoch", "global_step", "best_rsum", "epoch_sums", "epoch_counted")


class Trainer:
    """One training run: data, model, both optimizers, and the state a checkpoint restores."""

    def __init__(self, cfg: TrainConfig, ctx: distributed.Context | None = None) -> None:
        self.cfg = cfg
        self.ctx = (
            ctx if ctx is not None else distributed.Context(device=resolve_device(cfg.device))
        )
        self.device = self.ctx.device
        if cfg.batch_size % self.ctx.world_size:
            raise ValueError(
                f"--batch-size {cfg.batch_size} is the global batch and must be divisible by the "
                f"{self.ctx.world_size} processes"
            )
        self.dir = Path(cfg.run_dir) / cfg.run_name
        self.epoch = 0  # epochs completed
        self.step_in_epoch = 0  # steps completed in the current epoch
        self.global_step = 0
        self.best_rsum = -math.inf
        # The current epoch's summed loss terms and counted steps, for its metrics record.
        self.epoch_sums: dict[str, float] = {}
        self.epoch_counted = 0
        self.collapse_warned = False  # collapse is reported once per process

        last = self.dir / "last.pt"
        if cfg.resume and not last.exists():
            raise FileNotFoundError(f"--resume: no checkpoint at {last}")
        if not cfg.resume and last.exists():
            raise FileExistsError(
                f"run {self.dir} already has a checkpoint; pass --resume to continue it or "
                "--name to start another run"
            )

        _seed(cfg.seed)  # the same on every rank: identical initial weights
        self.train_split = load_split(cfg.data, "train", seed=cfg.seed, num_images=cfg.train_images)
        self.dev_split = load_split(cfg.data, "dev", seed=cfg.seed, num_images=cfg.eval_images)
        unpaired_captions = self._unpaired_captions()
        if cfg.resume:
            self.vocab = Vocabulary.load(self.dir / "vocab.json")
        else:
            self.vocab = Vocabulary.build(
                self.train_split.captions + unpaired_captions, threshold=cfg.vocab_threshold
            )
        self.dataset = PairDataset(self.train_split, self.vocab, regions=cfg.uses_regions)
        self.unpaired = self._unpaired_data(unpaired_captions)
        self.model_cfg = model_config(cfg, self.dataset.features.shape[-1], len(self.vocab))
        self.loss_cfg = loss_config(cfg)
        self.model = build_model(cfg.variant, self.model_cfg, cfg.xattn_config).to(self.device)
        self.optimizer = torch.optim.Adam(self.model.autoencoder_parameters(), lr=cfg.lr)
        self.disc_optimizer = torch.optim.Adam(
            self.model.disc.parameters(), lr=cfg.disc_lr, betas=(cfg.disc_beta1, cfg.disc_beta2)
        )
        if cfg.resume:
            self._restore(load_training_state(last))
        else:
            if self.ctx.is_main:
                self.dir.mkdir(parents=True, exist_ok=True)
                (self.dir / "config.json").write_text(json.dumps(dataclasses.asdict(cfg), indent=1))
                self.vocab.save(self.dir / "vocab.json")
            if self.ctx.enabled:
                _seed(distributed.rank_seed(cfg.seed, self.ctx.rank))
        self.autoencoder_loss = AutoencoderLoss(self.model, self.loss_cfg, self.ctx).wrapped(
            self.ctx
        )

    # -- unpaired data (--unpaired-images, --unpaired-captions) --------------------------------

    def _unpaired_captions(self) -> list[str]:
        """The unpaired captions (none without ``--unpaired-captions``): they join the
        vocabulary, so that a new domain's own words get codes of their own."""
        if not self.cfg.unpaired_captions:
            return []
        return load_unpaired_captions(
            self.cfg.unpaired_captions, seed=self.cfg.seed, argument="--unpaired-captions"
        )

    def _unpaired_data(self, captions: list[str]) -> UnpairedData | None:
        """The unpaired batches' sources. Where only one side is given, the other side comes
        from the paired training data, drawn independently (unpaired too): the jWAE terms of
        one batch read both an image and a caption side."""
        cfg = self.cfg
        if not cfg.uses_unpaired:
            return None
        if self.ctx.enabled:
            raise ValueError("--unpaired-images/--unpaired-captions: not supported under torchrun")
        images = self.dataset.features
        if cfg.unpaired_images:
            images = load_unpaired_images(
                cfg.unpaired_images,
                seed=cfg.seed,
                regions=cfg.uses_regions,
                feature_dim=images.shape[-1],
                argument="--unpaired-images",
            )
        tokens = [self.vocab.encode(c) for c in captions] if captions else self.dataset.tokens
        return UnpairedData(images, tokens, cfg.batch_size, cfg.unpaired_ratio, cfg.seed)

    def _add_unpaired(
        self, total: torch.Tensor, terms: dict[str, torch.Tensor], codes: tuple[torch.Tensor, ...]
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
        """The step's loss, terms and discriminator codes with this step's unpaired batches
        added: their jWAE terms join the loss (logged as ``unpaired_*``, summed over the step's
        unpaired batches), their codes the discriminator's fakes. The pair loss is untouched."""
        z_img, z_txt = codes
        for images, tokens, lengths in self.unpaired.batches_at(self.global_step):
            loss, added, (u_img, u_txt) = self.model.unpaired_loss(
                images.to(self.device), tokens.to(self.device), lengths.to(self.device),
                self.loss_cfg,
            )  # fmt: skip
            total = total + loss
            for name, value in added.items():
                terms[f"unpaired_{name}"] = terms.get(f"unpaired_{name}", 0.0) + value
            z_img, z_txt = torch.cat([z_img, u_img]), torch.cat([z_txt, u_txt])
        return total, terms, (z_img, z_txt)

    # -- checkpoints -------------------------------------------------------------------------

    def _state(self) -> dict:
        return TrainingState(
            config=dataclasses.asdict(self.cfg),
            model_config=dataclasses.asdict(self.model_cfg),
            vocab=list(self.vocab.idx2word),
            model=self.model.state_dict(),
            optimizer=self.optimizer.state_dict(),
            disc_optimizer=self.disc_optimizer.state_dict(),
            **{name: getattr(self, name) for name in _PROGRESS},
            rng=self.ctx.gather_objects(_rng_state(self.device)),  # per rank
        ).to_checkpoint()

    def _restore(self, state: TrainingState) -> None:
        self.model.load_state_dict(state.model)
        self.optimizer.load_state_dict(state.optimizer)
        self.disc_optimizer.load_state_dict(state.disc_optimizer)
        for name in _PROGRESS:
            setattr(self, name, getattr(state, name))
        if len(state.rng) == self.ctx.world_size:
            _set_rng_state(state.rng[self.ctx.rank], self.device)
            return
        if self.ctx.is_main:
            print(
                f"warning: the checkpoint was written by {len(state.rng)} processes, this run has "
                f"{self.ctx.world_size}: random streams (word dropout, prior samples) are "
                "re-derived, so the continuation is not the one the original run would have made",
                file=sys.stderr,
            )
        _seed(distributed.rank_seed(self.cfg.seed, self.ctx.rank, self.global_step))

    def save(self, name: str) -> Path:
        """Write a checkpoint (rank 0) once every rank's state is in it. Collective: every rank
        calls it, and returns once the file is in place."""
        state = self._state()
        path = self.dir / name
        if self.ctx.is_main:
            checkpoint.save_atomic(state, path)
        self.ctx.barrier()
        return path

    # -- one step ------------------------------------------------------------------------------

    def _lr(self, epoch: int) -> float:
        return self.cfg.lr * (self.cfg.lr_decay if epoch >= self.cfg.lr_update else 1.0)

    def train_step(self, batch: PairBatch) -> dict[str, float] | None:
        """One optimisation step of encoders/decoders (and of the discriminator every k steps).

        Returns the step's loss terms, or None when a non-finite step was skipped.
        """
        model, cfg = self.model, self.cfg
        images, tokens = batch.images.to(self.device), batch.captions.to(self.device)
        lengths, img_ids = batch.lengths.to(self.device), batch.image_ids.to(self.device)
        total, terms, (z_img, z_txt) = self.autoencoder_loss(
            images, tokens, lengths, img_ids, self.epoch < cfg.warmup_epochs
        )
        if self.unpaired is not None:
            total, terms, (z_img, z_txt) = self._add_unpaired(total, terms, (z_img, z_txt))
        # Means over ranks (the loss of the global batch): every rank takes the same decision.
        logged = torch.stack([*terms.values(), total.detach()])
        distributed.average_([logged], self.ctx)
        values = dict(zip([*terms, "total"], logged.tolist(), strict=True))
        bad = [name for name, v in values.items() if not math.isfinite(v)]
        if bad:
            message = (
                f"non-finite loss at epoch {self.epoch + 1}, step {self.step_in_epoch + 1} "
                f"(global step {self.global_step + 1}): terms {', '.join(bad)} = "
                + ", ".join(f"{values[n]}" for n in bad)
            )
            if cfg.on_nonfinite == "stop":
                raise NonFiniteLoss(message + "; weights left as they were before this step")
            if self.ctx.is_main:
                tqdm.write(f"skipping step: {message}", file=sys.stderr)
            return None

        self.optimizer.zero_grad(set_to_none=True)
        total.backward()
        if cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.autoencoder_parameters(), cfg.grad_clip)
        self.optimizer.step()

        if self.loss_cfg.uses_discriminator and self.global_step % cfg.disc_every == 0:
            d_loss = model.discriminator_loss(z_img, z_txt)
            self.disc_optimizer.zero_grad(set_to_none=True)
            d_loss.backward()
            d_value = d_loss.detach().clone()
            distributed.average_([p.grad for p in model.disc.parameters()] + [d_value], self.ctx)
            self.disc_optimizer.step()
            values["disc"] = float(d_value)
        return values

    # -- the loop ------------------------------------------------------------------------------

    def _log(self, record: dict) -> None:
        """Rank 0 adds the epoch's record to ``metrics.jsonl`` (replacing any later one: see
        :func:`jwae_ext.metrics_log.log_epoch`)."""
        if self.ctx.is_main:
            log_epoch(self.dir / "metrics.jsonl", record)

    def _evaluate(self, split: CaptionSplit, protocol: str = "full") -> dict:
        """The retrieval table of the current model, with captions sharded over the ranks; the
        same on every rank, and the same as one process's."""
        return evaluate_split_sharded(
            self.model,
            split,
            self.vocab,
            self.ctx,
            batch_size=self.cfg.eval_batch_size,
            protocol=protocol,
        )

    def validate(self) -> dict:
        """The dev table, with the spread of the dev codes under ``"codes"`` (rank 0's caption
        shard under torchrun; :mod:`jwae_ext.collapse`); warns once per run when they collapse."""
        table, img, cap = encode_and_rank_sharded(
            self.model, self.dev_split, self.vocab, self.ctx, batch_size=self.cfg.eval_batch_size
        )
        spreads = {
            name: code_spread(codes)
            for name, codes in (("image", img), ("caption", cap))
            if len(codes) >= 2
        }
        message = collapse_message(self.epoch, spreads)
        if message and self.ctx.is_main and not self.collapse_warned:
            tqdm.write(message, file=sys.stderr)
            self.collapse_warned = True
        return {**table, "codes": {name: s.to_dict() for name, s in spreads.items()}}

    def fit(self) -> None:
        cfg = self.cfg
        with _StopRequested() as stop:
            while self.epoch < cfg.epochs:
                lr = self._lr(self.epoch)
                for group in self.optimizer.param_groups:
                    group["lr"] = lr
                batches = distributed.local_batches(
                    epoch_batches(len(self.dataset), cfg.batch_size, cfg.seed, self.epoch),
                    self.ctx,
                )
                loader = DataLoader(
                    self.dataset,
                    batch_sampler=batches[self.step_in_epoch :],
                    collate_fn=collate,
                    num_workers=cfg.workers,
                    # Its own generator: seeding the loader from the global stream would make a
                    # run resumed mid-epoch (a new loader) draw once more than an uninterrupted one.
                    generator=torch.Generator(),
                )
                sums = self.epoch_sums
                started = time.perf_counter()
                self.model.train()
                bar = tqdm(
                    loader,
                    total=len(batches),
                    initial=self.step_in_epoch,
                    desc=f"epoch {self.epoch + 1}/{cfg.epochs}",
                    disable=not (cfg.progress and self.ctx.is_main),
                    leave=False,
                    dynamic_ncols=True,
                )
                for batch in bar:
                    values = self.train_step(batch)
                    self.step_in_epoch += 1
                    self.global_step += 1
                    if values is not None:
                        self.epoch_counted += 1
                        for k, v in values.items():
                            sums[k] = sums.get(k, 0.0) + v
                        bar.set_postfix(loss=f"{values['total']:.4f}", refresh=False)
                    self._stop_if_requested(stop, bar)
                bar.close()
                train = {k: v / max(self.epoch_counted, 1) for k, v in sums.items()}
                self.epoch += 1
                self.step_in_epoch = 0
                self.epoch_sums, self.epoch_counted = {}, 0
                dev = self.validate()
                is_best = dev["rsum"] > self.best_rsum
                if is_best:
                    self.best_rsum = dev["rsum"]
                record = {
                    "epoch": self.epoch,
                    "global_step": self.global_step,
                    "lr": lr,
                    "seconds": round(time.perf_counter() - started, 2),
                    "train": train,
                    "dev": dev,
                    "best": is_best,
                }
                self._log(record)
                if is_best:
                    self.save("best.pt")
                self.save("last.pt")
                if self.ctx.is_main:
                    print(
                        f"epoch {self.epoch}/{cfg.epochs}  "
                        f"loss {record['train'].get('total', math.nan):.4f}  "
                        f"dev rsum {dev['rsum']:.1f}  i2t R@1 {dev['i2t']['r1']:.1f}  "
                        f"t2i R@1 {dev['t2i']['r1']:.1f}{'  (best)' if is_best else ''}",
                        flush=True,
                    )
                self._stop_if_requested(stop)  # e.g. Ctrl-C during validation

    def _stop_if_requested(self, stop: _StopRequested, bar: tqdm | None = None) -> None:
        """Exit with 128 + the signal once any rank got SIGINT/SIGTERM, ``last.pt`` holding this
        point. All ranks stop at the same place, whichever of them got the signal."""
        signum = self.ctx.max_int(stop.signal or 0)
        if not signum:
            return
        if bar is not None:  # mid-epoch: the end-of-epoch checkpoint is not this point
            bar.close()
            path = self.save("last.pt")
            where = f"at epoch {self.epoch + 1}, step {self.step_in_epoch}"
        else:
            path = self.dir / "last.pt"
            where = f"at the end of epoch {self.epoch}"
        if self.ctx.is_main:
            print(
                f"\nstopped by {signal.Signals(signum).name} {where}; checkpoint saved to "
                f"{path}. Continue with --resume.",
                file=sys.stderr,
            )
        raise SystemExit(128 + signum)

    def test(self) -> dict | None:
        """Evaluate the best checkpoint on the test split (when the data has one)."""
        try:
            split = load_split(
                self.cfg.data, "test", seed=self.cfg.seed, num_images=self.cfg.eval_images
            )
        except FileNotFoundError:
            return None
        best = load_training_state(self.dir / "best.pt", map_location=self.device)
        self.model.load_state_dict(best.model)
        result = self._evaluate(split, self.cfg.protocol)
        if self.ctx.is_main:
            (self.dir / "test.json").write_text(json.dumps(result, indent=1))
        return result


def main(argv: list[str] | None = None) -> int:
    prog = "python -m jwae_ext.train"
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        prog += f" [rank {os.environ.get('RANK', '?')}]"
    ctx = None
    try:
        try:
            cfg = resolve(from_args(argv))
            ctx = distributed.setup(resolve_device(cfg.device))
            trainer = Trainer(cfg, ctx)
        except (ValueError, OSError, checkpoint.CheckpointError) as err:
            print(f"{prog}: error: {err}", file=sys.stderr)
            return 2
        try:
            _run(trainer)
        except NonFiniteLoss as err:
            print(f"{prog}: error: {err}", file=sys.stderr)
            return 3
        except checkpoint.CheckpointError as err:
            print(f"{prog}: error: {err}", file=sys.stderr)
            return 2
        return 0
    finally:
        if ctx is not None:
            ctx.teardown()


def _run(trainer: Trainer) -> None:
    """Train, then test the best checkpoint; rank 0 prints."""
    cfg, ctx = trainer.cfg, trainer.ctx
    if ctx.is_main:
        processes = (
            f", {ctx.world_size} processes of {cfg.batch_size // ctx.world_size} pairs per step"
            if ctx.enabled
            else ""
        )
        print(
            f"run {trainer.dir}: {cfg.variant} on {cfg.data}, {len(trainer.dataset)} training "
            f"pairs, vocabulary {len(trainer.vocab)}, device {trainer.device}{processes}",
            flush=True,
        )
    trainer.fit()
    result = trainer.test()
    if result is not None and ctx.is_main:
        print(f"\ntest ({cfg.protocol}), best dev epoch:")
        print(format_table(result))


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:  # outside the training loop, which saves and exits by itself
        print("\ninterrupted; the checkpoints written so far are intact", file=sys.stderr)
        sys.exit(128 + signal.SIGINT)
