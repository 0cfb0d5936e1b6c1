"""What every training run shares, whatever it trains (retrieval or phrase localization): the
run folder, checkpoints that resume exactly, the epoch loop with its progress bar and
``metrics.jsonl``, the discriminator step, non-finite losses and stopping on SIGINT/SIGTERM.

:class:`RunLoop` is the loop; a task subclasses it with its data, model, loss and evaluation
(:class:`jwae_ext.train.Trainer` for retrieval, :class:`jwae_ext.grounding.trainer.GroundingTrainer`
for phrase localization).
"""

from __future__ import annotations

import dataclasses
import json
import math
import random
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from jwae_ext import checkpoint, distributed
from jwae_ext.checkpoint import TrainingState, load_training_state, write_text_atomic
from jwae_ext.config import TrainConfig, resolve_device
from jwae_ext.data import Vocabulary
from jwae_ext.data.word_vectors import VectorsSource
from jwae_ext.metrics_log import log_epoch
from jwae_ext.models import JointModel

__all__ = ["NonFiniteLoss", "RunLoop", "epoch_batches", "seed_streams"]


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


def seed_streams(value: int) -> None:
    """Seed the random streams a run draws from (torch and Python)."""
    torch.manual_seed(value)
    random.seed(value)


def epoch_batches(num_pairs: int, batch_size: int, seed: int, epoch: int) -> list[list[int]]:
    """The batches of one epoch: a permutation that depends only on (seed, epoch), so a resumed
    run sees the same order without storing it."""
    order = torch.randperm(
        num_pairs, generator=torch.Generator().manual_seed(seed * 100_003 + epoch)
    )
    return [order[i : i + batch_size].tolist() for i in range(0, num_pairs, batch_size)]


# Where the trainer stands: its attributes of these names are saved and restored as they are.
_PROGRESS = ("epoch", "step_in_epoch", "global_step", "best_rsum", "epoch_sums", "epoch_counted")


