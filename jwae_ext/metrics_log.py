"""A run's ``metrics.jsonl``: one JSON object per epoch, written and read here only."""

from __future__ import annotations

import json
from pathlib import Path

from jwae_ext.checkpoint import CheckpointError, write_text_atomic

__all__ = ["log_epoch", "read_metrics"]


def read_metrics(path: str | Path) -> list[dict]:
    """The per-epoch records of a run's ``metrics.jsonl``, one per epoch in epoch order (the last
    written wins). A line that is not a record raises ValueError naming it: the file is written
    atomically, so a damaged line is damage from outside, never a run killed mid-write."""
    records: dict[int, dict] = {}
    for number, line in enumerate(Path(path).read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            records[int(record["epoch"])] = record
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as err:
            raise ValueError(
                f"jwae_ext: {path}, line {number}: not a metrics record ({err})"
            ) from None
    if not records:
        raise ValueError(f"jwae_ext: {path} holds no epoch records")
    return [records[e] for e in sorted(records)]


def log_epoch(path: str | Path, record: dict) -> None:
    """Add ``record`` (with its ``"epoch"``) to the log at ``path``, atomically, replacing any
    record of this epoch or later: those were written by a run that died before its checkpoint,
    and the resumed run repeats those epochs."""
    path = Path(path)
    try:
        earlier = read_metrics(path) if path.exists() else []
    except ValueError as err:
        raise CheckpointError(f"cannot add epoch {record['epoch']} to {path}: {err}") from err
    kept = [r for r in earlier if r["epoch"] < record["epoch"]]
    write_text_atomic(path, "".join(f"{json.dumps(r)}\n" for r in [*kept, record]))
