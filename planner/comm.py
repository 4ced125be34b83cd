"""Communication volume and time per step: data-parallel gradients/weights, tensor-parallel activations,
pipeline point-to-point. nccl-tests conventions (Jeaugey, "NCCL tests: PERFORMANCE.md"): a ring
all-reduce moves 2(n-1)/n·S bytes per GPU over the bus, reduce-scatter and all-gather (n-1)/n·S.
Tensor-parallel collectives also pay NCCL's ring latency, one hop per ring step (ring_latency_s): a 32-rank
group waits on 31 hops per all-gather, a 2-rank group on one.
"""
from __future__ import annotations

from dataclasses import dataclass

from .cluster import Cluster
from .layout import Layout
from .model import ModelSpec

COLLECTIVE_LATENCY_S = 15e-6      # per collective call inside a node (NCCL ring, small messages)
INTER_NODE_LATENCY_S = 30e-6
# NCCL's own cost model of a ring collective (src/graph/tuning.cc, ncclTopoTuneModel, Ring / Simple protocol): a
# base latency plus one hop latency per ring step, an NVLink hop inside an NVLink domain, a network hop between
# domains. Read off NCCL's tables, not fitted.
NCCL_RING_BASE_S, NCCL_NVLINK_HOP_S, NCCL_NET_HOP_S = 8.4e-6, 3.4e-6, 9.6e-6


@dataclass(frozen=True)
class Comm:
    dp_bytes: int       # bytes each GPU sends for data parallelism per step
    dp_s: float         # their time if nothing overlapped
    dp_overlappable_s: float  # the part DeepSpeed can hide behind backward / forward compute
    tp_bytes: int
    tp_s: float
    pp_bytes: int
    pp_s: float


def group_bandwidth(cluster: Cluster, size: int, stride: int) -> tuple[float, float]:
    """(bus bytes/s, latency) of a group of `size` ranks `stride` apart (ranks fill a node first).

    A group inside one NVLink domain uses NVLink: the node on an HGX board, 72 GPUs over 18 trays on GB200/GB300
    NVL72 (Cluster.nvlink_domain); one that spans domains is limited by the per-GPU network. Groups are
    aligned (every span of size·stride ranks that divides the domain stays in it).
    """
    if size <= 1:
        return float("inf"), 0.0
    span, domain = size * stride, cluster.nvlink_domain
    inside = span <= domain and (domain == cluster.gpus_per_node or domain % span == 0)
    if inside:
        return cluster.gpu.nvlink_gbps * 1e9, COLLECTIVE_LATENCY_S
    # A group spanning domains with k of its ranks in each domain: NCCL's rings (one channel per NIC) cross
    # the network once per k hops, so each rank's share of the cross-domain traffic is 1/k of its ring
    # traffic, carried by k NICs: the bus bandwidth is k times one GPU's network share, up to NVLink's.
    k = _ranks_per_domain(cluster, size, stride)
    return min(cluster.gpu.nvlink_gbps, k * cluster.inter_node_gbps) * 1e9, INTER_NODE_LATENCY_S


