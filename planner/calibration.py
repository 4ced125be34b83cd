"""Calibration: fit the time model's few named efficiency constants of a GPU type to measured steps, and hand
them to the planner as a value (a Calibration, applied to a Cluster's GPUType). Pure: the profile file is
read and written by launch/calibration.py.

The constants (bounded, documented, the same for every layout; never a per-layout fudge factor):
- matmul_efficiency: achieved share of the dense bf16 peak for large GEMMs (gpu_time.gemm_s).
- hbm_efficiency: achieved share of peak HBM bandwidth for memory-bound kernels and the optimizer.
- host_overhead: host seconds per op (Python, dispatch, launches, DeepSpeed hooks) relative to the host the
  defaults were calibrated on; it sets where small models and micro-batches become host bound.
Memory is not fitted: its allocator allowance matches the H200 calibration to 0.4% (benchmarks/accuracy.py),
so the profile only reports the memory error.

Fit: minimise the mean |log(predicted / measured)| step time over a GPU type's timed points by bounded
coordinate search (golden section on each constant's log in turn). With few points only the first constants
are fitted (one per two points): a single run cannot tell matmul from host speed.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace

from .cluster import Cluster
from .estimate import Training
from .layout import Layout
from .memory import estimate_memory
from .model import ModelSpec
from .timing import estimate_time


@dataclass(frozen=True)
class Parameter:
    name: str       # a GPUType field
    low: float
    high: float
    doc: str


PARAMETERS = (
    Parameter("matmul_efficiency", 0.3, 1.0, "achieved share of the dense peak for large GEMMs"),
    Parameter("host_overhead", 0.25, 4.0, "host seconds per op relative to the calibration host"),
    Parameter("hbm_efficiency", 0.4, 1.0, "achieved share of peak HBM bandwidth for memory-bound kernels"),
)
BY_NAME = {p.name: p for p in PARAMETERS}
POINTS_PER_PARAMETER = 2
PRIOR_WEIGHT = 0.02    # a constant 2x off its prior costs as much as 1% more mean error


@dataclass(frozen=True)
class Measurement:
    """One measured configuration: the planner's inputs and what the run reported."""

    model: ModelSpec
    cluster: Cluster
    layout: Layout
    training: Training
    peak_bytes: int | None = None      # max_memory_allocated on the worst rank
    step_time_s: float | None = None   # steady-state seconds per optimizer step
    source: str = ""                   # where it came from (file:line or run directory)


@dataclass(frozen=True)
class Calibration:
    """Fitted constants per GPU type: ((gpu name, ((constant, value), ...)), ...)."""

    gpus: tuple[tuple[str, tuple[tuple[str, float], ...]], ...] = ()

    def __post_init__(self) -> None:
        for gpu, values in self.gpus:
            for name, value in values:
                p = BY_NAME.get(name)
                if p is None:
                    raise ValueError(f"calibration for {gpu}: unknown constant {name!r}; known: {', '.join(BY_NAME)}")
                if isinstance(value, bool) or not isinstance(value, (int, float)) or not p.low <= value <= p.high:
                    raise ValueError(f"calibration for {gpu}: {name}({value!r}) must be in [{p.low}, {p.high}]")

    @classmethod
    def from_values(cls, values: dict[str, dict[str, float]]) -> "Calibration":
        return cls(tuple((gpu, tuple(sorted((k, float(v)) for k, v in vals.items())))
                         for gpu, vals in sorted(values.items())))

    def values(self) -> dict[str, dict[str, float]]:
        return {gpu: dict(vals) for gpu, vals in self.gpus}

    def apply(self, cluster: Cluster) -> Cluster:
        """The cluster with its GPU type's fitted constants (unchanged when the profile has none for it)."""
        fitted = self.values().get(cluster.gpu.name)
        return replace(cluster, gpu=replace(cluster.gpu, **fitted)) if fitted else cluster


def with_constants(m: Measurement, values: dict[str, float]) -> Cluster:
    return replace(m.cluster, gpu=replace(m.cluster.gpu, **values)) if values else m.cluster


def step_error(m: Measurement, values: dict[str, float] | None = None) -> float:
    """measured / predicted - 1 for one timed point under these constants."""
    t = estimate_time(m.model, with_constants(m, values or {}), m.layout, m.training)
    return m.step_time_s / t.step_s - 1


def peak_error(m: Measurement) -> float:
    return m.peak_bytes / estimate_memory(m.model, m.cluster, m.layout, m.training).peak_bytes - 1


def mape(errors: list[float]) -> float | None:
    return sum(abs(e) for e in errors) / len(errors) if errors else None


