"""``python -m jwae_ext.evaluate CHECKPOINT``: the retrieval table of a trained model on any split.

The model, its vocabulary and its training settings come from the checkpoint alone. By default
it is evaluated where the trainer tested it (the training data's test split, generated from the
run's seed and limited to its ``--eval-images``), so the table equals the run's ``test.json``;
``--data`` evaluates it elsewhere: the other embedded style (cross-dataset generalization) or any
precomp folder, whose words unknown to the checkpoint's vocabulary become ``<unk>``. Next to the
table comes the semantic continuity of the image codes (:mod:`jwae_ext.continuity`) when the data
knows what its images show (the embedded datasets).
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from jwae_ext import retrieval
from jwae_ext.checkpoint import CheckpointError, load
from jwae_ext.continuity import continuity
from jwae_ext.data import CaptionSplit, Vocabulary, load_split, pad_captions
from jwae_ext.data.vocab import SPECIAL_TOKENS
from jwae_ext.models import JWAE, ModelConfig

CONTINUITY_K = 10


@torch.no_grad()
def encode_split(
    model: JWAE,
    split: CaptionSplit,
    vocab: Vocabulary,
    *,
    device: torch.device | str = "cpu",
    batch_size: int = 1024,
    captions: range | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """l2-normalized codes of every image (N, d) and every caption (M, d) of ``split``.

    Words unknown to ``vocab`` become ``<unk>``. The model is put in eval mode. ``captions``
    (a step-1 range, possibly empty) encodes only those captions, in batches starting at its
    first: a shard of a distributed evaluation.
    """
    model.eval()
    chosen = range(split.num_captions) if captions is None else captions
    images, codes = [], []
    for start in range(0, split.num_images, batch_size):
        feats = np.asarray(split.images[start : start + batch_size], dtype=np.float32)
        images.append(model.encode_images(torch.from_numpy(feats).to(device)))
    for start in range(chosen.start, chosen.stop, batch_size):
        chunk = split.captions[start : min(start + batch_size, chosen.stop)]
        tokens, lengths = pad_captions([vocab.encode(c) for c in chunk])
        codes.append(model.encode_captions(tokens.to(device), lengths.to(device)))
    img_emb = torch.cat(images)
    cap_emb = torch.cat(codes) if codes else img_emb.new_empty(0, img_emb.shape[1])
    return F.normalize(img_emb, dim=1), F.normalize(cap_emb, dim=1)


def table_of_codes(
    img_codes: torch.Tensor, cap_codes: torch.Tensor, split: CaptionSplit, protocol: str = "full"
) -> dict:
    """The retrieval table of already-encoded codes of ``split``."""
    cap_to_img = torch.as_tensor(np.asarray(split.cap_to_img), device=img_codes.device)
    return retrieval.evaluate(img_codes, cap_codes, cap_to_img, protocol=protocol)


def evaluate_split(
    model: JWAE,
    split: CaptionSplit,
    vocab: Vocabulary,
    *,
    device: torch.device | str = "cpu",
    batch_size: int = 1024,
    protocol: str = "full",
) -> dict:
    """The retrieval table of ``model`` on ``split`` (see :func:`jwae_ext.retrieval.evaluate`)."""
    img_emb, cap_emb = encode_split(model, split, vocab, device=device, batch_size=batch_size)
    return table_of_codes(img_emb, cap_emb, split, protocol)


def format_table(result: dict) -> str:
    """The standard table: i2t and t2i R@1/5/10, medr, meanr, and rsum."""
    cols = ("r1", "r5", "r10", "medr", "meanr")
    header = f"{'':<6}" + "".join(f"{c:>8}" for c in ("R@1", "R@5", "R@10", "medr", "meanr"))
    lines = [header]
    for direction in ("i2t", "t2i"):
        row = result[direction]
        lines.append(f"{direction:<6}" + "".join(f"{row[c]:>8.1f}" for c in cols))
    lines.append(f"rsum {result['rsum']:.1f}")
    return "\n".join(lines)


def format_continuity(result: dict) -> str:
    """One line: class agreement of the k nearest image codes and their Jaccard overlap, each
    with its chance level in brackets."""
    parts = [
        f"{kind} {value:.3f} ({result['class_chance'][kind]:.3f})"
        for kind, value in result["class_agreement"].items()
    ]
    parts.append(f"Jaccard {result['jaccard']:.3f} ({result['jaccard_chance']:.3f})")
    return f"continuity, {result['k']} nearest images (chance): " + ", ".join(parts)


# ---- checkpoints -------------------------------------------------------------------------------


@dataclass
class LoadedModel:
    """A trained model rebuilt from a checkpoint, with its vocabulary and training settings."""

    path: Path
    model: JWAE
    vocab: Vocabulary
    config: dict  # the run's TrainConfig as saved


def checkpoint_file(path: str | Path) -> Path:
    """``path`` itself, or for a run folder its ``best.pt`` (``last.pt`` when there is none)."""
    path = Path(path)
    if not path.is_dir():
        return path
    for name in ("best.pt", "last.pt"):
        if (path / name).is_file():
            return path / name
    raise CheckpointError(f"run folder {path} holds no checkpoint (best.pt or last.pt)")


def load_model(path: str | Path, device: torch.device | str = "cpu") -> LoadedModel:
    """Rebuild the model saved in checkpoint ``path`` (a file or a run folder) on ``device``."""
    path = checkpoint_file(path)
    state = load(path, map_location=device)
    missing = [key for key in ("config", "model_config", "vocab", "model") if key not in state]
    if missing:
        raise CheckpointError(f"checkpoint {path} lacks {', '.join(missing)}")
    words = state["vocab"]
    if not isinstance(words, list) or tuple(words[:4]) != SPECIAL_TOKENS:
        raise CheckpointError(f"checkpoint {path}: 'vocab' is not a jwae_ext vocabulary list")
    try:
        model = JWAE(ModelConfig(**state["model_config"]))
        model.load_state_dict(state["model"])
        vocab = Vocabulary(words[len(SPECIAL_TOKENS) :])
        config = dict(state["config"])
    except (TypeError, ValueError, RuntimeError) as err:
        first = str(err).splitlines()[0]
        raise CheckpointError(
            f"checkpoint {path} does not describe a valid model: {first}"
        ) from err
    return LoadedModel(path, model.to(device), vocab, config)


@dataclass
class Evaluation:
    """What :func:`evaluate_loaded` measured: the JSON-ready ``result`` and the codes behind it."""

    result: dict
    img_codes: torch.Tensor
    cap_codes: torch.Tensor
    split: CaptionSplit


def evaluate_loaded(
    loaded: LoadedModel,
    split: CaptionSplit,
    *,
    protocol: str = "full",
    batch_size: int = 1024,
    k: int = CONTINUITY_K,
) -> Evaluation:
    """The retrieval table of ``loaded`` on ``split`` and, when the split has attributes, the
    continuity of its image codes (``k`` neighbours)."""
    expected = loaded.model.cfg.img_dim
    if split.feature_dim != expected:
        raise ValueError(
            f"data {split.name} has {split.feature_dim}-dimensional image features, but the model "
            f"in {loaded.path} was trained on {expected}-dimensional ones"
        )
    device = next(loaded.model.parameters()).device
    img, cap = encode_split(loaded.model, split, loaded.vocab, device=device, batch_size=batch_size)
    result = {
        "checkpoint": str(loaded.path),
        "variant": loaded.config.get("variant"),
        "trained_on": loaded.config.get("data"),
        "data": split.name,
        "protocol": protocol,
        "images": split.num_images,
        "captions": split.num_captions,
        **table_of_codes(img, cap, split, protocol),
        "continuity": None if split.attributes is None else continuity(img, split.attributes, k),
    }
    return Evaluation(result, img, cap, split)


# ---- command line ------------------------------------------------------------------------------


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m jwae_ext.evaluate",
        description="Retrieval table (and semantic continuity) of a trained checkpoint.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("checkpoint", help="checkpoint file, or a run folder (its best.pt)")
    p.add_argument(
        "--data", help="embedded dataset name or precomp folder (default: the training data)"
    )
    p.add_argument("--split", default="test", help="split to evaluate")
    p.add_argument("--protocol", default="full", choices=retrieval.PROTOCOLS)
    p.add_argument(
        "--seed", type=int, help="seed generating embedded data (default: the run's seed)"
    )
    p.add_argument(
        "--num-images",
        type=int,
        help="evaluate the first N images only (default: the run's --eval-images, else all)",
    )
    p.add_argument("--k", type=int, default=CONTINUITY_K, help="neighbours for continuity")
    p.add_argument(
        "--out", help="JSON file to write (default: eval-DATA-SPLIT.json beside the checkpoint)"
    )
    p.add_argument("--figures", metavar="DIR", help="also draw the figures (PNG) into DIR")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto")
    p.add_argument("--batch-size", type=int, default=1024, help="batch size when encoding")
    return p


def _default_out(checkpoint: Path, data: str, split: str) -> Path:
    name = data.rstrip("/").rsplit("/", 1)[-1]
    return checkpoint.parent / f"eval-{name}-{split}.json"


def run(args: argparse.Namespace) -> tuple[Evaluation, Path]:
    """Everything the command does but printing; returns the evaluation and the JSON file."""
    from jwae_ext.train import resolve_device  # train imports this module

    for name in ("num_images", "k", "batch_size"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {value}")
    loaded = load_model(args.checkpoint, resolve_device(args.device))
    data = args.data or loaded.config["data"]
    seed = loaded.config.get("seed", 0) if args.seed is None else args.seed
    num_images = args.num_images or loaded.config.get("eval_images")
    split = load_split(data, args.split, seed=seed, num_images=num_images)
    evaluation = evaluate_loaded(
        loaded, split, protocol=args.protocol, batch_size=args.batch_size, k=args.k
    )
    evaluation.result["seed"] = seed
    out = Path(args.out) if args.out else _default_out(loaded.path, data, args.split)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(evaluation.result, indent=1))
    if args.figures:
        from jwae_ext import figures  # matplotlib only when asked for

        figures.evaluation_figures(Path(args.figures), evaluation, loaded.path.parent)
    return evaluation, out


def main(argv: list[str] | None = None) -> int:
    prog = "python -m jwae_ext.evaluate"
    args = parser().parse_args(argv)
    try:
        evaluation, out = run(args)
    except (ValueError, OSError, CheckpointError) as err:
        print(f"{prog}: error: {err}", file=sys.stderr)
        return 2
    result = evaluation.result
    print(
        f"{result['variant']} trained on {result['trained_on']}, evaluated on {result['data']} "
        f"({result['images']} images, {result['captions']} captions, protocol {args.protocol})"
    )
    print(format_table(result))
    if result["continuity"] is not None:
        print(format_continuity(result["continuity"]))
    print(f"written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
