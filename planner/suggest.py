"""When nothing fits: say what would — offload, more of these GPUs, or a card with more memory."""
from __future__ import annotations

import dataclasses

from .cluster import CATALOG, GB, Cluster
from .estimate import Training
from .evaluate import usable_bytes

from .cost import estimate_memory
from .model import ModelSpec
from .reasons import CKPT, OFFLOAD
from .search import SearchResult, families


class NothingFits(ValueError):
    """No layout fits; `.suggestion` says what would (more GPUs, offload, a larger card)."""

    def __init__(self, message: str, suggestion: str = "") -> None:
        super().__init__(f"{message}; {suggestion}" if suggestion else message)
        self.suggestion = suggestion


MAX_NODES = 1 << 12    # 32768 GPUs of 8 per node: beyond that the answer is a smaller job, not more GPUs


def leanest(model: ModelSpec, cluster: Cluster, training: Training, offload: bool, c: dict | None = None):
    """(peak bytes, layout) of the layout needing the least memory at micro-batch 1, global batch aside.

    grad_accum = pp keeps the pipeline full (its first stage holds pp micro-batches): the conservative case.
    """
    best = None
    for fam in families(model, cluster, c or {"checkpointing": None}, offload, training):
        layout = fam.layout(1, fam.pp)
        peak = estimate_memory(model, cluster, layout, training).peak_bytes
        if best is None or peak < best[0]:
            best = (peak, layout)
    return best


def _fits(model, cluster, training, headroom, offload=False) -> bool:
    found = leanest(model, cluster, training, offload)
    return found is not None and found[0] <= usable_bytes(cluster.gpu.memory_bytes, headroom)


def _resize(cluster: Cluster, nodes: int, per_node: int) -> Cluster:
    return dataclasses.replace(cluster, nodes=nodes, gpus_per_node=per_node, hosts=())


def _shapes(cluster: Cluster):
    """Bigger versions of this cluster, smallest first: fill one node up to 8 GPUs, then add nodes."""
    per_node = cluster.gpus_per_node
    if cluster.nodes == 1:
        while per_node < 8:
            per_node *= 2
            yield 1, per_node
    nodes = cluster.nodes if cluster.gpus_per_node == per_node else 1
    while nodes < MAX_NODES:
        nodes *= 2
        yield nodes, per_node


def smallest_cluster(model: ModelSpec, cluster: Cluster, training: Training, headroom: float) -> Cluster | None:
    """The fewest of these GPUs that fit: double until it fits, then bisect the node count."""
    prev = (cluster.nodes, cluster.gpus_per_node)      # the last shape that did not fit
    for nodes, per_node in _shapes(cluster):
        if _fits(model, _resize(cluster, nodes, per_node), training, headroom):
            if prev[1] == per_node:
                lo, hi = prev[0], nodes                 # lo does not fit, hi does
                while hi - lo > 1:
                    mid = (lo + hi) // 2
                    if _fits(model, _resize(cluster, mid, per_node), training, headroom):
                        hi = mid
                    else:
                        lo = mid
                nodes = hi
            return _resize(cluster, nodes, per_node)
        prev = (nodes, per_node)
    return None


def larger_card(model: ModelSpec, cluster: Cluster, training: Training, headroom: float) -> Cluster | None:
    """The catalog card with the least memory above this one's that fits this shape; else the fewest of the
    largest card that fit."""
    cards = sorted((g for g in CATALOG.values() if g.memory_bytes > cluster.gpu.memory_bytes),
                   key=lambda g: (g.memory_bytes, -g.bf16_tflops))
    for gpu in cards:
        bigger = dataclasses.replace(cluster, gpu=gpu)
        if _fits(model, bigger, training, headroom):
            return bigger
    return smallest_cluster(model, dataclasses.replace(cluster, gpu=cards[-1]), training, headroom) if cards else None


def nothing_fits(model: ModelSpec, cluster: Cluster, result: SearchResult, headroom: float, c: dict) -> NothingFits:
    training = result.training
    usable = result.usable
    if not result.misses:
        dps = sorted({fam.dp for fam in families(model, cluster, c, False, training)})
        fixed = f" and micro-batch {c['micro_batch']}" if c.get("micro_batch") else ""
        return NothingFits(
            f"global batch {training.global_batch} is not a multiple of any data-parallel degree{fixed} "
            f"this cluster allows (dp in {', '.join(map(str, dps[:6]))})",
            f"use a multiple of {dps[0]}, e.g. --global-batch {dps[0] * -(-training.global_batch // dps[0])}"
            if dps else "relax --tp/--pp")
    peak, layout = min(((m.peak_bytes, l) for l, m in result.misses), key=lambda x: x[0])
    message = (f"{model.name} does not fit on {cluster.spec} with {headroom:.0%} headroom: the leanest layout "
               f"(ZeRO-{int(layout.zero_stage)}, tp={layout.tp}, pp={layout.pp}, {CKPT[layout.checkpointing]}, "
               f"{OFFLOAD[layout.offload]}, micro-batch {layout.micro_batch}) needs "
               f"{peak / GB:.1f} GB per GPU > {usable / GB:.1f} GB usable")
    ideas = []
    if c.get("offload") == "none" and _fits(model, cluster, training, headroom, offload=True):
        ideas.append("CPU offload makes it fit: drop --offload none (or use --offload optimizer)")
    fixed = c.keys() - {"top", "max_micro_batch", "prefer"}
    if fixed - {"offload"}:
        ideas.append("relax the fixed choices (" + ", ".join(sorted(fixed)) + ")")
    more = smallest_cluster(model, cluster, training, headroom)
    if more:
        ideas.append(f"{more.world_size} of these GPUs fit (--cluster {more.spec})")
    bigger = larger_card(model, cluster, training, headroom)
    if bigger:
        ideas.append(f"a card with more memory fits (--cluster {bigger.spec})")
    if not ideas:
        ideas.append(f"no count of these or larger cards holds one micro-batch of {training.seq_len} tokens: "
                     "shorten --seq, or use a smaller model")
    return NothingFits(message, "; or ".join(ideas))
