"""``python -m jwae_ext.train``: train a jWAE (or baseline) retrieval model, print its test table.

With no flags it trains ``jwae-mh`` on the embedded dataset in a few CPU minutes. A run lives in
``runs/NAME/``: ``config.json``, ``vocab.json``, ``metrics.jsonl`` (one JSON object per epoch),
``last.pt`` and ``best.pt`` (written atomically; ``--resume`` continues exactly from ``last.pt``)
and ``test.json``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import random
import signal
import sys
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from jwae_ext import checkpoint
from jwae_ext.config import TrainConfig, from_args, resolve
from jwae_ext.data import PairBatch, PairDataset, Vocabulary, collate, load_split
from jwae_ext.evaluate import evaluate_split, format_table
from jwae_ext.losses import LossConfig
from jwae_ext.models import JWAE, ModelConfig

CHECKPOINT_FORMAT = 1


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


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {name}: no CUDA device is visible")
    return device


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


def _rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def epoch_batches(num_pairs: int, batch_size: int, seed: int, epoch: int) -> list[list[int]]:
    """The batches of one epoch: a permutation that depends only on (seed, epoch), so a resumed
    run sees the same order without storing it."""
    order = torch.randperm(
        num_pairs, generator=torch.Generator().manual_seed(seed * 100_003 + epoch)
    )
    return [order[i : i + batch_size].tolist() for i in range(0, num_pairs, batch_size)]


def _logged_epoch(line: str) -> float:
    """The epoch of a metrics.jsonl line (infinite for a torn line of a killed run)."""
    try:
        return json.loads(line)["epoch"]
    except (json.JSONDecodeError, KeyError, TypeError):
        return math.inf


class Trainer:
    """One training run: data, model, both optimizers, and the state a checkpoint restores."""

    def __init__(self, cfg: TrainConfig) -> None:
        self.cfg = cfg
        self.device = resolve_device(cfg.device)
        self.dir = Path(cfg.run_dir) / cfg.run_name
        self.epoch = 0  # epochs completed
        self.step_in_epoch = 0  # steps completed in the current epoch
        self.global_step = 0
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

        torch.manual_seed(cfg.seed)
        random.seed(cfg.seed)
        self.train_split = load_split(cfg.data, "train", seed=cfg.seed, num_images=cfg.train_images)
        self.dev_split = load_split(cfg.data, "dev", seed=cfg.seed, num_images=cfg.eval_images)
        if cfg.resume:
            self.vocab = Vocabulary.load(self.dir / "vocab.json")
        else:
            self.vocab = Vocabulary.build(self.train_split.captions, threshold=cfg.vocab_threshold)
        self.dataset = PairDataset(self.train_split, self.vocab)
        self.model_cfg = model_config(cfg, self.train_split.images.shape[1], len(self.vocab))
        self.loss_cfg = loss_config(cfg)
        self.model = JWAE(self.model_cfg).to(self.device)
        self.optimizer = torch.optim.Adam(self.model.autoencoder_parameters(), lr=cfg.lr)
        self.disc_optimizer = torch.optim.Adam(
            self.model.disc.parameters(), lr=cfg.disc_lr, betas=(cfg.disc_beta1, cfg.disc_beta2)
        )
        if cfg.resume:
            self._restore(checkpoint.load(last))
        else:
            self.dir.mkdir(parents=True, exist_ok=True)
            (self.dir / "config.json").write_text(json.dumps(dataclasses.asdict(cfg), indent=1))
            self.vocab.save(self.dir / "vocab.json")

    # -- checkpoints -------------------------------------------------------------------------

    def _state(self) -> dict:
        return {
            "format": CHECKPOINT_FORMAT,
            "config": dataclasses.asdict(self.cfg),
            "model_config": dataclasses.asdict(self.model_cfg),
            "vocab": list(self.vocab.idx2word),
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "disc_optimizer": self.disc_optimizer.state_dict(),
            "epoch": self.epoch,
            "step_in_epoch": self.step_in_epoch,
            "global_step": self.global_step,
            "best_rsum": self.best_rsum,
            "epoch_sums": self.epoch_sums,
            "epoch_counted": self.epoch_counted,
            "rng": _rng_state(),
        }

    def _restore(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.disc_optimizer.load_state_dict(state["disc_optimizer"])
        self.epoch = state["epoch"]
        self.step_in_epoch = state["step_in_epoch"]
        self.global_step = state["global_step"]
        self.best_rsum = state["best_rsum"]
        self.epoch_sums = dict(state.get("epoch_sums", {}))
        self.epoch_counted = state.get("epoch_counted", 0)
        _set_rng_state(state["rng"])

    def save(self, name: str) -> Path:
        return checkpoint.save_atomic(self._state(), self.dir / name)

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
        loss_cfg = dataclasses.replace(self.loss_cfg, warmup=self.epoch < cfg.warmup_epochs)
        total, terms, (z_img, z_txt) = model.autoencoder_loss(
            images, tokens, lengths, img_ids, loss_cfg
        )
        values = {name: float(v) for name, v in terms.items()}
        values["total"] = float(total.detach())
        bad = [name for name, v in values.items() if not math.isfinite(v)]
        if bad:
            message = (
                f"non-finite loss at epoch {self.epoch + 1}, step {self.step_in_epoch + 1} "
                f"(global step {self.global_step + 1}): terms {', '.join(bad)} = "
                + ", ".join(f"{values[n]}" for n in bad)
            )
            if cfg.on_nonfinite == "stop":
                raise NonFiniteLoss(message + "; weights left as they were before this step")
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
            self.disc_optimizer.step()
            values["disc"] = float(d_loss.detach())
        return values

    # -- the loop ------------------------------------------------------------------------------

    def _log(self, record: dict) -> None:
        """Add the epoch's record, replacing any of this epoch or later: those were written by a
        run that died before its checkpoint (the resumed run repeats those epochs)."""
        path = self.dir / "metrics.jsonl"
        lines = path.read_text().splitlines() if path.exists() else []
        kept = [line for line in lines if _logged_epoch(line) < record["epoch"]]
        checkpoint.write_text_atomic(path, "".join(f"{x}\n" for x in [*kept, json.dumps(record)]))

    def validate(self) -> dict:
        return evaluate_split(
            self.model,
            self.dev_split,
            self.vocab,
            device=self.device,
            batch_size=self.cfg.eval_batch_size,
        )

    def fit(self) -> None:
        cfg = self.cfg
        with _StopRequested() as stop:
            while self.epoch < cfg.epochs:
                lr = self._lr(self.epoch)
                for group in self.optimizer.param_groups:
                    group["lr"] = lr
                batches = epoch_batches(len(self.dataset), cfg.batch_size, cfg.seed, self.epoch)
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
                    disable=not cfg.progress,
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
                    if stop.signal is not None:
                        path = self.save("last.pt")
                        bar.close()
                        print(
                            f"\nstopped by {signal.Signals(stop.signal).name} at epoch "
                            f"{self.epoch + 1}, step {self.step_in_epoch}; checkpoint saved to "
                            f"{path}. Continue with --resume.",
                            file=sys.stderr,
                        )
                        raise SystemExit(128 + stop.signal)
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
                print(
                    f"epoch {self.epoch}/{cfg.epochs}  "
                    f"loss {record['train'].get('total', math.nan):.4f}  "
                    f"dev rsum {dev['rsum']:.1f}  i2t R@1 {dev['i2t']['r1']:.1f}  "
                    f"t2i R@1 {dev['t2i']['r1']:.1f}{'  (best)' if is_best else ''}",
                    flush=True,
                )

    def test(self) -> dict | None:
        """Evaluate the best checkpoint on the test split (when the data has one)."""
        try:
            split = load_split(
                self.cfg.data, "test", seed=self.cfg.seed, num_images=self.cfg.eval_images
            )
        except FileNotFoundError:
            return None
        best = checkpoint.load(self.dir / "best.pt", map_location=self.device)
        self.model.load_state_dict(best["model"])
        result = evaluate_split(
            self.model,
            split,
            self.vocab,
            device=self.device,
            batch_size=self.cfg.eval_batch_size,
            protocol=self.cfg.protocol,
        )
        (self.dir / "test.json").write_text(json.dumps(result, indent=1))
        return result


def main(argv: list[str] | None = None) -> int:
    prog = "python -m jwae_ext.train"
    try:
        cfg = resolve(from_args(argv))
        trainer = Trainer(cfg)
    except (ValueError, OSError, checkpoint.CheckpointError) as err:
        print(f"{prog}: error: {err}", file=sys.stderr)
        return 2
    print(
        f"run {trainer.dir}: {cfg.variant} on {cfg.data}, {len(trainer.dataset)} training pairs, "
        f"vocabulary {len(trainer.vocab)}, device {trainer.device}",
        flush=True,
    )
    try:
        trainer.fit()
        result = trainer.test()
    except NonFiniteLoss as err:
        print(f"{prog}: error: {err}", file=sys.stderr)
        return 3
    except checkpoint.CheckpointError as err:
        print(f"{prog}: error: {err}", file=sys.stderr)
        return 2
    if result is not None:
        print(f"\ntest ({cfg.protocol}), best dev epoch:")
        print(format_table(result))
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:  # outside the training loop, which saves and exits by itself
        print("\ninterrupted; the checkpoints written so far are intact", file=sys.stderr)
        sys.exit(128 + signal.SIGINT)