class RunLoop:
    """One training run of any task: the run folder, both optimizers, the epoch loop and the
    state a checkpoint restores.

    A subclass builds its data and model in :meth:`_build` (setting ``vocab``, ``dataset``,
    ``collate``, ``model_cfg`` and ``model``), and supplies the loss of a batch
    (:meth:`batch_loss`, :attr:`uses_discriminator`), the validation (:meth:`validate`, with
    :meth:`selection_score` and :meth:`describe`), the test (:meth:`test_split`,
    :meth:`evaluate`) and what the run prints (:meth:`describe_run`, :meth:`format_result`).
    """

    vocab: Vocabulary
    dataset: torch.utils.data.Dataset
    collate: Callable[[list], Any]
    model_cfg: Any  # a dataclass: the model's sizes, saved in the checkpoint
    model: JointModel
    # The pretrained word vectors of the model, when it has them: recorded, never saved.
    word_vectors: VectorsSource | None = None

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
        # The model-selection score of the best epoch so far (retrieval: dev rsum; phrase
        # localization: dev R@1), under the checkpoint's historical name.
        self.best_rsum = -math.inf
        # The current epoch's summed loss terms and counted steps, for its metrics record.
        self.epoch_sums: dict[str, float] = {}
        self.epoch_counted = 0

        last = self.dir / "last.pt"
        if cfg.resume and not last.exists():
            raise FileNotFoundError(f"--resume: no checkpoint at {last}")
        if not cfg.resume and last.exists():
            raise FileExistsError(
                f"run {self.dir} already has a checkpoint; pass --resume to continue it or "
                "--name to start another run"
            )

        seed_streams(cfg.seed)  # the same on every rank: identical initial weights
        self._build()
        self.model = self.model.to(self.device)
        self.optimizer = torch.optim.Adam(self.model.autoencoder_parameters(), lr=cfg.lr)
        self.disc_optimizer = torch.optim.Adam(
            self.model.disc.parameters(), lr=cfg.disc_lr, betas=(cfg.disc_beta1, cfg.disc_beta2)
        )
        if cfg.resume:
            self._restore(load_training_state(last))
        else:
            if self.ctx.is_main:
                self.dir.mkdir(parents=True, exist_ok=True)
                record = dataclasses.asdict(cfg)
                if self.word_vectors is not None:
                    record["word_vectors_source"] = self.word_vectors.to_dict()
                write_text_atomic(self.dir / "config.json", json.dumps(record, indent=1))
                self.vocab.save(self.dir / "vocab.json")
            if self.ctx.enabled:
                seed_streams(distributed.rank_seed(cfg.seed, self.ctx.rank))
        self._prepare()

    # -- what a task supplies --------------------------------------------------------------------

    def _build(self) -> None:
        """Load the data and build the model (see the class docstring)."""
        raise NotImplementedError

    def _prepare(self) -> None:
        """Called last in ``__init__``, once the weights are final (initial or restored)."""

    def batch_loss(
        self, batch: Any
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
        """The loss of one batch, its terms (detached) and the codes the discriminator sees."""
        raise NotImplementedError

    @property
    def uses_discriminator(self) -> bool:
        raise NotImplementedError

    def validate(self) -> dict:
        """The dev split's evaluation of the current model."""
        raise NotImplementedError

    def selection_score(self, dev: dict) -> float:
        """What model selection maximizes in a validation result."""
        raise NotImplementedError

    def describe(self, dev: dict) -> str:
        """A validation result on the epoch's line."""
        raise NotImplementedError

    def test_split(self) -> Any | None:
        """The test split, or None when the data has none."""
        raise NotImplementedError

    def evaluate(self, split: Any) -> dict:
        """The test evaluation of the current model on ``split``."""
        raise NotImplementedError

    def describe_run(self) -> str:
        """The training data and vocabulary, for the run's first line."""
        raise NotImplementedError

    def format_result(self, result: dict) -> str:
        """The test result as printed at the end of the run."""
        raise NotImplementedError

    def notes_at_start(self) -> list[str]:
        """Lines printed (rank 0) under the run's first line, before the first epoch."""
        return []

    def notes_at_end(self) -> list[str]:
        """Warnings printed (rank 0, on stderr) once the run has ended."""
        return []

    # -- checkpoints -------------------------------------------------------------------------

    def _state(self) -> dict:
        return TrainingState(
            config=dataclasses.asdict(self.cfg),
            model_config=dataclasses.asdict(self.model_cfg),
            vocab=list(self.vocab.idx2word),
            model=self.model.state_dict(),
            word_vectors=self.word_vectors.to_dict() if self.word_vectors else None,
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
        seed_streams(distributed.rank_seed(self.cfg.seed, self.ctx.rank, self.global_step))

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

    def train_step(self, batch: Any) -> dict[str, float] | None:
        """One optimisation step of encoders/decoders (and of the discriminator every k steps).

        Returns the step's loss terms, or None when a non-finite step was skipped.
        """
        model, cfg = self.model, self.cfg
        total, terms, (z_img, z_txt) = self.batch_loss(batch)
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

        if self.uses_discriminator and self.global_step % cfg.disc_every == 0:
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
                    collate_fn=self.collate,
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
                score = self.selection_score(dev)
                is_best = score > self.best_rsum
                if is_best:
                    self.best_rsum = score
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
                        f"{self.describe(dev)}{'  (best)' if is_best else ''}",
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
        """Evaluate the best checkpoint on the test split (when the data has one) and write the
        result to ``test.json``."""
        split = self.test_split()
        if split is None:
            return None
        best = load_training_state(self.dir / "best.pt", map_location=self.device)
        self.model.load_state_dict(best.model)
        result = self.evaluate(split)
        if self.ctx.is_main:
            write_text_atomic(self.dir / "test.json", json.dumps(result, indent=1))
        return result
