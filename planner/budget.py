"""Time to train and what it costs: a token budget over a layout's predicted tokens/s, GPU-hours and price;
and the sweep over node counts that answers "how many GPUs should I rent" (cheapest, fastest, by a deadline).

Token budgets are decimal, as papers count them (300B = 3·10^11; a batch's "4M" stays 4·2^20, see
launch/inputs.parse_tokens). The cost is GPU-hours × price per GPU-hour: the steady step time only
(no start-up, checkpoints, evaluation or failures), so it is a floor, not a quote.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, replace

from .cluster import Cluster
from .estimate import Estimate, Training
from .model import ModelSpec
from .plan import Plan, plan
from .search import check_constraints

DECIMAL = {"": 1, "K": 10**3, "M": 10**6, "B": 10**9, "G": 10**9, "T": 10**12}
SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
OBJECTIVES = ("throughput", "time", "cost")


def parse_amount(text, what: str = "--tokens") -> int:
    """'300B' -> 300·10^9 (K, M, B/G, T decimal); plain numbers too."""
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:[eE][0-9]+)?)\s*([KMBGT]?)\s*", str(text).upper())
    if not match or float(match.group(1)) <= 0:
        raise ValueError(f"{what}({text!r}) must be a positive number with an optional K, M, B or T, e.g. 300B")
    return int(float(match.group(1)) * DECIMAL[match.group(2)])


def parse_duration(text, what: str = "--deadline") -> float:
    """'30d' -> seconds (s, m, h, d, w; a bare number is days)."""
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([smhdw]?)\s*", str(text).lower())
    if not match or float(match.group(1)) <= 0:
        raise ValueError(f"{what}({text!r}) must be a positive duration such as 30d, 36h or 2w")
    return float(match.group(1)) * SECONDS[match.group(2) or "d"]


def parse_nodes(text, what: str = "--nodes") -> list[int]:
    """'1-64' (every count in the range), '1,2,4,8' or '16' -> sorted node counts."""
    out: set[int] = set()
    for part in str(text).split(","):
        m = re.fullmatch(r"\s*(\d+)\s*(?:-\s*(\d+)\s*)?", part)
        lo, hi = (int(m.group(1)), int(m.group(2) or m.group(1))) if m else (0, 0)
        if not m or lo < 1 or hi < lo:
            raise ValueError(f"{what}({text!r}) must be node counts such as 1-64 or 1,2,4,8 (at least 1, low-high)")
        out.update(range(lo, hi + 1))
    if len(out) > 512:
        raise ValueError(f"{what}({text!r}) spans {len(out)} node counts; sweep at most 512 (e.g. 1,2,4,...,512)")
    return sorted(out)


def check_price(price) -> None:
    if price is not None and (isinstance(price, bool) or not isinstance(price, (int, float)) or price < 0):
        raise ValueError(f"--price({price!r}) must be a non-negative price per GPU-hour, e.g. 2.49")


def time_to_train(e: Estimate, tokens: int, price: float | None = None) -> dict:
    """{"time_to_train_s", "gpu_hours", "cost"} of `tokens` at the estimate's tokens/s (cost null without price)."""
    check_price(price)
    seconds = tokens / e.tokens_per_s
    gpu_hours = seconds * e.layout.world_size / 3600
    return {"time_to_train_s": seconds, "gpu_hours": gpu_hours,
            "cost": gpu_hours * price if price is not None else None}


@dataclass(frozen=True)
class SweepEntry:
    nodes: int
    gpus: int
    plan: Plan
    budget: dict        # time_to_train(plan.best, ...) or {} without a token budget

    def to_dict(self) -> dict:
        return {"nodes": self.nodes, "gpus": self.gpus, "best": self.plan.best.to_dict(),
                **({"time_to_train_s": None, "gpu_hours": None, "cost": None} | self.budget)}


def sweep(model: ModelSpec, cluster: Cluster, training: Training, nodes: list[int], tokens: int | None = None,
          price: float | None = None, headroom: float = 0.1, **constraints) -> list[SweepEntry]:
    """The best plan on each node count of the cluster's card (node counts where something fits)."""
    check_constraints(constraints)      # a bad constraint is an error, not "nothing fits anywhere"
    out = []
    for n in nodes:
        at = replace(cluster, nodes=n, hosts=())
        try:
            p = plan(model, at, training, headroom=headroom, **constraints)
        except ValueError:          # nothing fits, or the batch does not divide over this many GPUs
            continue
        out.append(SweepEntry(n, at.world_size, p, time_to_train(p.best, tokens, price) if tokens else {}))
    return out


def cheapest(entries: list[SweepEntry]) -> SweepEntry | None:
    """Fewest GPU-hours (the same order as cost at one price); ties go to fewer GPUs."""
    timed = [e for e in entries if e.budget]
    return min(timed, key=lambda e: (round(e.budget["gpu_hours"], 6), e.gpus)) if timed else None


def fastest(entries: list[SweepEntry]) -> SweepEntry | None:
    """Most tokens/s (the shortest time to train); ties go to fewer GPUs."""
    return max(entries, key=lambda e: (e.plan.best.tokens_per_s, -e.gpus)) if entries else None


def choose(entries: list[SweepEntry], objective: str, deadline_s: float | None = None) -> SweepEntry:
    """The entry the objective picks among those finishing by the deadline; ValueError naming the fix."""
    if objective not in OBJECTIVES:
        raise ValueError(f"--objective({objective!r}) must be one of {', '.join(OBJECTIVES)}")
    if not entries:
        raise ValueError("nothing fits on any node count of the sweep; widen --nodes or use a larger card")
    pool = entries
    if deadline_s is not None:
        pool = [e for e in entries if e.budget and e.budget["time_to_train_s"] <= deadline_s]
        if not pool:
            best = fastest(entries)
            raise ValueError(f"no node count finishes by the deadline ({deadline_s / 86400:.1f} days): the fastest, "
                             f"{best.nodes} nodes, takes {best.budget['time_to_train_s'] / 86400:.1f} days; "
                             "allow more time or widen --nodes")
    if objective == "cost":
        return cheapest(pool)
    return fastest(pool)
