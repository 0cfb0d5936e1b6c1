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

With ``--data TRAIN`` the same experiment runs on precomp folders (:mod:`jwae_ext.folder_poster`:
in-domain under COCO's protocols, ``--cross-data OTHER[:SPLIT]``, ``--grounding-data ENTITIES``,
the ridge baseline as a row, the poster's numbers with ``--published``).

``unpaired``, ``shift`` and ``prior-weight`` are the measurements beside the poster's tables
(:mod:`jwae_ext.sweeps`), written to ``results-KIND.md`` / ``.json`` in the same folder;
``unpaired --data TRAIN --unpaired OTHER[:SPLIT]`` runs on folders.

The job is resumable: a run with ``test.json`` is done and skipped, a run with ``last.pt`` is
resumed, an evaluation already written is read back. Interrupt it (Ctrl-C) and start the same
command again to continue.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch

from jwae_ext import figures, folder_poster, sweeps, train
from jwae_ext.checkpoint import CheckpointError, load_model, write_text_atomic
from jwae_ext.config import resolve_device
from jwae_ext.continuity import continuity
from jwae_ext.data import EMBEDDED, CaptionSplit, SceneAttributes, load_split
from jwae_ext.data.sources import embedded_style, folder_and_split
from jwae_ext.evaluation import evaluate_loaded, result_file_name
from jwae_ext.grounding.models import GROUNDING_VARIANTS
from jwae_ext.grounding.sources import load_grounding
from jwae_ext.grounding.table import grounding_markdown, summarize_grounding
from jwae_ext.losses import SCAN_VARIANTS
from jwae_ext.ops.kernels import add_kernels_option, kernel_mode
from jwae_ext.published import DATASETS, published_columns
from jwae_ext.retrieval import PROTOCOLS
from jwae_ext.seed_stats import cell, stats

VARIANTS = ("vse0", "vse++", "jwae-mse", "jwae-mh", "scan", "scan-jwae-mh")
IN_DOMAIN, CROSS_DOMAIN = "synthetic-a", "synthetic-b"
# The trainer's tiny test settings: every code path in seconds, numbers meaningless.
QUICK_EVAL_IMAGES = 24
QUICK_MODEL_FLAGS = (
    *("--batch-size", "16", "--embed-size", "16", "--img-hidden", "16", "--word-dim", "8"),
    *("--warmup-epochs", "1", "--epochs", "1"),
)
# On the embedded data also fewer images; a folder is used whole (tests generate small ones).
QUICK_FLAGS = ("--train-images", "48", "--eval-images", str(QUICK_EVAL_IMAGES), *QUICK_MODEL_FLAGS)
LATENT_PAIR = ("vse++", "jwae-mh")  # the poster's supervised-vs-jWAE comparison


@dataclass(frozen=True)
class Settings:
    """What the results depend on; an output folder holds results of one setting only."""

    seeds: tuple[int, ...]
    quick: bool
    epochs: int | None
    device: str
    kernels: str  # compiled or reference: passed to every run (and used by the evaluations)
    data: str = IN_DOMAIN  # the retrieval runs' training data: embedded or a precomp folder
    grounding_data: str | None = IN_DOMAIN  # the phrase-localization runs' (None: no such runs)

    @property
    def embedded(self) -> bool:
        return self.data == IN_DOMAIN

    def train_flags(self, variant: str, seed: int, task: str = "retrieval") -> list[str]:
        data = self.grounding_data if task == "grounding" else self.data
        flags = ["--data", data, "--variant", variant, "--seed", str(seed), "--no-progress"]
        flags += ["--task", task]
        flags += ["--device", self.device, "--kernels", self.kernels]
        if self.quick:
            flags += QUICK_FLAGS if self.embedded else QUICK_MODEL_FLAGS
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
    ``--quick`` runs for the full table, or runs trained on other data). Seeds may be added, the
    device changed, and phrase localization added to a folder that had none."""
    path = out / "settings.json"
    current = asdict(settings)
    if path.is_file():
        saved = {"data": IN_DOMAIN, "grounding_data": IN_DOMAIN, **json.loads(path.read_text())}
        differs = [k for k in ("quick", "epochs", "data") if saved[k] != current[k]]
        grounding = (saved["grounding_data"], current["grounding_data"])
        if None not in grounding and grounding[0] != grounding[1]:
            differs.append("grounding_data")
        if current["grounding_data"] is None:  # keep the folder's grounding data on record
            current["grounding_data"] = saved["grounding_data"]
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
        """The test split of ``data``: an embedded one generated from ``seed`` (its first
        ``num_images``), a folder's whole."""
        embedded = embedded_style(data) is not None
        key = (data, seed if embedded else 0)
        if key not in self._cache:
            num_images = self.num_images if embedded else None
            self._cache[key] = load_split(data, "test", seed=seed, num_images=num_images)
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
        path = folder / result_file_name(data, "test")
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
            columns[f"{table}/{header}"] = stats([get(by_seed[s][data]) for s in sorted(by_seed)])
        summary[row] = columns
    return summary


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
                cells = [cell(columns[f"{table}/{h}"]) for h in headers]
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
    out: Path, settings: Settings, methods: tuple[str, ...], published: str | None = None
) -> tuple[dict, str, list[Path]]:
    """Train (or resume) every localization method on ``settings.grounding_data`` (the embedded
    grounding set, or a Flickr30k Entities layout folder) for every seed; returns the results
    (per-run test results and the summary), the Markdown table (with the poster's numbers when
    ``published`` names its data) and the figures (the first seed's methods on its test split,
    every run's training curves)."""
    data = settings.grounding_data
    if data is None:
        raise ValueError("phrase localization on folders needs --grounding-data ENTITIES")
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
    source = f"the embedded grounding set of {data}" if data in EMBEDDED else data
    phrases = tests[methods[0]][seeds[0]]["phrases"]
    numbers = published_columns("grounding", published) if data not in EMBEDDED else None
    table = grounding_markdown(summary, source, phrases, numbers)
    device = resolve_device(settings.device)
    loaded = {
        m: load_model(out / "runs" / run_name(m, seeds[0], "grounding"), device) for m in methods
    }
    config = next(iter(loaded.values())).config
    split = load_grounding(
        data,
        "test",
        seed=seeds[0],
        num_images=config["eval_images"],
        num_proposals=config["proposals"],
    )
    fig_dir = out / "figures"
    name = data.rstrip("/").rsplit("/", 1)[-1]
    written = [figures.grounding_examples(fig_dir / f"grounding-{name}.png", loaded, split)]
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


