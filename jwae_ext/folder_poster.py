"""The poster's retrieval tables on the user's own precomp folders (``python -m jwae_ext.experiments
poster --data TRAIN``): in-domain (TRAIN's test split, or its 5000-image ``testall`` under COCO's
``1k`` / ``5k`` protocols) and across datasets (``--cross-data OTHER[:SPLIT]``), each run's best
checkpoint evaluated as ``python -m jwae_ext.evaluate`` does, the ridge baseline
(:mod:`jwae_ext.baseline`) as a row, the share of OTHER's caption words the training vocabulary
lacks, and the poster's published numbers beside the measured ones where the data are the
poster's (``--published``). A folder's images carry no labels, so there is no continuity table.

The runs themselves are trained by the caller (:func:`jwae_ext.experiments.train_run`, passed in
as ``train``): every run is a normal, resumable run folder.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from jwae_ext.baseline import fit_on_dev
from jwae_ext.checkpoint import load_model, write_text_atomic
from jwae_ext.config import resolve_device
from jwae_ext.data import CaptionSplit, available_splits, load_split
from jwae_ext.data.coverage import unknown_words
from jwae_ext.data.sources import embedded_style, folder_and_split
from jwae_ext.evaluation import evaluate_loaded, result_file_name
from jwae_ext.losses import SCAN_VARIANTS
from jwae_ext.published import published_columns
from jwae_ext.retrieval import PROTOCOLS, check_protocol
from jwae_ext.seed_stats import cell, stats

__all__ = [
    "BASELINE_ROW",
    "TESTS",
    "Folders",
    "evaluate_run",
    "markdown",
    "retrieval_tables",
    "summarize",
]

BASELINE_ROW = "ridge baseline"
IN, CROSS = "in-domain", "cross-dataset"
TESTS = (IN, CROSS)
# (test, column header, value of one evaluation): the embedded data's in-domain and cross tables.
COLUMNS: tuple[tuple[str, str, Callable[[dict], float]], ...] = (
    (IN, "i2t R@1", lambda r: r["i2t"]["r1"]),
    (IN, "t2i R@1", lambda r: r["t2i"]["r1"]),
    (IN, "rsum", lambda r: r["rsum"]),
    (CROSS, "i2t R@5", lambda r: r["i2t"]["r5"]),
    (CROSS, "t2i R@5", lambda r: r["t2i"]["r5"]),
    (CROSS, "rsum", lambda r: r["rsum"]),
)
_PUBLISHED_TABLE = {IN: "in", CROSS: "cross"}

# A run trainer: (variant, seed) -> the run folder, trained (or resumed) unless done.
TrainFn = Callable[[str, int], Path]


@dataclass(frozen=True)
class Folders:
    """The data of one experiment: the training folder, the cross-dataset test (folder and
    split), the in-domain protocol and which of the poster's datasets these are (if any)."""

    train: str
    cross: str | None = None
    cross_split: str = "test"
    protocol: str = "full"
    published: str | None = None

    @classmethod
    def parse(
        cls,
        data: str,
        cross: str | None = None,
        protocol: str = "full",
        published: str | None = None,
    ) -> Folders:
        """From the command line: ``--data TRAIN``, ``--cross-data OTHER[:SPLIT]`` (default
        split ``test``); folders become absolute paths (the runs' configs keep them)."""
        if embedded_style(data) is not None or not os.path.isdir(data):
            raise ValueError(
                f"--data must be a precomp folder (without --data the experiment runs on the "
                f"embedded data), got {data!r}"
            )
        if protocol not in PROTOCOLS:
            raise ValueError(f"--protocol must be one of {PROTOCOLS}, got {protocol!r}")
        published_columns("in", published)  # checks the name
        other, split = (None, "test") if cross is None else folder_and_split(cross, "test")
        if other is not None and not os.path.isdir(other):
            raise ValueError(f"--cross-data must be a precomp folder [:SPLIT], got {cross!r}")
        absolute = None if other is None else os.path.abspath(other)
        folders = cls(os.path.abspath(data), absolute, split, protocol, published)
        files = [result_file_name(*test) for test in folders.tests().values()]
        if len(set(files)) < len(files):
            raise ValueError(
                f"--data {data} and --cross-data {cross} would write the same evaluation file "
                f"{files[0]} in every run (it is named by the folder's last component and the "
                "split): rename one folder, or link it under another name"
            )
        return folders

    @property
    def test_split(self) -> str:
        """The in-domain test split: ``test``, or COCO's 5000-image ``testall`` for the
        ``1k`` / ``5k`` protocols (as VSE++ and SCAN evaluate them)."""
        return "test" if self.protocol == "full" else "testall"

    def tests(self) -> dict[str, tuple[str, str, str]]:
        """``{test: (folder, split, protocol)}``: in-domain, and cross-dataset when given."""
        tests = {IN: (self.train, self.test_split, self.protocol)}
        if self.cross is not None:
            tests[CROSS] = (self.cross, self.cross_split, "full")
        return tests

    def check(self, variants: Sequence[str]) -> dict[str, CaptionSplit]:
        """Raise before any training where the folders cannot serve ``variants``: a missing
        split, a protocol the test split does not fit, features of other sizes, or a SCAN
        variant meeting pooled features. Returns the test splits by test."""
        for split in ("train", "dev"):
            if split not in available_splits(self.train):
                raise ValueError(
                    f"--data {self.train}: no {split} split ({split}_ims.npy and "
                    f"{split}_caps.txt); found: {', '.join(available_splits(self.train))}"
                )
        trained = load_split(self.train, "train")
        splits = {test: load_split(f, s) for test, (f, s, _) in self.tests().items()}
        shape = splits[IN].images.shape
        check_protocol(
            self.protocol,
            torch.empty(shape, device="meta"),
            name=f"{self.train}/{self.test_split}_ims.npy",
        )
        scan = [v for v in variants if v in SCAN_VARIANTS]
        for split in (trained, *splits.values()):  # SCAN rows first: the likelier mistake
            folder, split_name = split.name.rsplit("/", 1)
            if scan and split.regions is None:
                raise ValueError(
                    f"--variants {' '.join(scan)}: SCAN needs region features, but {folder} has "
                    f"pooled ones ({split_name}_ims.npy is (N, D), not (N, R, D)); run the pooled "
                    "variants on it, or extract region features (python -m jwae_ext.features "
                    "--regions grid)"
                )
        for split in splits.values():
            if split.feature_dim != trained.feature_dim or (
                scan and split.regions.shape[1:] != trained.regions.shape[1:]
            ):
                kind = "region" if scan else "image"
                given, expected = (
                    (split.regions.shape[1:], trained.regions.shape[1:])
                    if scan
                    else (split.feature_dim, trained.feature_dim)
                )
                raise ValueError(
                    f"{split.name} has {kind} features of size {given}, {trained.name} of size "
                    f"{expected}: a model trained on one cannot be tested on the other"
                )
        return splits


