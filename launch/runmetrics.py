"""metrics.jsonl read back: the step records, the events (resume, summary), and the steady-state numbers
(median over the steps after warm-up) that `report` and `calibrate` compare with the plan."""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from .rundir import METRICS

WARMUP_FRACTION = 0.1   # the first tenth of the steps (at least one) is warm-up: allocations, autotuning, caches


@dataclass(frozen=True)
class RunMetrics:
    steps: tuple[dict, ...]        # one record per optimizer step, in file order
    events: tuple[dict, ...]       # {"event": "resume" | "summary", ...}
    torn: bool = False             # the last line was cut off (a run killed mid-write, or still writing)

    @property
    def summary(self) -> dict | None:
        return next((e for e in reversed(self.events) if e.get("event") == "summary"), None)

    def warmup(self) -> set[int]:
        """Indexes of warm-up steps: the first WARMUP_FRACTION of the steps, and the first step after a resume."""
        n = len(self.steps)
        out = set(range(min(n - 1, max(1, round(n * WARMUP_FRACTION))))) if n > 1 else set()
        resumed = {e.get("from_step") for e in self.events if e.get("event") == "resume"}
        out |= {i for i, r in enumerate(self.steps) if r.get("step", 0) - 1 in resumed and i < n - 1}
        return out

    def steady(self) -> list[dict]:
        skip = self.warmup()
        return [r for i, r in enumerate(self.steps) if i not in skip]


def median(values: list[float]) -> float | None:
    xs = sorted(v for v in values if v is not None)
    if not xs:
        return None
    mid = len(xs) // 2
    return xs[mid] if len(xs) % 2 else (xs[mid - 1] + xs[mid]) / 2


def read_metrics(run_dir: str | os.PathLike) -> RunMetrics:
    """RUN_DIR/metrics.jsonl (empty when the run has not written a step yet)."""
    path = Path(run_dir) / METRICS
    if not path.is_file():
        return RunMetrics((), ())
    steps, events, torn = [], [], False
    lines = path.read_text(errors="replace").splitlines()
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError:
            torn = torn or i == len(lines) - 1
            continue
        if isinstance(row, dict) and "step" in row:
            steps.append(row)
        elif isinstance(row, dict) and "event" in row:
            events.append(row)
    return RunMetrics(tuple(steps), tuple(events), torn)


def steady_step_time(run_dir) -> tuple[float | None, int, int]:
    """(median step seconds over the steady steps, steady steps, warm-up steps excluded)."""
    m = read_metrics(run_dir)
    steady = m.steady()
    return median([r.get("step_time_s") for r in steady]), len(steady), len(m.steps) - len(steady)