def folder_retrieval_tables(
    out: Path,
    settings: Settings,
    folders: folder_poster.Folders,
    command: str,
    variants: tuple[str, ...],
) -> tuple[dict, str, list[Path]]:
    """:func:`retrieval_tables` on precomp folders (:mod:`jwae_ext.folder_poster`): the tables
    and every run's training curves (a folder's images have no labels or pixels to draw)."""

    def train(variant: str, seed: int) -> Path:
        return train_run(out, settings, variant, seed)

    results, text = folder_poster.retrieval_tables(
        folders, variants, settings.seeds, train, settings.device, command, log
    )
    written = [
        figures.training_curves(
            out / "runs" / name / "metrics.jsonl", out / "figures" / f"curves-{name}.png"
        )
        for name in results["runs"]
    ]
    return results, text, written


def poster(
    out: Path,
    settings: Settings,
    command: str,
    variants: tuple[str, ...] = VARIANTS,
    grounding: tuple[str, ...] = GROUNDING_VARIANTS,
    folders: folder_poster.Folders | None = None,
) -> dict:
    """Run (or resume) the experiment for the retrieval ``variants`` (the tables then have those
    rows) and the phrase-localization methods ``grounding``, either possibly empty; returns
    ``results.json``'s content. ``folders``: the precomp folders to run it on (then
    ``settings.data`` is their training folder), else the embedded data."""
    if not variants and not grounding:
        raise ValueError("nothing to run: --variants and --grounding are both empty")
    if folders is not None and variants:
        folders.check(variants)  # before any training: a SCAN row on pooled features, ...
    _check_settings(out, settings)
    results: dict = {"command": command, "settings": asdict(settings)}
    title = "the embedded data" if folders is None else settings.data
    text, written = f"# Poster experiments on {title}\n\nCommand: `{command}`\n", []
    if variants and folders is None:
        part, text, written = retrieval_tables(out, settings, command, variants)
        results.update(part)
    elif variants:
        part, text, written = folder_retrieval_tables(out, settings, folders, command, variants)
        results.update(part)
    if grounding:
        published = None if folders is None else folders.published
        results["grounding"], table, drawn = phrase_localization(
            out, settings, grounding, published
        )
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


