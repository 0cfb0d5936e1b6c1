"""The measurements beside the poster's tables (``python -m jwae_ext.experiments unpaired |
shift | prior-weight``): which runs each one trains, what it evaluates, and its tables.

- ``unpaired``: ``jwae-mh`` on synthetic-a with and without the target domain's training images
  and captions as unpaired data (``--unpaired-images/--unpaired-captions synthetic-b``), tested
  in-domain and cross-domain: does data without pairs help a new domain?
- ``shift``: ``vse++`` and ``jwae-mh`` trained on synthetic-a (the poster job's runs), tested on
  style "b" at several shift strengths (``synthetic-b@S``): can the shift separate methods?
- ``prior-weight``: ``jwae-mh`` with the prior weights lambda3 = lambda4 at several values,
  tested in-domain and cross-domain with the continuity of the image codes (the poster
  attributes continuity to the Gaussian regularization).

Here are the definitions and the tables; :mod:`jwae_ext.experiments` trains and evaluates.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from jwae_ext.config import default_prior
from jwae_ext.seed_stats import cell, stats

__all__ = [
    "Row",
    "Sweep",
    "markdown",
    "prior_weight_sweep",
    "shift_sweep",
    "summarize",
    "unpaired_sweep",
]

TRAIN_DATA = "synthetic-a"


@dataclass(frozen=True)
class Row:
    """One table row: a training run per seed of ``variant`` with the extra trainer ``flags``;
    ``stem`` names its runs (``STEM-sSEED``)."""

    label: str
    variant: str
    stem: str
    flags: tuple[str, ...] = ()


@dataclass(frozen=True)
class Sweep:
    """A measurement: its rows, the test splits every row is evaluated on, and what it shows."""

    kind: str
    title: str
    rows: tuple[Row, ...]
    tests: tuple[str, ...]
    note: str


def unpaired_sweep(
    variant: str = "jwae-mh",
    source: str = "synthetic-b",
    train: str = TRAIN_DATA,
    target: str | None = None,
) -> Sweep:
    """``variant`` trained on ``train`` without and with ``source``'s training images and
    captions, unpaired (an embedded name, a precomp ``FOLDER`` or ``FOLDER:SPLIT``), tested on
    ``train`` and on ``target`` (default ``source``; for a folder source, its folder)."""
    flags = ("--unpaired-images", source, "--unpaired-captions", source)
    return Sweep(
        kind="unpaired",
        title=f"Unpaired {source} training data for {variant} (train {train})",
        rows=(
            Row(f"{variant}, pairs only", variant, variant),
            Row(f"{variant} + unpaired {source}", variant, f"{variant}-unpaired", flags),
        ),
        tests=(train, target or source),
        note=(
            f"The second row adds batches of {source}'s training images and captions (drawn "
            "independently: no pairs), which enter only the jWAE terms (reconstructions, prior "
            "matching); no test data is used."
        ),
    )


def shift_sweep(
    strengths: Sequence[float], variants: Sequence[str] = ("vse++", "jwae-mh")
) -> Sweep:
    """``variants`` trained on synthetic-a, tested on style "b" at each shift strength."""
    return Sweep(
        kind="shift",
        title=f"Cross-domain retrieval against the shift strength (train {TRAIN_DATA})",
        rows=tuple(Row(v, v, v) for v in variants),
        tests=(TRAIN_DATA, *(f"synthetic-b@{s:g}" for s in strengths)),
        note=(
            "synthetic-b@S: style b rendered and phrased S of the way from style a (0: like "
            "style a, 1: the default synthetic-b, more: further); the scenes are style b's own."
        ),
    )


def prior_weight_sweep(weights: Sequence[float], variant: str = "jwae-mh") -> Sweep:
    """``variant`` with lambda3 = lambda4 = each of ``weights``; at its default weight the row
    is the default run (the poster job's)."""
    prior, default, _ = default_prior(variant)

    def row(w: float) -> Row:
        label = f"{variant}, lambda3 = lambda4 = {w:g}"
        if w == default:
            return Row(f"{label} (default)", variant, variant)
        return Row(
            label,
            variant,
            f"{variant}-prior{w:g}",
            ("--lambda-img", f"{w:g}", "--lambda-txt", f"{w:g}"),
        )

    return Sweep(
        kind="prior-weight",
        title=f"{variant} at several prior weights (train {TRAIN_DATA})",
        rows=tuple(row(w) for w in weights),
        tests=(TRAIN_DATA, "synthetic-b"),
        note=f"The default prior is {prior} at weight {default:g}.",
    )


def _recall(direction: str, k: int) -> Callable[[dict], float]:
    return lambda r: r[direction][f"r{k}"]


def _agreement(kind: str) -> Callable[[dict], float]:
    return lambda r: 100 * r["continuity"]["class_agreement"][kind]


# Per test split: (column header, value of one evaluation); the continuity columns only where the
# data has labels (the embedded data; not a folder).
COLUMNS: tuple[tuple[str, Callable[[dict], float]], ...] = (
    ("i2t R@1", _recall("i2t", 1)),
    ("t2i R@1", _recall("t2i", 1)),
    ("i2t R@5", _recall("i2t", 5)),
    ("t2i R@5", _recall("t2i", 5)),
    ("rsum", lambda r: r["rsum"]),
    ("shape@10", _agreement("shape")),
    ("colour@10", _agreement("colour")),
)


def _columns(evaluation: dict) -> tuple[tuple[str, Callable[[dict], float]], ...]:
    """The :data:`COLUMNS` an evaluation has (no continuity without labels)."""
    if evaluation.get("continuity") is not None:
        return COLUMNS
    return tuple((h, get) for h, get in COLUMNS if not h.endswith("@10"))


def summarize(sweep: Sweep, evaluations: dict[str, dict[int, dict[str, dict]]]) -> dict:
    """Mean and std over seeds, per row label, test split and column, of ``evaluations``
    (row label -> seed -> test data -> evaluation result)."""
    return {
        row.label: {
            test: {
                header: stats([get(by_seed[s][test]) for s in sorted(by_seed)])
                for header, get in _columns(by_seed[min(by_seed)][test])
            }
            for test in sweep.tests
        }
        for row in sweep.rows
        for by_seed in (evaluations[row.label],)
    }


def markdown(sweep: Sweep, summary: dict, seeds: Sequence[int], command: str) -> str:
    """The sweep's ``results-KIND.md``: one table per test split, rows x :data:`COLUMNS`."""
    spread = "mean ± sample std over seeds" if len(seeds) > 1 else "one seed: no spread"
    lines = [
        f"# {sweep.title}",
        "",
        f"Command: `{command}`  ",
        f"Seeds: {', '.join(map(str, seeds))} ({spread}). Recalls and continuity in %; "
        "continuity: the share of each test image's 10 nearest images whose main object has the "
        "same shape / colour (none on a folder: its images have no labels).",
        "",
        sweep.note,
    ]
    for test in sweep.tests:
        headers = list(summary[sweep.rows[0].label][test])
        lines += ["", f"## Test: {test}", ""]
        lines += ["| run | " + " | ".join(headers) + " |", "|---|" + "---:|" * len(headers)]
        for row in sweep.rows:
            cells = [cell(summary[row.label][test][h]) for h in headers]
            lines.append(f"| {row.label} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
