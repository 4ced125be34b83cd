"""Progress of a running job, read from the metrics.jsonl rank 0 appends (one JSON object per step)."""
from __future__ import annotations

import json
import time
from pathlib import Path

from ..rundir import METRICS


class MetricsTail:
    """Reads the lines rank 0 appends to metrics.jsonl since we started looking."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = path.stat().st_size if path.exists() else 0
        self.last: dict | None = None
        self.steps_seen = 0    # step records read since we started looking

    def poll(self) -> list[dict]:
        if not self.path.exists():
            return []
        if self.path.stat().st_size < self.offset:  # rewritten: a fresh run starts the file anew
            self.offset = 0
        with self.path.open() as f:
            f.seek(self.offset)
            chunk = f.read()
        complete = chunk[: chunk.rfind("\n") + 1]
        self.offset += len(complete.encode())
        rows = []
        for line in complete.splitlines():
            try:
                rows.append(json.loads(line))
            except ValueError:
                continue
        steps = [r for r in rows if "step" in r]
        if steps:
            self.last = steps[-1]
            self.steps_seen += len(steps)
        return rows


def progress_line(row: dict) -> str | None:
    if "step" not in row or "loss" not in row:
        return None
    tps = row.get("tokens_per_s")
    return (f"step {row['step']}  loss {row['loss']:.4f}" + (f"  {tps:,.0f} tokens/s" if tps else "")
            + (f"  world {row['world_size']}" if "world_size" in row else ""))


class Progress:
    """Prints a progress line at most every `every` seconds, and the last one when asked."""

    def __init__(self, run_dir: Path, echo, every: float = 2.0) -> None:
        self.tail, self.echo, self.every, self.shown = MetricsTail(run_dir / METRICS), echo, every, 0.0

    def poll(self, force: bool = False) -> None:
        self.tail.poll()
        row = self.tail.last
        if row and (force or time.monotonic() - self.shown >= self.every):
            line = progress_line(row)
            if line:
                self.echo(line)
                self.tail.last = None
                self.shown = time.monotonic()
