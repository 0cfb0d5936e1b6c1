"""Mean and spread over seeds, and their table cell: what every experiment table reports."""

from __future__ import annotations

import statistics

__all__ = ["cell", "stats"]


def stats(values: list[float]) -> dict:
    """``{"mean", "std", "values"}`` of one column's per-seed ``values`` (sample std; 0 for one
    seed)."""
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return {"mean": statistics.fmean(values), "std": std, "values": values}


def cell(column: dict) -> str:
    """``mean ± std`` of a :func:`stats` result, one decimal; the mean alone for one value."""
    if len(column["values"]) < 2:
        return f"{column['mean']:.1f}"
    return f"{column['mean']:.1f} ± {column['std']:.1f}"