def evaluate_run(run: Path, split: CaptionSplit, protocol: str, device: str) -> dict:
    """The evaluation of ``run``'s best checkpoint on ``split`` under ``protocol``, as
    ``python -m jwae_ext.evaluate RUN --data FOLDER --split SPLIT --protocol P`` writes it
    (``eval-NAME-SPLIT[-P].json`` in the run folder); read back when written for this split."""
    data, split_name = split.name.rsplit("/", 1)
    path = run / result_file_name(data, split_name, protocol)
    if path.is_file():
        saved = json.loads(path.read_text())
        if saved.get("data") == split.name and saved.get("protocol") == protocol:
            return saved
    loaded = load_model(run, resolve_device(device))
    result = evaluate_loaded(loaded, split, protocol=protocol).result
    result["seed"] = loaded.config.get("seed")
    write_text_atomic(path, json.dumps(result, indent=1))
    return result


def baseline_tables(folders: Folders, splits: dict[str, CaptionSplit]) -> dict:
    """The ridge baseline fitted on TRAIN's train split, its weight chosen on TRAIN's dev split,
    tested like the runs; with the share of the cross test's words its bag of words lacks."""
    model, on_dev = fit_on_dev(load_split(folders.train, "train"), load_split(folders.train, "dev"))
    tables = {
        test: model.evaluate(splits[test], protocol=protocol)
        for test, (_, _, protocol) in folders.tests().items()
    }
    result = {"alpha": on_dev["alpha"], "dev_rsum": on_dev["dev_rsum"], "tests": tables}
    if CROSS in splits:
        result["unknown_words"] = unknown_words(model.words, splits[CROSS].captions)
    return result


def summarize(evaluations: dict[str, dict[int, dict]], baseline: dict) -> dict:
    """Mean and std over seeds of every column, per variant, then the baseline's row (one value:
    it has no seed)."""
    rows = {**evaluations, BASELINE_ROW: {0: baseline["tests"]}}
    return {
        row: {
            f"{test}/{header}": stats([get(by_seed[s][test]) for s in sorted(by_seed)])
            for test, header, get in COLUMNS
            if test in next(iter(by_seed.values()))
        }
        for row, by_seed in rows.items()
    }


def _unknown_sentence(unknown: dict[str, dict], baseline: dict | None) -> str:
    """What the cross test's captions have that the training vocabularies lack."""
    shares = {(u["unknown_token_pct"], u["unknown_word_pct"]) for u in unknown.values()}
    first = next(iter(unknown.values()))
    if len(shares) == 1:
        text = (
            f"The training vocabulary lacks {first['unknown_token_pct']:.1f}% of the test "
            f"captions' word tokens and {first['unknown_word_pct']:.1f}% of their "
            f"{first['words']} distinct words (read as `<unk>`)"
        )
    else:
        tokens = sorted(t for t, _ in shares)
        text = (
            f"The runs' training vocabularies lack {tokens[0]:.1f}% to {tokens[-1]:.1f}% of "
            f"the test captions' word tokens (per run in results.json; read as `<unk>`)"
        )
    if baseline is not None:
        text += (
            f"; the ridge baseline's bag of words (every training word) lacks "
            f"{baseline['unknown_token_pct']:.1f}% and {baseline['unknown_word_pct']:.1f}%"
        )
    return text + "."


