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


def grounding_markdown(
    summary: dict[str, dict[str, dict]],
    source: str,
    phrases: int,
    published: tuple[str, dict[str, dict[str, float]]] | None = None,
) -> str:
    """The table in Markdown, with what it measured (``source``: the data trained and tested
    on, in words). ``published``: :func:`jwae_ext.published.published_columns`'s setting and
    numbers, printed as *poster* columns beside the measured ones."""
    setting, numbers = published or ("", {})
    extra = [k for k, h in COLUMNS.items() if any(h in n for n in numbers.values())]
    headers = [*COLUMNS.values(), *(f"poster {COLUMNS[k]}" for k in extra)]
    lines = [
        f"## Phrase localization (train and test on {source})",
        "",
        f"Test split: {phrases} phrases with a box. R@K: % of phrases whose K best-scored "
        "proposals include one with IoU >= 0.5 with the ground truth; upper bound: % of phrases "
        "that some proposal reaches.",
    ]
    if numbers:
        lines += ["", f"*poster*: the poster's published numbers ({setting}), not measured here."]
    lines += ["", "| method | " + " | ".join(headers) + " |", "|---|" + "---:|" * len(headers)]
    for method, columns in summary.items():
        cells = [cell(columns[k]) for k in COLUMNS]
        cells += [f"{numbers[method][COLUMNS[k]]:.1f}" if method in numbers else "—" for k in extra]
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
