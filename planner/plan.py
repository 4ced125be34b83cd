"""plan(): the top of the planner. Search every layout, rank what fits, explain the winner; when nothing
fits, say what would."""
from __future__ import annotations

from dataclasses import dataclass

from .cluster import Cluster
from .estimate import Estimate, Training
from .model import ModelSpec
from .reasons import explain
from .search import check_constraints, check_fixed, family_key, rank, run_search
from .suggest import NothingFits, nothing_fits

__all__ = ["NothingFits", "Plan", "plan"]


@dataclass(frozen=True)
class Plan:
    """The winner, the best of each other family (zero, tp, pp, checkpointing, offload), and why."""

    best: Estimate
    candidates: tuple[Estimate, ...]   # runners-up, best first; the winner is not repeated here
    evaluated: int                     # layouts whose memory (and, when they fit, time) was estimated
    reasons: tuple[str, ...] = ()

    def to_dict(self) -> dict:
        return {"best": self.best.to_dict(), "candidates": [c.to_dict() for c in self.candidates],
                "evaluated": self.evaluated, "reasons": list(self.reasons)}


def plan(model: ModelSpec, cluster: Cluster, training: Training, headroom: float = 0.1, **constraints) -> Plan:
    """Search every layout, rank what fits, explain the winner. Raises NothingFits (with .suggestion).

    constraints: tp, pp, zero_stage, micro_batch, checkpointing, offload, sequence_parallel, cp, vpp, pp_layers
    fix that choice; max_micro_batch caps micro-batches; top (default 5) is how many runners-up to return;
    prefer (simple | memory | speed) breaks ties within 1% (search.rank).
    """
    c = check_constraints(constraints)
    check_fixed(model, cluster, c, training.engine)
    result = run_search(model, cluster, training, headroom, c)
    if not result.fits:
        raise nothing_fits(model, cluster, result, headroom, c)
    ranked = rank(result.fits, c.get("prefer", "simple"))
    best, seen, runners = ranked[0], {family_key(ranked[0].layout)}, []
    for e in ranked[1:]:
        if family_key(e.layout) not in seen:
            seen.add(family_key(e.layout))
            runners.append(e)
    reasons = explain(best, result, cluster)
    return Plan(best, tuple(runners[: c.get("top", 5)]), result.evaluated, tuple(reasons))