def _loss(points: list[Measurement], values: dict[str, float], prior: dict[str, float]) -> float:
    """Mean |log(measured / predicted)|, plus a weak pull towards the prior (the card's own values) so that a
    constant the points cannot tell apart from another stays where it was instead of drifting to a bound."""
    fit = sum(abs(math.log1p(step_error(m, values))) for m in points) / len(points)
    return fit + PRIOR_WEIGHT * sum(math.log(values[n] / prior[n]) ** 2 for n in values)


def _golden(f, lo: float, hi: float, tol: float = 0.004) -> float:
    """Minimum of f on [lo, hi] (f unimodal enough there), by golden-section search."""
    g = (math.sqrt(5) - 1) / 2
    a, b = lo, hi
    c, d = b - g * (b - a), a + g * (b - a)
    fc, fd = f(c), f(d)
    while b - a > tol:
        if fc <= fd:
            b, d, fd = d, c, fc
            c = b - g * (b - a)
            fc = f(c)
        else:
            a, c, fc = c, d, fd
            d = a + g * (b - a)
            fd = f(d)
    return (a + b) / 2


def fit_constants(points: list[Measurement], start: dict[str, float] | None = None, sweeps: int = 3,
                  span: float | None = None) -> dict[str, float]:
    """Fitted constants for points of one GPU type (the first len(points)//2 of PARAMETERS, at least one).

    start: where the search begins (default: the card's catalog values); span: search only within a factor
    `span` of start (leave-one-out refits near the full fit), else the whole bounds."""
    timed = [m for m in points if m.step_time_s]
    if not timed:
        return {}
    gpu = timed[0].cluster.gpu
    names = [p.name for p in PARAMETERS][: max(1, len(timed) // POINTS_PER_PARAMETER)]
    prior = {n: float(getattr(gpu, n)) for n in names}
    values = {n: float((start or {}).get(n, prior[n])) for n in names}
    for _ in range(sweeps):
        before = dict(values)
        for n in names:
            p = BY_NAME[n]
            lo, hi = math.log(p.low), math.log(p.high)
            if span:
                lo, hi = max(lo, math.log(values[n] / span)), min(hi, math.log(values[n] * span))
            best = _golden(lambda x: _loss(timed, {**values, n: math.exp(x)}, prior), lo, hi)
            # keep the old value unless the search found better (golden section can miss on a flat ridge)
            if _loss(timed, {**values, n: math.exp(best)}, prior) < _loss(timed, values, prior):
                values[n] = math.exp(best)
        if all(abs(math.log(values[n] / before[n])) < 0.002 for n in names):
            break
    return {n: round(v, 4) for n, v in values.items()}


def leave_one_out(points: list[Measurement], full: dict[str, float]) -> list[float]:
    """For each timed point: its error under constants fitted without it (refit near the full fit)."""
    timed = [m for m in points if m.step_time_s]
    out = []
    for i, m in enumerate(timed):
        rest = timed[:i] + timed[i + 1:]
        values = fit_constants(rest, start=full, sweeps=2, span=1.5) if rest else {}
        out.append(step_error(m, values))
    return out


@dataclass(frozen=True)
class GpuFit:
    """What calibrating one GPU type did: the constants, and the errors (measured / predicted - 1)."""

    gpu: str
    points: int
    timed: int
    defaults: dict
    fitted: dict
    step_errors_before: tuple[float, ...]
    step_errors_after: tuple[float, ...]
    step_errors_loo: tuple[float, ...]
    peak_errors: tuple[float, ...]

    def to_dict(self) -> dict:
        return {"gpu": self.gpu, "points": self.points, "timed_points": self.timed, "defaults": self.defaults,
                "fitted": self.fitted, "step_mape_before": mape(list(self.step_errors_before)),
                "step_mape_after": mape(list(self.step_errors_after)),
                "step_mape_leave_one_out": mape(list(self.step_errors_loo)),
                "peak_mape": mape(list(self.peak_errors))}


def calibrate(points: list[Measurement], loo: bool = True) -> tuple[Calibration, list[GpuFit]]:
    """Fit every GPU type among the points; the Calibration and what each fit did."""
    by_gpu: dict[str, list[Measurement]] = {}
    for m in points:
        by_gpu.setdefault(m.cluster.gpu.name, []).append(m)
    fits, values = [], {}
    for gpu, group in sorted(by_gpu.items()):
        timed = [m for m in group if m.step_time_s]
        fitted = fit_constants(group)
        defaults = {n: getattr(group[0].cluster.gpu, n) for n in fitted}
        if fitted:
            values[gpu] = fitted
        fits.append(GpuFit(gpu, len(group), len(timed), defaults, fitted,
                           tuple(step_error(m) for m in timed), tuple(step_error(m, fitted) for m in timed),
                           tuple(leave_one_out(group, fitted)) if loo and len(timed) > 1 else (),
                           tuple(peak_error(m) for m in group if m.peak_bytes)))
    return Calibration.from_values(values), fits