def _ranks_per_domain(cluster: Cluster, size: int, stride: int) -> int:
    """How many of a group's `size` ranks, `stride` apart, share one NVLink domain (ranks fill a domain first)."""
    domain = cluster.nvlink_domain
    return max(1, min(size, domain // stride)) if stride < domain else 1


def ring_latency_s(cluster: Cluster, size: int, stride: int, passes: int) -> float:
    """NCCL's latency of one ring collective over `size` ranks `stride` apart: passes 1 for an all-gather or a
    reduce-scatter (size-1 ring steps), 2 for an all-reduce (2·(size-1)); nodes-1 of every size-1 steps cross
    the network (NCCL's nInterSteps), the rest are NVLink hops."""
    if size <= 1:
        return 0.0
    domains = -(-size // _ranks_per_domain(cluster, size, stride))
    steps, inter = passes * (size - 1), passes * (domains - 1)
    return NCCL_RING_BASE_S + (steps - inter) * NCCL_NVLINK_HOP_S + inter * NCCL_NET_HOP_S


def step_comm(model: ModelSpec, cluster: Cluster, layout: Layout, stage_params: int, seq: int,
              act_bytes: int, bucket: int) -> Comm:
    """DeepSpeed's collectives per step. seq: the tokens of a sequence on this rank (seq/cp under Ulysses).
    Gradients are reduced (and ZeRO-3 weights gathered) over the sequence-data-parallel group, dp·cp ranks:
    with cp > 1 even dp 1 reduces over the cp ranks (engine.py seq_data_parallel_group)."""
    dp, tp, pp, m = layout.dp_cp, layout.tp, layout.pp, layout.grad_accum
    z = int(layout.zero_stage)
    grad_bytes = act_bytes * stage_params          # gradients travel in the model dtype (communication_data_type)
    # ---- data parallel (ranks tp apart: DeepSpeed's topology puts model/tensor parallel fastest)
    bw, lat = group_bandwidth(cluster, dp, tp)
    frac = (dp - 1) / dp if dp > 1 else 0.0
    n_buckets = max(1, -(-stage_params // max(bucket, 1)))
    if z <= 1:      # one all-reduce (ZeRO-1: reduce-scatter + all-gather of weights) at the boundary
        vol = 2 * frac * grad_bytes
        calls = 2 * n_buckets
        overlappable = 0.0 if z == 0 else 0.5          # ZeRO-1 reduces at the boundary, gathers after the step
    elif z == 2:    # reduce-scatter every micro-batch (hooks), all-gather after the step
        vol = frac * grad_bytes * (m + 1)
        calls = n_buckets * (m + 1)
        overlappable = m / (m + 1)
    else:           # ZeRO-3: gather weights for forward and backward, reduce-scatter grads, every micro-batch
        vol = 3 * frac * grad_bytes * m
        calls = 3 * n_buckets * m
        overlappable = 1.0
    dp_s = (vol / bw + calls * lat) if dp > 1 else 0.0
    # ---- tensor parallel: 4 all-reduces of b·s·h activations per layer per micro-batch (2 fwd, 2 bwd); with
    # sequence parallelism each is an all-gather + a reduce-scatter (two ring collectives, the same bytes)
    layers = -(-model.n_layers // pp)
    tp_bw, _ = group_bandwidth(cluster, tp, 1)
    sp = layout.sequence_parallel
    tp_lat = 2 * ring_latency_s(cluster, tp, 1, 1) if sp else ring_latency_s(cluster, tp, 1, 2)
    act = layout.micro_batch * seq * model.hidden * act_bytes
    tp_calls = 4 * layers * m * (1.5 if layout.checkpointing == "full" else 1)   # recompute repeats the forward's
    tp_vol = 2 * (tp - 1) / tp * act * tp_calls if tp > 1 else 0
    tp_s = (tp_vol / tp_bw + tp_calls * tp_lat) if tp > 1 else 0.0
    # ---- pipeline: each micro-batch's activation forward and its gradient backward across each boundary
    pp_bw, pp_lat = group_bandwidth(cluster, pp, dp * tp)
    pp_vol = 2 * act * m if pp > 1 else 0
    pp_s = (pp_vol / pp_bw + 2 * m * pp_lat) if pp > 1 else 0.0
    return Comm(int(vol) if dp > 1 else 0, dp_s, dp_s * overlappable, int(tp_vol), tp_s, int(pp_vol), pp_s)


def all_to_all_s(cluster: Cluster, ranks: int, stride: int, nbytes: float) -> float:
    """One all-to-all over `ranks` ranks `stride` apart (MoE's ep group, a cp group), each rank holding `nbytes`:
    (ranks-1)/ranks of it leaves the rank; the peers inside the node are reached over NVLink, the others over
    the network, both at once."""
    if ranks <= 1:
        return 0.0
    per_node = max(1, min(ranks, cluster.gpus_per_node // max(stride, 1)))
    inside = nbytes * (per_node - 1) / ranks
    outside = nbytes * (ranks - per_node) / ranks
    nv, lat = group_bandwidth(cluster, per_node, stride)
    net = cluster.inter_node_gbps * 1e9
    return max(inside / nv if per_node > 1 else 0.0, outside / net if outside else 0.0) + lat * (2 if outside else 1)
