"""``python -m jwae_ext.experiments poster``: the poster's experiments on the embedded data.

For each seed, trains ``vse0``, ``vse++``, ``jwae-mse``, ``jwae-mh``, ``scan`` and
``scan-jwae-mh`` on ``synthetic-a`` (with
``python -m jwae_ext.train``'s defaults), evaluates the best checkpoint in-domain (the test split
of ``synthetic-a``) and cross-domain (the test split of ``synthetic-b``: other rendering, other
phrasing, words unknown to the model's vocabulary read as ``<unk>``), and measures the semantic
continuity of the image codes. Then trains the phrase-localization methods ``embnet``, ``cite``,
``jwae-mse`` and ``cite-jwae`` on the embedded grounding set of ``synthetic-a`` and tabulates
their test R@1 and R@5 (``--grounding``). Writes ``results.json`` and ``results.md`` (mean +-
sample std over seeds, in the form of the poster's tables) and the figures.

``unpaired``, ``shift`` and ``prior-weight`` are the measurements beside the poster's tables
(:mod:`jwae_ext.sweeps`), written to ``results-KIND.md`` / ``.json`` in the same folder.

The job is resumable: a run with ``test.json`` is done and skipped, a run with ``last.pt`` is
resumed, an evaluation already written is read back. Interrupt it (Ctrl-C) and start the same
command again to continue.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from jwae_ext import figures, sweeps, train
from jwae_ext.checkpoint import CheckpointError, load_model, write_text_atomic
from jwae_ext.config import resolve_device
from jwae_ext.continuity import continuity
from jwae_ext.data import CaptionSplit, SceneAttributes, load_split
from jwae_ext.evaluation import evaluate_loaded
from jwae_ext.grounding.models import GROUNDING_VARIANTS
from jwae_ext.grounding.sources import load_grounding
from jwae_ext.grounding.table import grounding_markdown, summarize_grounding
from jwae_ext.ops.kernels import add_kernels_option, kernel_mode

VARIANTS = ("vse0", "vse++", "jwae-mse", "jwae-mh", "scan", "scan-jwae-mh")
IN_DOMAIN, CROSS_DOMAIN = "synthetic-a", "synthetic-b"
# The trainer's tiny test settings: every code path in seconds, numbers meaningless.
QUICK_EVAL_IMAGES = 24
QUICK_FLAGS = tuple(
    f"--train-images 48 --eval-images {QUICK_EVAL_IMAGES} --batch-size 16 --embed-size 16 "
    "--img-hidden 16 --word-dim 8 --warmup-epochs 1 --epochs 1".split()
)
LATENT_PAIR = ("vse++", "jwae-mh")  # the poster's supervised-vs-jWAE comparison


@dataclass(frozen=True)
class Settings:
    """What the results depend on; an output folder holds results of one setting only."""

    seeds: tuple[int, ...]
    quick: bool
    epochs: int | None
    device: str
    kernels: str  # compiled or reference: passed to every run (and used by the evaluations)

    def train_flags(self, variant: str, seed: int, task: str = "retrieval") -> list[str]:
        flags = ["--data", IN_DOMAIN, "--variant", variant, "--seed", str(seed), "--no-progress"]
        flags += ["--task", task]
        flags += ["--device", self.device, "--kernels", self.kernels]
        if self.quick:
            flags += QUICK_FLAGS
        if self.epochs is not None:
            flags += ["--epochs", str(self.epochs)]
        return flags


class RunFailed(RuntimeError):
    """A training run ended with an error (its log says which)."""


def run_name(variant: str, seed: int, task: str = "retrieval") -> str:
    return f"{variant}-s{seed}" if task == "retrieval" else f"{task}-{variant}-s{seed}"


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def _check_settings(out: Path, settings: Settings) -> None:
    """Refuse to mix runs of different settings in one folder (a resumed job must not reuse, say,
    ``--quick`` runs for the full table). Seeds may be added and the device changed."""
    path = out / "settings.json"
    current = asdict(settings)
    if path.is_file():
        saved = json.loads(path.read_text())
        differs = [k for k in ("quick", "epochs") if saved.get(k) != current[k]]
        if differs:
            raise ValueError(
                f"{out} holds runs made with other settings ({', '.join(differs)}: "
                f"{[saved.get(k) for k in differs]}); use another --out"
            )
    out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, json.dumps(current, indent=1))


def train_run(
    out: Path,
    settings: Settings,
    variant: str,
    seed: int,
    extra: tuple[str, ...] = (),
    stem: str | None = None,
    task: str = "retrieval",
) -> Path:
    """Train one run of ``task`` unless done; resume it when interrupted. Returns its folder.
    ``extra``: more trainer flags, for runs named ``STEM-sSEED`` (default: the variant)."""
    runs = out / "runs"
    name = run_name(stem or variant, seed, task)
    folder = runs / name
    if (folder / "test.json").is_file():
        log(f"{name}: trained, skipping")
        return folder
    flags = [
        "--run-dir",
        str(runs),
        "--name",
        name,
        *settings.train_flags(variant, seed, task),
        *extra,
    ]
    resume = (folder / "last.pt").is_file()
    if resume:
        flags.append("--resume")
    log(f"{name}: {'resuming' if resume else 'training'} (log: {folder}.log)")
    started = time.perf_counter()
    runs.mkdir(parents=True, exist_ok=True)
    with (
        open(f"{folder}.log", "a") as logfile,
        contextlib.redirect_stdout(logfile),
        contextlib.redirect_stderr(logfile),
    ):
        code = train.main(flags)
    if code != 0:
        raise RunFailed(f"training {name} failed with exit code {code}; see {folder}.log")
    log(f"{name}: trained in {time.perf_counter() - started:.0f} s")
    return folder


class Splits:
    """Test splits by (data, seed), generated once per job (the embedded data is generated from
    the run's seed, as the trainer does)."""

    def __init__(self, num_images: int | None) -> None:
        self.num_images = num_images
        self._cache: dict[tuple[str, int], CaptionSplit] = {}

    def get(self, data: str, seed: int) -> CaptionSplit:
        key = (data, seed)
        if key not in self._cache:
            self._cache[key] = load_split(data, "test", seed=seed, num_images=self.num_images)
        return self._cache[key]


def evaluate_run(
    folder: Path,
    seed: int,
    splits: Splits,
    device: str,
    tests: tuple[str, ...] = (IN_DOMAIN, CROSS_DOMAIN),
) -> dict[str, dict]:
    """The evaluations of a run's best checkpoint on the ``tests`` splits (default in-domain and
    cross-domain; read back when already written)."""
    results, loaded = {}, None
    for data in tests:
        path = folder / f"eval-{data}-test.json"
        if not path.is_file():
            loaded = loaded or load_model(folder, resolve_device(device))
            evaluation = evaluate_loaded(loaded, splits.get(data, seed))
            evaluation.result["seed"] = seed
            write_text_atomic(path, json.dumps(evaluation.result, indent=1))
        results[data] = json.loads(path.read_text())
    return results


# ---- the tables ------------------------------------------------------------------------------


def _recall(direction: str, k: int):
    return lambda r: r[direction][f"r{k}"]


def _agreement(kind: str):
    return lambda r: 100 * r["continuity"]["class_agreement"][kind]


def _jaccard(r: dict) -> float:
    return 100 * r["continuity"]["jaccard"]


def _rsum(r: dict) -> float:
    return r["rsum"]


# (table, column header, evaluation data, value of one evaluation)
_COLUMNS = (
    ("in", "i2t R@1", IN_DOMAIN, _recall("i2t", 1)),
    ("in", "t2i R@1", IN_DOMAIN, _recall("t2i", 1)),
    ("in", "rsum", IN_DOMAIN, _rsum),
    ("cross", "i2t R@5", CROSS_DOMAIN, _recall("i2t", 5)),
    ("cross", "t2i R@5", CROSS_DOMAIN, _recall("t2i", 5)),
    ("cross", "rsum", CROSS_DOMAIN, _rsum),
    *(
        column
        for data, tag in ((IN_DOMAIN, "a"), (CROSS_DOMAIN, "b"))
        for column in (
            ("cont", f"shape@10 ({tag})", data, _agreement("shape")),
            ("cont", f"colour@10 ({tag})", data, _agreement("colour")),
            ("cont", f"Jaccard@10 ({tag})", data, _jaccard),
        )
    ),
)
_TITLES = {
    "in": f"In-domain retrieval (train {IN_DOMAIN}, test {IN_DOMAIN})",
    "cross": f"Cross-domain generalization (train {IN_DOMAIN}, test {CROSS_DOMAIN})",
    "cont": "Semantic continuity of the image codes",
}
_CONTINUITY_NOTE = (
    "Image codes only, no text: the % of each test image's 10 nearest images (cosine) whose main "
    "object has the same shape / colour, and the mean Jaccard overlap of their sets of (shape, "
    "colour) objects, on the test split of (a) synthetic-a and (b) synthetic-b. *image features*: "
    "the same measure on the encoders' input features; *chance*: neighbours drawn at random."
)


def _stats(values: list[float]) -> dict:
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return {"mean": statistics.fmean(values), "std": std, "values": values}


def summarize(evaluations: dict[str, dict[int, dict]], baselines: dict[int, dict]) -> dict:
    """Mean and std over seeds of every table column, per variant (and for the input features'
    continuity, the ``"image features"`` row)."""
    summary = {}
    rows = {**evaluations, "image features": baselines}
    for row, by_seed in rows.items():
        columns = {}
        for table, header, data, get in _COLUMNS:
            if row == "image features" and table != "cont":
                continue
            columns[f"{table}/{header}"] = _stats([get(by_seed[s][data]) for s in sorted(by_seed)])
        summary[row] = columns
    return summary


def _cell(stats: dict) -> str:
    if len(stats["values"]) < 2:
        return f"{stats['mean']:.1f}"
    return f"{stats['mean']:.1f} ± {stats['std']:.1f}"


def markdown(
    summary: dict, chance: dict, sizes: dict[str, tuple[int, int]], seeds: list[int], command: str
) -> str:
    """``results.md``: the three tables, mean +- std over seeds. ``sizes``: (images, captions)
    of each test split."""
    test_sets = "; ".join(
        f"{data} test: {n} images, {m} captions" for data, (n, m) in sizes.items()
    )
    spread = "mean ± sample std over seeds" if len(seeds) > 1 else "one seed: no spread"
    lines = [
        "# Poster experiments on the embedded data",
        "",
        f"Command: `{command}`  ",
        f"Seeds: {', '.join(map(str, seeds))} ({spread}; the seed sets the generated data, the "
        f"initialisation and the batch order).  ",
        f"Evaluated on {test_sets}. Recalls in %.",
    ]
    for table, title in _TITLES.items():
        headers = [h for t, h, _, _ in _COLUMNS if t == table]
        lines += ["", f"## {title}", ""]
        if table == "cont":
            lines += [_CONTINUITY_NOTE, ""]
        lines += ["| method | " + " | ".join(headers) + " |", "|---|" + "---:|" * len(headers)]
        for row, columns in summary.items():
            if f"{table}/{headers[0]}" in columns:
                cells = [_cell(columns[f"{table}/{h}"]) for h in headers]
                lines.append(f"| {row} | " + " | ".join(cells) + " |")
        if table == "cont":
            cells = [
                f"{100 * chance[data][key]:.1f}"
                for data in (IN_DOMAIN, CROSS_DOMAIN)
                for key in ("shape", "colour", "jaccard")
            ]
            lines.append("| chance | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def continuity_of_features(split: CaptionSplit) -> dict:
    """Continuity of the input image features themselves: what the encoders start from."""
    return continuity(torch.from_numpy(np.array(split.images)), split.attributes)


def _chance(baselines: dict[int, dict]) -> dict:
    """Mean over seeds of each continuity column's chance level (random neighbours)."""
    out = {}
    for data in (IN_DOMAIN, CROSS_DOMAIN):
        values = [baselines[s][data]["continuity"] for s in sorted(baselines)]
        out[data] = {
            "shape": statistics.fmean(v["class_chance"]["shape"] for v in values),
            "colour": statistics.fmean(v["class_chance"]["colour"] for v in values),
            "jaccard": statistics.fmean(v["jaccard_chance"] for v in values),
        }
    return out


# ---- figures -----------------------------------------------------------------------------------


def draw_figures(
    out: Path, variants: list[str], seeds: list[int], splits: Splits, device: str
) -> list[Path]:
    """Latent space of ``vse++`` vs ``jwae-mh`` (first seed, when both ran) on both test sets,
    the t-SNE of their in-domain image codes, their cross-domain retrieval examples, and every
    run's training curves."""
    seed = seeds[0]
    fig_dir = out / "figures"
    written = [
        figures.training_curves(
            out / "runs" / name / "metrics.jsonl", fig_dir / f"curves-{name}.png"
        )
        for name in (run_name(v, s) for v in variants for s in seeds)
    ]
    if not set(LATENT_PAIR) <= set(variants):
        return written
    names = SceneAttributes.class_names("shape")
    loaded = {
        v: load_model(out / "runs" / run_name(v, seed), resolve_device(device)) for v in LATENT_PAIR
    }
    image_panels = []
    for data in (IN_DOMAIN, CROSS_DOMAIN):
        split = splits.get(data, seed)
        panels = []
        for variant, model in loaded.items():
            ev = evaluate_loaded(model, split)
            if data == IN_DOMAIN:
                title = f"{variant} (seed {seed})"
                image_panels.append(figures.ImageCodesPanel(title, ev.img_codes, split.attributes))
            panels.append(
                figures.LatentPanel(
                    f"{variant} (seed {seed}) on {data} test",
                    ev.img_codes,
                    ev.cap_codes,
                    split.cap_to_img,
                    split.attributes.semantic_class("shape"),
                )
            )
            if data == CROSS_DOMAIN:
                written += figures.retrieval_examples(
                    fig_dir, ev.img_codes, ev.cap_codes, split, prefix=f"{variant}-{data}-"
                )
        written.append(figures.latent_space(fig_dir / f"latent-{data}.png", panels, names))
    try:
        path = fig_dir / f"tsne-images-{IN_DOMAIN}.png"
        written.append(figures.image_tsne(path, image_panels, seed))
    except ImportError as err:  # scikit-learn is optional: the other figures stand
        log(f"skipped the t-SNE figure: {err}")
    return written


# ---- the command -------------------------------------------------------------------------------


def phrase_localization(
    out: Path, settings: Settings, methods: tuple[str, ...]
) -> tuple[dict, str, list[Path]]:
    """Train (or resume) every localization method on the embedded grounding set for every
    seed; returns the results (per-run test results and the summary), the Markdown table and the
    figures (the first seed's methods on its test split, every run's training curves)."""
    seeds = list(settings.seeds)
    tests: dict[str, dict[int, dict]] = {m: {} for m in methods}
    for seed in seeds:
        for method in methods:
            folder = train_run(out, settings, method, seed, task="grounding")
            tests[method][seed] = json.loads((folder / "test.json").read_text())
            log(f"{folder.name}: test R@1 {tests[method][seed]['r1']:.1f}")
    summary = summarize_grounding(tests)
    results = {
        "summary": summary,
        "runs": {run_name(m, s, "grounding"): tests[m][s] for m in methods for s in seeds},
    }
    table = grounding_markdown(summary, IN_DOMAIN, tests[methods[0]][seeds[0]]["phrases"])
    device = resolve_device(settings.device)
    loaded = {
        m: load_model(out / "runs" / run_name(m, seeds[0], "grounding"), device) for m in methods
    }
    config = next(iter(loaded.values())).config
    split = load_grounding(
        IN_DOMAIN,
        "test",
        seed=seeds[0],
        num_images=config["eval_images"],
        num_proposals=config["proposals"],
    )
    fig_dir = out / "figures"
    written = [figures.grounding_examples(fig_dir / f"grounding-{IN_DOMAIN}.png", loaded, split)]
    for name in (run_name(m, s, "grounding") for m in methods for s in seeds):
        metrics = out / "runs" / name / "metrics.jsonl"
        written.append(figures.training_curves(metrics, fig_dir / f"curves-{name}.png"))
    return results, table, written


def retrieval_tables(
    out: Path, settings: Settings, command: str, variants: tuple[str, ...]
) -> tuple[dict, str, list[Path]]:
    """Train (or resume) and evaluate the retrieval ``variants`` for every seed; returns their
    results, the Markdown tables and the figures."""
    seeds = list(settings.seeds)
    splits = Splits(num_images=QUICK_EVAL_IMAGES if settings.quick else None)
    evaluations: dict[str, dict[int, dict]] = {v: {} for v in variants}
    for seed in seeds:
        for variant in variants:
            folder = train_run(out, settings, variant, seed)
            evaluations[variant][seed] = evaluate_run(folder, seed, splits, settings.device)
            result = evaluations[variant][seed][IN_DOMAIN]
            log(
                f"{folder.name}: in-domain rsum {result['rsum']:.1f}, cross-domain rsum "
                f"{evaluations[variant][seed][CROSS_DOMAIN]['rsum']:.1f}"
            )
    baselines = {
        s: {
            data: {"continuity": continuity_of_features(splits.get(data, s))}
            for data in (IN_DOMAIN, CROSS_DOMAIN)
        }
        for s in seeds
    }
    summary = summarize(evaluations, baselines)
    chance = _chance(baselines)
    results = {
        "summary": summary,
        "chance": chance,
        "runs": {run_name(v, s): evaluations[v][s] for v in variants for s in seeds},
    }
    any_run = evaluations[variants[0]][seeds[0]]
    sizes = {data: (any_run[data]["images"], any_run[data]["captions"]) for data in any_run}
    text = markdown(summary, chance, sizes, seeds, command)
    return results, text, draw_figures(out, list(variants), seeds, splits, settings.device)


def poster(
    out: Path,
    settings: Settings,
    command: str,
    variants: tuple[str, ...] = VARIANTS,
    grounding: tuple[str, ...] = GROUNDING_VARIANTS,
) -> dict:
    """Run (or resume) the experiment for the retrieval ``variants`` (the tables then have those
    rows) and the phrase-localization methods ``grounding``, either possibly empty; returns
    ``results.json``'s content."""
    if not variants and not grounding:
        raise ValueError("nothing to run: --variants and --grounding are both empty")
    _check_settings(out, settings)
    results: dict = {"command": command, "settings": asdict(settings)}
    text, written = f"# Poster experiments on the embedded data\n\nCommand: `{command}`\n", []
    if variants:
        part, text, written = retrieval_tables(out, settings, command, variants)
        results.update(part)
    if grounding:
        results["grounding"], table, drawn = phrase_localization(out, settings, grounding)
        text += "\n" + table
        written += drawn
    write_text_atomic(out / "results.json", json.dumps(results, indent=1))
    write_text_atomic(out / "results.md", text)
    log(f"wrote {out / 'results.md'}, {out / 'results.json'} and {len(written)} figures")
    return results


def run_sweep(out: Path, settings: Settings, sweep: sweeps.Sweep, command: str) -> dict:
    """Train (or resume) and evaluate every row of ``sweep`` (:mod:`jwae_ext.sweeps`) for every
    seed; writes and returns ``results-KIND.json`` and writes ``results-KIND.md``. Runs of the
    same name in ``out`` are reused (the shift sweep reads a poster job's vse++ and jwae-mh)."""
    _check_settings(out, settings)
    seeds = list(settings.seeds)
    splits = Splits(num_images=QUICK_EVAL_IMAGES if settings.quick else None)
    evaluations: dict[str, dict[int, dict]] = {row.label: {} for row in sweep.rows}
    for seed in seeds:
        for row in sweep.rows:
            folder = train_run(out, settings, row.variant, seed, row.flags, row.stem)
            evaluations[row.label][seed] = evaluate_run(
                folder, seed, splits, settings.device, sweep.tests
            )
    summary = sweeps.summarize(sweep, evaluations)
    results = {
        "command": command,
        "settings": asdict(settings),
        "summary": summary,
        "runs": {
            run_name(row.stem, s): evaluations[row.label][s] for row in sweep.rows for s in seeds
        },
    }
    write_text_atomic(out / f"results-{sweep.kind}.json", json.dumps(results, indent=1))
    write_text_atomic(
        out / f"results-{sweep.kind}.md", sweeps.markdown(sweep, summary, seeds, command)
    )
    log(f"wrote {out / f'results-{sweep.kind}.md'}")
    return results


def _common_options(q: argparse.ArgumentParser, out: str) -> None:
    q.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    q.add_argument("--out", default=out, help="output folder (resumable)")
    q.add_argument("--quick", action="store_true", help="tiny sizes, 1 epoch: a smoke test")
    q.add_argument("--epochs", type=int, help="override the trainer's epochs")
    q.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto")
    add_kernels_option(q)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m jwae_ext.experiments",
        description="Reproduce the poster's experiments, in form, on the embedded data.",
    )
    sub = p.add_subparsers(dest="experiment", required=True)
    q = sub.add_parser(
        "poster",
        help="6 variants x seeds: in-domain R@1, cross-domain R@5, continuity, figures",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    q.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    q.add_argument(
        "--variants",
        nargs="*",
        choices=VARIANTS,
        default=list(VARIANTS),
        help="the rows to train and tabulate (runs of a folder are kept: add rows later)",
    )
    q.add_argument(
        "--grounding",
        nargs="*",
        choices=GROUNDING_VARIANTS,
        default=list(GROUNDING_VARIANTS),
        help="the phrase-localization methods to train and tabulate (none: no such table)",
    )
    q.add_argument("--out", default="runs/poster", help="output folder (resumable)")
    q.add_argument("--quick", action="store_true", help="tiny sizes, 1 epoch: a smoke test")
    q.add_argument("--epochs", type=int, help="override the trainer's epochs")
    q.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto")
    add_kernels_option(q)
    helps = {
        "unpaired": "jwae-mh with and without synthetic-b's training data, unpaired",
        "shift": "vse++ and jwae-mh tested at several shift strengths of synthetic-b",
        "prior-weight": "jwae-mh at several prior weights lambda3 = lambda4",
    }
    for kind, text in helps.items():
        q = sub.add_parser(kind, help=text, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
        # The poster job's folder by default: its runs are reused where the names match.
        _common_options(q, "runs/poster")
        if kind == "shift":
            q.add_argument("--strengths", type=float, nargs="+", default=[0.0, 0.5, 1.0, 2.0])
        if kind == "prior-weight":
            q.add_argument("--weights", type=float, nargs="+", default=[0.01, 0.1, 1.0])
    return p


def _sweep_of(args: argparse.Namespace) -> sweeps.Sweep:
    if args.experiment == "unpaired":
        return sweeps.unpaired_sweep()
    values = args.strengths if args.experiment == "shift" else args.weights
    if min(values) < 0 or len(set(values)) != len(values):
        flag = "--strengths" if args.experiment == "shift" else "--weights"
        raise ValueError(f"{flag} must be distinct numbers >= 0, got {values}")
    if args.experiment == "shift":
        return sweeps.shift_sweep(values)
    return sweeps.prior_weight_sweep(values)


def main(argv: list[str] | None = None) -> int:
    prog = "python -m jwae_ext.experiments"
    args = parser().parse_args(argv)
    argv = sys.argv[1:] if argv is None else argv
    command = " ".join(["python -m jwae_ext.experiments", *argv])
    try:
        if len(set(args.seeds)) != len(args.seeds) or min(args.seeds) < 0:
            raise ValueError(f"--seeds must be distinct non-negative integers, got {args.seeds}")
        if args.experiment == "poster":
            for name in ("variants", "grounding"):
                values = getattr(args, name)
                if len(set(values)) != len(values):
                    raise ValueError(f"--{name} must be distinct, got {values}")
        if args.epochs is not None and args.epochs < 1:
            raise ValueError(f"--epochs must be >= 1, got {args.epochs}")
        settings = Settings(tuple(args.seeds), args.quick, args.epochs, args.device, kernel_mode())
        if args.experiment == "poster":
            poster(Path(args.out), settings, command, tuple(args.variants), tuple(args.grounding))
            written = Path(args.out) / "results.md"
        else:
            sweep = _sweep_of(args)
            run_sweep(Path(args.out), settings, sweep, command)
            written = Path(args.out) / f"results-{sweep.kind}.md"
    except (ValueError, OSError, RunFailed, CheckpointError) as err:
        print(f"{prog}: error: {err}", file=sys.stderr)
        return 2
    print(written.read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
