"""``python -m jwae_ext.train``: train a jWAE (or baseline) retrieval model, print its test table.

With no flags it trains ``jwae-mh`` on the embedded dataset in a few CPU minutes;
``--task grounding`` trains a phrase-localization model instead
(:mod:`jwae_ext.grounding.trainer`). A run lives in
``runs/NAME/``: ``config.json``, ``vocab.json``, ``metrics.jsonl`` (one JSON object per epoch),
``last.pt`` and ``best.pt`` (written atomically; ``--resume`` continues exactly from ``last.pt``),
``test.json``, and ``baseline.json``: the ridge baseline (:mod:`jwae_ext.baseline`) on the same
dev split, computed once at the start; a run whose best dev rsum stays below it ends with a
warning naming both.

Under ``torchrun --nproc_per_node N -m jwae_ext.train ...`` the same run is data-parallel over N
processes (docs/distributed.md): ``--batch-size`` stays the global batch, rank 0 writes the files
and prints, and the result is that of one process up to floating-point summation order and the
random streams of word dropout and prior samples, which are per rank.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time

import torch
from tqdm import tqdm

from jwae_ext import checkpoint, distributed
from jwae_ext.baseline import fit_on_dev
from jwae_ext.checkpoint import write_text_atomic
from jwae_ext.collapse import code_spread, collapse_message
from jwae_ext.config import (
    SMALL_DATA_PAIRS,
    TrainConfig,
    data_kind,
    from_args,
    resolve,
    resolve_device,
)
from jwae_ext.data import (
    CaptionSplit,
    PairBatch,
    PairDataset,
    Vocabulary,
    collate,
    load_split,
    unknown_captions_line,
)
from jwae_ext.data.unpaired import UnpairedData, load_unpaired_captions, load_unpaired_images
from jwae_ext.data.word_vectors import NO_VECTORS, WordVectors, load_recorded, load_word_vectors
from jwae_ext.grounding.trainer import GroundingTrainer
from jwae_ext.losses import LossConfig
from jwae_ext.losses_distributed import AutoencoderLoss
from jwae_ext.models import ModelConfig, build_model
from jwae_ext.ops.kernels import kernel_mode
from jwae_ext.retrieval import format_table
from jwae_ext.retrieval_sharded import encode_and_rank_sharded, evaluate_split_sharded
from jwae_ext.training import NonFiniteLoss, RunLoop, epoch_batches

__all__ = ["NonFiniteLoss", "Trainer", "epoch_batches", "main"]


def model_config(
    cfg: TrainConfig, img_dim: int, vocab_size: int, vectors: WordVectors | None = None
) -> ModelConfig:
    return ModelConfig(
        img_dim=img_dim,
        vocab_size=vocab_size,
        text_encoder=cfg.text_encoder,
        vector_words=vectors.source.words if vectors else 0,
        vector_dim=vectors.source.dim if vectors else 0,
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
        mmd_quadratic=cfg.mmd_quadratic,
    )


class Trainer(RunLoop):
    """One retrieval training run: image-caption pairs, a :class:`~jwae_ext.models.JointModel`
    and its objective, validated by the dev split's rsum."""

    def _build(self) -> None:
        cfg = self.cfg
        self.collapse_warned = False  # collapse is reported once per process
        self.train_split = load_split(cfg.data, "train", seed=cfg.seed, num_images=cfg.train_images)
        self.dev_split = load_split(cfg.data, "dev", seed=cfg.seed, num_images=cfg.eval_images)
        unpaired_captions = self._unpaired_captions()
        vectors = self._word_vectors()
        if cfg.resume:
            self.vocab = Vocabulary.load(self.dir / "vocab.json")
        else:
            self.vocab = Vocabulary.build(
                self.train_split.captions + unpaired_captions, threshold=cfg.vocab_threshold
            )
        if vectors is not None:
            self.vocab = self.vocab.with_vectors(vectors.words)
            self.word_vectors = vectors.source
        self.dataset = PairDataset(self.train_split, self.vocab, regions=cfg.uses_regions)
        self.unpaired = self._unpaired_data(unpaired_captions)
        self.collate = collate
        self.model_cfg = model_config(
            cfg, self.dataset.features.shape[-1], len(self.vocab), vectors
        )
        self.loss_cfg = loss_config(cfg)
        self.model = build_model(
            cfg.variant,
            self.model_cfg,
            cfg.xattn_config,
            vectors.module_for(self.vocab.idx2word) if vectors else None,
        )

    def _word_vectors(self) -> WordVectors | None:
        """The pretrained word vectors of ``--word-vectors`` (None for ``none``); a resumed run
        reloads those it recorded, checked to be the same files."""
        wanted = self.cfg.word_vectors != NO_VECTORS
        if not self.cfg.resume:
            return load_word_vectors(self.cfg.word_vectors) if wanted else None
        saved = checkpoint.load_training_state(self.dir / "last.pt").word_vectors
        if (saved is not None) != wanted:
            raise ValueError(
                f"--resume: run {self.dir} was trained "
                f"{'with' if saved is not None else 'without'} word vectors; --word-vectors "
                f"{self.cfg.word_vectors} cannot change that"
            )
        return load_recorded(saved) if wanted else None

    def _prepare(self) -> None:
        # DDP wraps the loss once the weights are final (initial or restored).
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

    # -- one step ------------------------------------------------------------------------------

    def batch_loss(
        self, batch: PairBatch
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
        images, tokens = batch.images.to(self.device), batch.captions.to(self.device)
        lengths, img_ids = batch.lengths.to(self.device), batch.image_ids.to(self.device)
        total, terms, codes = self.autoencoder_loss(
            images, tokens, lengths, img_ids, self.epoch < self.cfg.warmup_epochs
        )
        if self.unpaired is not None:
            total, terms, codes = self._add_unpaired(total, terms, codes)
        return total, terms, codes

    @property
    def uses_discriminator(self) -> bool:
        return self.loss_cfg.uses_discriminator

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

    def selection_score(self, dev: dict) -> float:
        return dev["rsum"]

    def describe(self, dev: dict) -> str:
        return (
            f"dev rsum {dev['rsum']:.1f}  i2t R@1 {dev['i2t']['r1']:.1f}  "
            f"t2i R@1 {dev['t2i']['r1']:.1f}"
        )

    def test_split(self) -> CaptionSplit | None:
        try:
            return load_split(
                self.cfg.data, "test", seed=self.cfg.seed, num_images=self.cfg.eval_images
            )
        except FileNotFoundError:
            return None

    def evaluate(self, split: CaptionSplit) -> dict:
        return self._evaluate(split, self.cfg.protocol)

    def describe_run(self) -> str:
        small = data_kind(self.cfg.data, self.cfg.task, self.cfg.train_images) == "small"
        preset = f" (under {SMALL_DATA_PAIRS}: the small-data preset)" if small else ""
        vectors = f" + the {self.word_vectors.describe()} word vectors" if self.word_vectors else ""
        return (
            f"{len(self.dataset)} training pairs{preset}, vocabulary {len(self.vocab)}{vectors}, "
            f"{self.cfg.text_encoder} text encoder"
        )

    def format_result(self, result: dict) -> str:
        return f"\ntest ({self.cfg.protocol}), best dev epoch:\n{format_table(result)}"

    def notes_at_start(self) -> list[str]:
        """The captions of the training and dev splits that have no known word, and the ridge
        baseline's dev table (:meth:`dev_baseline`)."""
        lines = [
            unknown_captions_line(
                split.name, self.vocab.captions_without_known_word(split.captions),
                split.num_captions,
            )
            for split in (self.train_split, self.dev_split)
        ]  # fmt: skip
        self.baseline = self.dev_baseline()
        b = self.baseline
        lines.append(
            f"ridge baseline on {self.dev_split.name} (python -m jwae_ext.baseline, alpha "
            f"{b['alpha']:g}): dev rsum {b['rsum']:.1f}  i2t R@1 {b['i2t']['r1']:.1f}  "
            f"t2i R@1 {b['t2i']['r1']:.1f}  ({b['seconds']:.1f} s)"
        )
        return lines

    def dev_baseline(self) -> dict:
        """The ridge baseline's table on the dev split (the weight chosen there, as this run
        chooses its best epoch), fitted on the training split already loaded; written to
        ``baseline.json`` once. A resumed run reads it back: the same splits give the same
        table (the fit is deterministic), so there is nothing to recompute."""
        path = self.dir / "baseline.json"
        if self.cfg.resume and path.is_file():
            try:
                return json.loads(path.read_text())
            except (OSError, ValueError) as err:  # written atomically: damage from outside
                raise checkpoint.CheckpointError(f"cannot read {path}: {err}") from err
        started = time.perf_counter()
        _, table = fit_on_dev(self.train_split, self.dev_split)
        table["seconds"] = round(time.perf_counter() - started, 2)
        table["data"] = self.dev_split.name
        write_text_atomic(path, json.dumps(table, indent=1))
        return table

    def notes_at_end(self) -> list[str]:
        """A warning when the best dev rsum stayed below the ridge baseline's."""
        baseline = self.baseline["rsum"]
        if self.best_rsum >= baseline:
            return []
        return [
            f"warning: the best dev rsum of this run, {self.best_rsum:.1f}, stayed below the "
            f"ridge baseline's dev rsum, {baseline:.1f}, on the same split "
            f"({self.dev_split.name}): a linear map from the image features to bags of words "
            "retrieves better than this model (see baseline.json)"
        ]


def main(argv: list[str] | None = None) -> int:
    prog = "python -m jwae_ext.train"
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        prog += f" [rank {os.environ.get('RANK', '?')}]"
    ctx = None
    try:
        try:
            cfg = resolve(from_args(argv))
            kernel_mode()  # a bad JWAE_EXT_KERNELS is refused here, not at the first step
            ctx = distributed.setup(resolve_device(cfg.device))
            trainer = (GroundingTrainer if cfg.task == "grounding" else Trainer)(cfg, ctx)
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


def _run(trainer: RunLoop) -> None:
    """Train, then test the best checkpoint; rank 0 prints."""
    cfg, ctx = trainer.cfg, trainer.ctx
    if ctx.is_main:
        processes = (
            f", {ctx.world_size} processes of {cfg.batch_size // ctx.world_size} pairs per step"
            if ctx.enabled
            else ""
        )
        print(
            f"run {trainer.dir}: {cfg.variant} on {cfg.data}, {trainer.describe_run()}, "
            f"device {trainer.device}{processes}, kernels {kernel_mode()}",
            flush=True,
        )
        for line in trainer.notes_at_start():
            print(line, flush=True)
    trainer.fit()
    result = trainer.test()
    if ctx.is_main:
        if result is not None:
            print(trainer.format_result(result))
        for line in trainer.notes_at_end():
            print(line, file=sys.stderr)


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:  # outside the training loop, which saves and exits by itself
        print("\ninterrupted; the checkpoints written so far are intact", file=sys.stderr)
        sys.exit(128 + signal.SIGINT)