def markdown(
    folders: Folders,
    summary: dict,
    splits: dict[str, CaptionSplit],
    baseline: dict,
    unknown: dict[str, dict],
    seeds: Sequence[int],
    command: str,
) -> str:
    """``results.md``'s retrieval tables on folders, mean ± std over seeds."""
    spread = "mean ± sample std over seeds" if len(seeds) > 1 else "one seed: no spread"
    sizes = "; ".join(
        f"{test}: {s.name} ({s.num_images} images, {s.num_captions} captions)"
        for test, s in splits.items()
    )
    lines = [
        f"# Poster experiments on {folders.train}",
        "",
        f"Command: `{command}`  ",
        f"Seeds: {', '.join(map(str, seeds))} ({spread}); every run is a run folder under "
        "`runs/` (`python -m jwae_ext.evaluate RUN --data FOLDER --split SPLIT` gives its "
        "table).  ",
        f"Tests: {sizes}. Recalls in %.  ",
        f"{BASELINE_ROW}: `python -m jwae_ext.baseline` (ridge regression from the image features "
        f"to bags of words) fitted on {folders.train}/train, weight {baseline['alpha']:g} chosen "
        "by dev rsum; it has no seed.",
    ]
    titles = {
        IN: f"In-domain retrieval (train {folders.train}, test its {folders.test_split} split, "
        f"protocol {folders.protocol})",
        CROSS: f"Cross-dataset generalization (train {folders.train}, test "
        f"{folders.cross}/{folders.cross_split})",
    }
    for test in splits:
        headers = [h for t, h, _ in COLUMNS if t == test]
        setting, published = published_columns(_PUBLISHED_TABLE[test], folders.published)
        extra = [h for h in headers if any(h in p for p in published.values())]
        lines += ["", f"## {titles[test]}", ""]
        if test == CROSS:
            lines += [_unknown_sentence(unknown, baseline.get("unknown_words")), ""]
        if published:
            lines += [
                f"*poster*: the poster's published numbers ({setting}), not measured here; "
                f"shown because `--published {folders.published}` says these are its data.",
                "",
            ]
            if test == IN and folders.protocol != "1k":
                lines += [
                    f"(The poster's are on COCO 1K; these on protocol {folders.protocol}.)",
                    "",
                ]
        names = headers + [f"poster {h}" for h in extra]
        lines += ["| method | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names)]
        for row, columns in summary.items():
            cells = [cell(columns[f"{test}/{h}"]) for h in headers]
            cells += [f"{published[row][h]:.1f}" if row in published else "—" for h in extra]
            lines.append(f"| {row} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "## Semantic continuity of the image codes",
        "",
        "No labels: a folder's images carry no attributes to measure continuity against.",
    ]
    return "\n".join(lines) + "\n"


def retrieval_tables(
    folders: Folders,
    variants: Sequence[str],
    seeds: Sequence[int],
    train: TrainFn,
    device: str,
    command: str,
    log: Callable[[str], None] = print,
) -> tuple[dict, str]:
    """Check the folders, train (or resume) every variant for every seed, evaluate each run on
    the tests, compute the baseline; returns ``results.json``'s retrieval part and the tables."""
    splits = folders.check(variants)
    evaluations: dict[str, dict[int, dict]] = {v: {} for v in variants}
    unknown: dict[str, dict] = {}
    runs: dict[str, dict] = {}
    for seed in seeds:
        for variant in variants:
            run = train(variant, seed)
            runs[run.name] = evaluations[variant][seed] = {
                test: evaluate_run(run, splits[test], protocol, device)
                for test, (_, _, protocol) in folders.tests().items()
            }
            if CROSS in splits:
                # The run's input vocabulary: with word vectors, their words are known too.
                vocab = load_model(run).vocab
                unknown[run.name] = unknown_words(vocab, splits[CROSS].captions)
            rsums = ", ".join(
                f"{t} rsum {e['rsum']:.1f}" for t, e in evaluations[variant][seed].items()
            )
            log(f"{run.name}: {rsums}")
    baseline = baseline_tables(folders, splits)
    summary = summarize(evaluations, baseline)
    results = {
        "folders": {
            "train": folders.train,
            **{test: f"{f}/{s} ({p})" for test, (f, s, p) in folders.tests().items()},
            "published": folders.published,
        },
        "summary": summary,
        "baseline": baseline,
        "unknown_words": unknown,
        "runs": runs,
    }
    text = markdown(folders, summary, splits, baseline, unknown, seeds, command)
    return results, text