def _common_options(q: argparse.ArgumentParser, out: str | None) -> None:
    q.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    q.add_argument(
        "--out", default=out, help="output folder (resumable; default runs/poster[-DATA])"
    )
    q.add_argument("--quick", action="store_true", help="tiny sizes, 1 epoch: a smoke test")
    q.add_argument("--epochs", type=int, help="override the trainer's epochs")
    q.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto")
    add_kernels_option(q)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m jwae_ext.experiments",
        description="Reproduce the poster's experiments, in form, on the embedded data or on "
        "precomp folders (--data).",
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
        help="the rows to train and tabulate (runs of a folder are kept: add rows later; "
        "default: all, on a pooled --data folder all but the SCAN ones)",
    )
    q.add_argument(
        "--grounding",
        nargs="*",
        choices=GROUNDING_VARIANTS,
        help="the phrase-localization methods to train and tabulate (none: no such table; "
        "default: all, with --data only with --grounding-data)",
    )
    q.add_argument("--out", help="output folder (resumable; default runs/poster[-DATA])")
    q.add_argument("--quick", action="store_true", help="tiny sizes, 1 epoch: a smoke test")
    q.add_argument("--epochs", type=int, help="override the trainer's epochs")
    q.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto")
    add_kernels_option(q)
    folders = q.add_argument_group("on precomp folders (instead of the embedded data)")
    folders.add_argument("--data", metavar="TRAIN", help="precomp folder to train on")
    folders.add_argument(
        "--cross-data", metavar="OTHER[:SPLIT]", help="the cross-dataset test (split: test)"
    )
    folders.add_argument(
        "--grounding-data", metavar="ENTITIES", help="Flickr30k Entities layout folder"
    )
    folders.add_argument(
        "--protocol",
        default="full",
        choices=PROTOCOLS,
        help="in-domain protocol; 1k and 5k test TRAIN's 5000-image testall split",
    )
    folders.add_argument(
        "--published",
        choices=DATASETS,
        help="the folders are the poster's data (TRAIN COCO, OTHER Flickr30k, ENTITIES "
        "Flickr30k Entities; f30k: TRAIN Flickr30k): print its numbers beside the tables",
    )
    helps = {
        "unpaired": "jwae-mh with and without synthetic-b's (or --unpaired's) training data",
        "shift": "vse++ and jwae-mh tested at several shift strengths of synthetic-b",
        "prior-weight": "jwae-mh at several prior weights lambda3 = lambda4",
    }
    for kind, text in helps.items():
        q = sub.add_parser(kind, help=text, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
        # The poster job's folder by default: its runs are reused where the names match.
        _common_options(q, None)
        if kind == "unpaired":
            q.add_argument("--data", metavar="TRAIN", help="precomp folder to train on")
            q.add_argument(
                "--unpaired",
                metavar="OTHER[:SPLIT]",
                help="with --data: the new domain's folder; its SPLIT (train) joins unpaired, "
                "its test split is tested",
            )
        if kind == "shift":
            q.add_argument("--strengths", type=float, nargs="+", default=[0.0, 0.5, 1.0, 2.0])
        if kind == "prior-weight":
            q.add_argument("--weights", type=float, nargs="+", default=[0.01, 0.1, 1.0])
    return p


def _sweep_of(args: argparse.Namespace) -> sweeps.Sweep:
    if args.experiment == "unpaired":
        if args.data is None:
            return sweeps.unpaired_sweep()
        other, split = folder_and_split(args.unpaired, "train")
        folders = folder_poster.Folders.parse(args.data, other)
        folders.check(["jwae-mh"])
        load_split(folders.cross, split)  # the unpaired split exists: checked before training
        return sweeps.unpaired_sweep(
            source=f"{folders.cross}:{split}", train=folders.train, target=folders.cross
        )
    values = args.strengths if args.experiment == "shift" else args.weights
    if min(values) < 0 or len(set(values)) != len(values):
        flag = "--strengths" if args.experiment == "shift" else "--weights"
        raise ValueError(f"{flag} must be distinct numbers >= 0, got {values}")
    if args.experiment == "shift":
        return sweeps.shift_sweep(values)
    return sweeps.prior_weight_sweep(values)


def _default_out(args: argparse.Namespace) -> Path:
    """``runs/poster``; on folders ``runs/poster-TRAIN`` (another folder's runs are others)."""
    if getattr(args, "data", None) is None:
        return Path("runs/poster")
    return Path(f"runs/poster-{args.data.rstrip('/').rsplit('/', 1)[-1]}")


def _poster_rows(args: argparse.Namespace) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The retrieval variants and localization methods of ``poster`` (see its --help)."""
    variants, grounding = args.variants, args.grounding
    for name, values in (("variants", variants), ("grounding", grounding)):
        if values is not None and len(set(values)) != len(values):
            raise ValueError(f"--{name} must be distinct, got {values}")
    if args.data is None:
        for flag in ("cross_data", "grounding_data", "published"):
            if getattr(args, flag) is not None:
                raise ValueError(f"--{flag.replace('_', '-')} needs --data (a precomp folder)")
        if args.protocol != "full":
            raise ValueError("--protocol needs --data: the embedded test split has 1000 images")
        return tuple(VARIANTS if variants is None else variants), tuple(
            GROUNDING_VARIANTS if grounding is None else grounding
        )
    if variants is None:
        pooled = load_split(args.data, "train").regions is None
        variants = [v for v in VARIANTS if not (pooled and v in SCAN_VARIANTS)]
    if grounding is None:
        grounding = GROUNDING_VARIANTS if args.grounding_data else ()
    elif grounding and args.grounding_data is None:
        raise ValueError(f"--grounding {' '.join(grounding)} on folders needs --grounding-data")
    return tuple(variants), tuple(grounding)


def _grounding_folder(folder: str | None) -> str | None:
    """``--grounding-data``'s folder, absolute (the runs' configs keep it)."""
    if folder is not None and not os.path.isdir(folder):
        raise ValueError(
            f"--grounding-data must be a Flickr30k Entities layout folder, got {folder!r}"
        )
    return None if folder is None else os.path.abspath(folder)


def main(argv: list[str] | None = None) -> int:
    prog = "python -m jwae_ext.experiments"
    args = parser().parse_args(argv)
    argv = sys.argv[1:] if argv is None else argv
    command = " ".join(["python -m jwae_ext.experiments", *argv])
    out = Path(args.out) if args.out else _default_out(args)
    try:
        if len(set(args.seeds)) != len(args.seeds) or min(args.seeds) < 0:
            raise ValueError(f"--seeds must be distinct non-negative integers, got {args.seeds}")
        if args.epochs is not None and args.epochs < 1:
            raise ValueError(f"--epochs must be >= 1, got {args.epochs}")
        settings = Settings(tuple(args.seeds), args.quick, args.epochs, args.device, kernel_mode())
        if args.experiment == "poster":
            folders = None
            if args.data is not None:
                folders = folder_poster.Folders.parse(
                    args.data, args.cross_data, args.protocol, args.published
                )
                grounding_data = _grounding_folder(args.grounding_data)
                settings = replace(settings, data=folders.train, grounding_data=grounding_data)
            variants, grounding = _poster_rows(args)
            poster(out, settings, command, variants, grounding, folders)
            written = out / "results.md"
        else:
            if args.experiment == "unpaired" and (args.data is None) != (args.unpaired is None):
                raise ValueError("--data and --unpaired go together (without both: embedded data)")
            sweep = _sweep_of(args)
            if sweep.tests[0] != IN_DOMAIN:  # on folders: the sweep's training data, no grounding
                settings = replace(settings, data=sweep.tests[0], grounding_data=None)
            run_sweep(out, settings, sweep, command)
            written = out / f"results-{sweep.kind}.md"
    except (ValueError, OSError, RunFailed, CheckpointError) as err:
        print(f"{prog}: error: {err}", file=sys.stderr)
        return 2
    print(written.read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
