"""One layout -> Estimate: check that the layout can run on this model and cluster, then predict its memory
and step time. The search, compare and suggestions all score layouts through here."""
from __future__ import annotations

import dataclasses

from .cluster import Cluster
from .engines import check_engine_layout
from .estimate import Estimate, MemoryBreakdown, Training
from .layout import Layout, divisors
from .cost import estimate_memory
from .model import ModelSpec
from .cost import estimate_time


def usable_bytes(capacity: int, headroom: float) -> float:
    return capacity * (1 - headroom)


def check_layout(model: ModelSpec, cluster: Cluster, layout: Layout, engine: str = "deepspeed",
                 seq_len: int = 0, cp_comm_type: str = "p2p") -> None:
    """Raise ValueError naming the value and the fix when the layout cannot run on this model and cluster
    (what every engine needs here, then the engine's own rules: planner/engines.py)."""
    if layout.world_size != cluster.world_size:
        cp = f"·cp({layout.cp})" if layout.cp > 1 else ""
        raise ValueError(f"dp({layout.dp})·tp({layout.tp})·pp({layout.pp}){cp} = {layout.world_size} must equal the "
                         f"cluster's {cluster.world_size} GPUs ({cluster.spec}); leave --dp out to derive it")
    per_node, domain = cluster.gpus_per_node, cluster.nvlink_domain
    if domain % layout.tp and layout.tp % per_node:
        where = f"the {per_node} GPUs of a node" if domain == per_node else f"the {domain} GPUs of an NVLink domain"
        raise ValueError(f"tp({layout.tp}) must divide {where} or be a multiple of the node's {per_node} "
                         "(a tensor-parallel group fills whole nodes)")
    for name, heads in (("n_heads", model.n_heads), ("n_kv_heads", model.n_kv_heads)):
        if heads % layout.tp:
            raise ValueError(f"tp({layout.tp}) must divide {name}({heads}) of {model.name}; "
                             f"use --tp in {[t for t in divisors(heads) if t <= domain]}")
    check_engine_layout(model, layout, engine, seq_len, cp_comm_type)


def cross_node_tp(cluster: Cluster, layout: Layout) -> bool:
    """A tensor-parallel group that leaves the NVLink domain: every layer's collectives cross the network."""
    return layout.tp > cluster.nvlink_domain


def evaluate(model: ModelSpec, cluster: Cluster, layout: Layout, training: Training,
             headroom: float = 0.1) -> Estimate:
    """Memory and step time of one layout. training.global_batch 0 means the layout's own."""
    check_headroom(headroom)
    check_layout(model, cluster, layout, training.engine, training.seq_len, training.cp_comm_type)
    if training.global_batch == 0:
        training = dataclasses.replace(training, global_batch=layout.global_batch)
    elif training.global_batch != layout.global_batch:
        raise ValueError(
            f"global batch {training.global_batch} != micro_batch({layout.micro_batch})·grad_accum"
            f"({layout.grad_accum})·dp({layout.dp}) = {layout.global_batch}; change --grad-accum or --global-batch")
    return estimate_layout(model, cluster, layout, training, headroom)


def estimate_layout(model, cluster, layout, training, headroom, memory: MemoryBreakdown | None = None) -> Estimate:
    """The Estimate of a layout already checked (memory given when the search has it already)."""
    memory = memory or estimate_memory(model, cluster, layout, training)
    return Estimate(model, cluster, layout, training, memory, estimate_time(model, cluster, layout, training),
                    headroom)


def check_headroom(headroom: float) -> None:
    if not 0 <= headroom < 1:
        raise ValueError(f"headroom({headroom!r}) must be a fraction in [0, 1), e.g. 0.1 for 10%")
