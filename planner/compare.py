"""The parallelization methods side by side: each at its best micro-batch and checkpointing.

Methods: data parallel (ZeRO-0, DDP-like), ZeRO-1/2/3 (data parallel, sharded), tensor parallel
(tp as large as a node and the heads allow, dp over the rest), pipeline parallel (pp as large as the
world and the layers allow, dp over the rest), hybrid (the best layout using at least two of dp, tp, pp).
A method that cannot exist here (tp or pp of 1, e.g. on one GPU) is left out. When no method fits in GPU
memory, "ZeRO-3 + offload" is added: what DeepSpeed's ZeRO-Offload/Infinity buys. Last, the best layout of
each engine side by side ("best on DeepSpeed", "best on Megatron-core"): the same model, cluster and batch
under the other engine's rules, memory and time. MoE models add "expert parallel" (the best layout with ep > 1,
before the engine rows); the dense methods keep ep = 1, so the row shows what splitting the experts buys.
"""
from __future__ import annotations

import dataclasses

from .cluster import Cluster
from .engines import ENGINES
from .estimate import Estimate, Training
from .model import ModelSpec
from .evaluate import check_headroom, estimate_layout
from .layout import divisors
from .search import rank, resolve_training, search


def method_filters(model: ModelSpec, cluster: Cluster) -> dict:
    """Method name -> predicate on a Layout (offload aside)."""
    world, per_node = cluster.world_size, cluster.gpus_per_node
    max_tp = max(t for t in divisors(per_node) if model.splits_heads(t))
    max_pp = max(p for p in divisors(model.n_layers) if world % p == 0)

    def plain(zero):
        return lambda l: l.tp == 1 and l.pp == 1 and l.zero_stage == zero
    filters = {"data parallel": plain(0), "ZeRO-1": plain(1), "ZeRO-2": plain(2), "ZeRO-3": plain(3)}
    if max_tp > 1:
        filters["tensor parallel"] = lambda l: l.tp == max_tp and l.pp == 1 and l.zero_stage == 0
    if max_pp > 1:
        filters["pipeline parallel"] = lambda l: l.tp == 1 and l.pp == max_pp and l.zero_stage == 0
    if world > 1 and (max_tp > 1 or max_pp > 1):
        filters["hybrid"] = lambda l: sum(d > 1 for d in (l.dp, l.tp, l.pp)) >= 2
    if model.is_moe:
        filters = {name: (lambda l, keep=keep: l.ep == 1 and keep(l)) for name, keep in filters.items()}
        if world > 1:
            filters["expert parallel"] = lambda l: l.ep > 1
    return filters


def compare(model: ModelSpec, cluster: Cluster, training: Training, headroom: float = 0.1
            ) -> list[tuple[str, Estimate]]:
    """(method, its best Estimate) for each method; a method where nothing fits gets its leanest layout."""
    check_headroom(headroom)
    training = resolve_training(model, cluster, training)
    result = search(model, cluster, training, headroom, {}, offload=False)
    rows = []
    for name, keep in method_filters(model, cluster).items():
        fits = [e for e in result.fits if keep(e.layout)]
        if fits:
            rows.append((name, rank(fits)[0]))
            continue
        misses = [(m.peak_bytes, i) for i, (l, m) in enumerate(result.misses) if keep(l)]
        if misses:
            layout, memory = result.misses[min(misses)[1]]
            rows.append((name, estimate_layout(model, cluster, layout, training, headroom, memory)))
    if not any(e.fits for _, e in rows):
        offloaded = search(model, cluster, training, headroom, {"zero_stage": 3, "tp": 1, "pp": 1}, offload=True)
        if offloaded.fits:
            rows.append(("ZeRO-3 + offload", rank(offloaded.fits)[0]))
        elif offloaded.misses:
            layout, memory = min(offloaded.misses, key=lambda x: x[1].peak_bytes)
            rows.append(("ZeRO-3 + offload", estimate_layout(model, cluster, layout, training, headroom, memory)))
    rows += best_per_engine(model, cluster, training, headroom)
    return rows


ENGINE_LABEL = {"deepspeed": "best on DeepSpeed", "megatron": "best on Megatron-core"}


def best_per_engine(model: ModelSpec, cluster: Cluster, training: Training, headroom: float
                    ) -> list[tuple[str, Estimate]]:
    """The winner of each engine's own search (what `plan --engine E` picks), where one fits."""
    rows = []
    for engine in ENGINES:
        result = search(model, cluster, dataclasses.replace(training, engine=engine), headroom, {}, offload=False)
        if result.fits:
            rows.append((ENGINE_LABEL[engine], rank(result.fits)[0]))
    return rows
