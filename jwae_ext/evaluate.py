"""``python -m jwae_ext.evaluate CHECKPOINT``: the retrieval table of a trained model on any split
(for a phrase-localization checkpoint: its R@1, R@5, upper bound and R@1 per phrase type).

The model, its vocabulary and its training settings come from the checkpoint alone. By default
it is evaluated where the trainer tested it (the training data's test split, generated from the
run's seed and limited to its ``--eval-images``), so the table equals the run's ``test.json``;
``--data`` evaluates it elsewhere: the other embedded style (cross-dataset generalization) or any
precomp folder, whose words unknown to the checkpoint's vocabulary become ``<unk>``. Next to the
table comes the semantic continuity of the image codes (:mod:`jwae_ext.continuity`) when the data
knows what its images show (the embedded datasets). The measuring itself is
:mod:`jwae_ext.evaluation`'s; this module is the command line only.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from jwae_ext.checkpoint import CheckpointError, load_model, write_text_atomic
from jwae_ext.config import resolve_device
from jwae_ext.continuity import format_continuity
from jwae_ext.data import load_split, unknown_captions_line
from jwae_ext.evaluation import CONTINUITY_K, evaluate_loaded, result_file_name
from jwae_ext.grounding.evaluation import evaluate_loaded_grounding, format_grounding
from jwae_ext.grounding.sources import load_grounding
from jwae_ext.grounding.synthetic import NUM_PROPOSALS
from jwae_ext.ops.kernels import add_kernels_option
from jwae_ext.retrieval import PROTOCOLS, format_table


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m jwae_ext.evaluate",
        description="Retrieval table (and semantic continuity) of a trained checkpoint.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("checkpoint", help="checkpoint file, or a run folder (its best.pt)")
    p.add_argument(
        "--data",
        help="embedded dataset name, precomp folder or (grounding) Flickr30k Entities layout "
        "folder (default: the training data)",
    )
    p.add_argument(
        "--split", default="test", help="split to evaluate (grounding: train, val, test)"
    )
    p.add_argument("--protocol", default="full", choices=PROTOCOLS)
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
    add_kernels_option(p)
    return p


def run(args: argparse.Namespace) -> tuple[str, Path]:
    """Everything the command does but printing; returns the report and the JSON file."""
    for name in ("num_images", "k", "batch_size"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {value}")
    loaded = load_model(args.checkpoint, resolve_device(args.device))
    data = args.data or loaded.config["data"]
    seed = loaded.config.get("seed", 0) if args.seed is None else args.seed
    num_images = args.num_images or loaded.config.get("eval_images")
    if args.out:
        out = Path(args.out)
    else:
        out = loaded.path.parent / result_file_name(data, args.split, args.protocol)
    if loaded.config.get("task") == "grounding":
        split = load_grounding(
            data,
            args.split,
            seed=seed,
            num_images=num_images,
            num_proposals=loaded.config.get("proposals", NUM_PROPOSALS),
        )
        result = evaluate_loaded_grounding(loaded, split, batch_size=args.batch_size)
        report = (
            f"{result['variant']} trained on {result['trained_on']}, evaluated on "
            f"{result['data']} ({split.num_images} images)\n{format_grounding(result)}"
        )
        figures_of = "grounding"
    else:
        split = load_split(data, args.split, seed=seed, num_images=num_images)
        evaluation = evaluate_loaded(
            loaded, split, protocol=args.protocol, batch_size=args.batch_size, k=args.k
        )
        result = evaluation.result
        report = (
            f"{result['variant']} trained on {result['trained_on']}, evaluated on "
            f"{result['data']} ({result['images']} images, {result['captions']} captions, "
            f"protocol {args.protocol})\n"
            f"{unknown_captions_line(split.name, result['no_known_word'], result['captions'])}\n"
            f"{format_table(result)}"
        )
        if result["continuity"] is not None:
            report += "\n" + format_continuity(result["continuity"])
        figures_of = "retrieval"
    result["seed"] = seed
    out.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out, json.dumps(result, indent=1))
    if args.figures:
        from jwae_ext import figures  # matplotlib only when asked for

        if figures_of == "grounding":
            figures.grounding_examples(
                Path(args.figures) / "grounding.png", {result["variant"]: loaded}, split
            )
        else:
            figures.evaluation_figures(
                Path(args.figures),
                evaluation.img_codes,
                evaluation.cap_codes,
                evaluation.split,
                title=f"{result['variant']} on {evaluation.split.name}",
                run_dir=loaded.path.parent,
            )
    return report, out


def main(argv: list[str] | None = None) -> int:
    prog = "python -m jwae_ext.evaluate"
    args = parser().parse_args(argv)
    try:
        report, out = run(args)
    except (ValueError, OSError, CheckpointError) as err:
        print(f"{prog}: error: {err}", file=sys.stderr)
        return 2
    print(report)
    print(f"written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
