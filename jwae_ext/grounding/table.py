"""The phrase-localization table of the poster's experiments: R@1, R@5 and the upper bound of
each method, mean and sample standard deviation over seeds."""

from __future__ import annotations

from jwae_ext.seed_stats import cell, stats

__all__ = ["COLUMNS", "grounding_markdown", "summarize_grounding"]

COLUMNS = {"r1": "R@1", "r5": "R@5", "upper_bound": "upper bound"}


def summarize_grounding(results: dict[str, dict[int, dict]]) -> dict[str, dict[str, dict]]:
    """``{method: {seed: test result}}`` -> ``{method: {column: {mean, std, values}}}``, seeds
    in increasing order."""
    return {
        method: {column: stats([by_seed[s][column] for s in sorted(by_seed)]) for column in COLUMNS}
        for method, by_seed in results.items()
    }


def grounding_markdown(summary: dict[str, dict[str, dict]], data: str, phrases: int) -> str:
    """The table in Markdown, with what it measured."""
    lines = [
        f"## Phrase localization (train and test on the embedded grounding set of {data})",
        "",
        f"Test split: {phrases} phrases with a box. R@K: % of phrases whose K best-scored "
        "proposals include one with IoU >= 0.5 with the ground truth; upper bound: % of phrases "
        "that some proposal reaches.",
        "",
        "| method | " + " | ".join(COLUMNS.values()) + " |",
        "|---|" + "---:|" * len(COLUMNS),
    ]
    for method, columns in summary.items():
        cells = [cell(columns[k]) for k in COLUMNS]
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
