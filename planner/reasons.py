"""Why the winner won: one line per decision, against the closest alternative that decided otherwise."""
from __future__ import annotations

import dataclasses

from .cluster import GB, Cluster
from .estimate import Estimate
from .layout import Layout
from .cost import estimate_memory
from .engines import megatron_sharding
from .search import TIE, SearchResult

DECISIONS = ("zero_stage", "tp", "pp", "checkpointing", "offload", "cp", "vpp", "ep", "etp")   # one "X over Y" line each
DIMS = DECISIONS + ("micro_batch",)
CKPT = {"none": "no activation checkpointing", "full": "full activation checkpointing",
        "selective": "selective activation checkpointing"}
OFFLOAD = {"none": "no CPU offload", "optimizer": "optimizer offload to CPU",
           "optimizer+params": "optimizer and parameter offload to CPU"}


def secs(x: float) -> str:
    """Three significant digits without switching to exponents: 0.341, 10.1, 8530."""
    return f"{x:.3f}" if x < 1 else f"{x:.2f}" if x < 10 else f"{x:.1f}" if x < 100 else f"{x:,.0f}"


def value(layout: Layout, dim: str):
    v = getattr(layout, dim)
    return int(v) if dim == "zero_stage" else v


def label(layout: Layout, dim: str) -> str:
    v = value(layout, dim)
    return {"zero_stage": f"ZeRO-{v}", "tp": f"tp={v}", "pp": f"pp={v}", "micro_batch": f"micro-batch {v}",
            "checkpointing": CKPT.get(v, v), "offload": OFFLOAD.get(v, v), "cp": f"cp={v}",
            "vpp": f"vpp={v}", "ep": f"ep={v}", "etp": f"etp={v}"}[dim]


class Option:
    """A layout the search looked at: an Estimate when it fits, only its memory when it does not."""

    __slots__ = ("layout", "peak", "estimate")

    def __init__(self, layout: Layout, peak: int, estimate: Estimate | None) -> None:
        self.layout, self.peak, self.estimate = layout, peak, estimate


def _closest(best: Layout, options: list[Option], dim: str) -> Option | None:
    """Differs in dim; agrees on most other decisions; fits before not; then faster, or leaner when none fits."""
    others = [d for d in DIMS if d not in (dim, "micro_batch")]
    alts = [o for o in options if value(o.layout, dim) != value(best, dim)]
    if dim == "micro_batch":
        alts = [o for o in alts if all(value(o.layout, d) == value(best, d) for d in others)]
    if not alts:
        return None
    return min(alts, key=lambda o: (sum(value(o.layout, d) != value(best, d) for d in others),
                                    o.estimate is None,
                                    -o.estimate.tokens_per_s if o.estimate else o.peak))


def _pct(x: float) -> str:
    return f"{x * 100:+.1f}%" if abs(x) < 0.095 else f"{x * 100:+.0f}%"


def versus(best: Estimate, alt: Option, alt_label: str, usable: float) -> str:
    """How the winner compares with one alternative, in numbers."""
    if alt.estimate is None:
        return f"{alt_label} needs {alt.peak / GB:.1f} GB per GPU, over the {usable / GB:.1f} GB usable"
    other = alt.estimate
    faster = best.tokens_per_s / other.tokens_per_s - 1
    less = (other.memory.peak_bytes - best.memory.peak_bytes) / GB
    if faster > TIE:
        text = f"{faster:.0%} faster than {alt_label}" if faster >= 0.095 else f"{faster:.1%} faster than {alt_label}"
        text += f" ({secs(best.step_time_s)} s vs {secs(other.step_time_s)} s per step)"
        if less > 0.05:
            text += f" and {less:.1f} GB less per GPU"
        elif less < -0.05:
            text += f", using {-less:.1f} GB more per GPU"
        return text
    slower = best.step_time_s / other.step_time_s - 1
    if less > 0.05:
        timing = ("at the same step time" if abs(slower) < 0.0005 else f"for {_pct(slower)} step time" if slower > 0
                  else f"and {-slower:.1%} faster")
        return f"{less:.1f} GB less per GPU than {alt_label} {timing}"
    return f"as fast as {alt_label} (within {TIE:.0%}) and no more memory"


def _extra(dim: str, best: Estimate, alt: Option | None, cluster: Cluster) -> str:
    layout = best.layout
    if dim == "zero_stage" and best.training.engine == "megatron" and layout.dp_cp > 1:
        return (f"on Megatron-core ZeRO-{int(layout.zero_stage)} is {megatron_sharding(layout.zero_stage)} (ZeRO-1 the "
                "distributed optimizer, ZeRO-2/3 Megatron-FSDP optim_grads/optim_grads_params)")
    if dim == "zero_stage" and layout.dp == 1:
        return "with one data-parallel rank ZeRO has nothing to shard: the stages differ only in DeepSpeed's buffers"
    if dim == "tp" and layout.tp > 1:
        where = "stays inside a node" if cluster.nodes > 1 else "runs inside the node"
        return (f"tp={layout.tp} {where}: NVLink {cluster.gpu.nvlink_gbps:.0f} GB/s vs "
                f"{cluster.inter_node_gbps:.0f} GB/s between nodes")
    if dim == "tp":
        return "no tensor-parallel all-reduces (4 per layer per micro-batch)"
    if dim == "pp" and layout.pp > 1:
        return (f"bubble (pp-1)/m = {layout.pp - 1}/{layout.grad_accum} = "
                f"{(layout.pp - 1) / layout.grad_accum:.1%} of the compute")
    if dim == "pp":
        return "no pipeline bubble"
    if dim == "checkpointing" and layout.checkpointing == "none":
        extra = "fits without it"
        if alt and alt.estimate:
            ratio = alt.estimate.time.compute_s / best.time.compute_s - 1
            if ratio > 0:
                extra += f" and avoids {ratio:.0%} recompute"
        return extra
    if dim == "offload" and layout.offload != "none":
        return _host_memory(best, cluster)
    if dim in ("ep", "etp") and best.model.is_moe:
        return _experts(best, cluster) if dim == "ep" else (
            f"each expert's FFN split over {layout.etp} GPUs" if layout.etp > 1 else "whole experts on each GPU")
    if dim == "checkpointing" and alt and alt.estimate and alt.layout.micro_batch != layout.micro_batch:
        return f"allows micro-batch {layout.micro_batch} instead of {alt.layout.micro_batch}"
    return ""


def _experts(best: Estimate, cluster: Cluster) -> str:
    """Where the experts live and what their all-to-all costs: the ep group spans ep·stride ranks (stride: tp on
    DeepSpeed, etp on Megatron, as planner/timing.py and megatron/time.py place it), inside an NVLink domain or
    across the network (planner/comm.py group_bandwidth)."""
    layout, model, engine = best.layout, best.model, best.training.engine
    local = model.experts // layout.ep
    text = f"{local} of {model.experts} experts per GPU, expert data parallel {layout.expert_dp(engine)}"
    if layout.ep == 1:
        return text + "; no all-to-all"
    span = layout.ep * (layout.etp if engine == "megatron" else layout.tp)
    where = (f"inside an NVLink domain ({cluster.gpu.nvlink_gbps:.0f} GB/s)" if span <= cluster.nvlink_domain
             else f"across nodes ({cluster.inter_node_gbps:.0f} GB/s per GPU)")
    share = best.time.ep_comm_s / best.step_time_s if best.step_time_s else 0.0
    return (f"{text}; the dispatch/combine all-to-all runs {where}: {secs(best.time.ep_comm_s)} s per step "
            f"({share:.0%})")


def _without_offload(options: list[Option], usable: float) -> str:
    kept = [o.peak for o in options if o.layout.offload == "none"]
    if not kept or any(o.estimate for o in options if o.layout.offload == "none"):
        return "CPU offload"
    return f"CPU offload: nothing fits without it (the leanest layout needs {min(kept) / GB:.1f} GB > {usable / GB:.1f} GB)"


def _host_memory(best: Estimate, cluster: Cluster) -> str:
    """What moves to the host: the on-GPU states of the same layout without offload, times the GPUs of a node."""
    on_gpu = estimate_memory(best.model, cluster, dataclasses.replace(best.layout, offload="none"), best.training)
    moved = on_gpu.optimizer_bytes - best.memory.optimizer_bytes
    if best.layout.offload == "optimizer+params":
        moved += on_gpu.params_bytes - best.memory.params_bytes
    return f"the host needs about {max(moved, 0) * cluster.gpus_per_node / GB:,.0f} GB of CPU memory per node for them"


def _micro_batch_line(best: Estimate, options: list[Option], usable: float, headroom: float) -> str | None:
    layout = best.layout
    per_replica = layout.micro_batch * layout.grad_accum
    same = [o for o in options if all(value(o.layout, d) == value(layout, d) for d in DECISIONS)]
    bigger = sorted((o for o in same if o.layout.micro_batch > layout.micro_batch), key=lambda o: o.layout.micro_batch)
    accum = (f"grad accum {layout.grad_accum} reaches the global batch {layout.global_batch}" if layout.grad_accum > 1
             else f"no gradient accumulation: micro-batch × dp({layout.dp}) is the global batch")
    if not bigger:
        if layout.micro_batch == per_replica:
            return f"micro-batch {layout.micro_batch}: the whole per-replica batch; {accum}"
        return f"micro-batch {layout.micro_batch}; {accum}"
    nxt = bigger[0]
    if nxt.estimate is None:
        return (f"micro-batch {layout.micro_batch}: largest that fits with {headroom:.0%} headroom "
                f"(micro-batch {nxt.layout.micro_batch} needs {nxt.peak / GB:.1f} GB > {usable / GB:.1f} GB); {accum}")
    return (f"micro-batch {layout.micro_batch} over {nxt.layout.micro_batch}: "
            f"{versus(best, nxt, f'micro-batch {nxt.layout.micro_batch}', usable)}; {accum}")


def explain(best: Estimate, result: SearchResult, cluster: Cluster) -> list[str]:
    options = [Option(e.layout, e.memory.peak_bytes, e) for e in result.fits]
    options += [Option(layout, m.peak_bytes, None) for layout, m in result.misses]
    layout = best.layout
    cp = f" × cp {layout.cp}" if layout.cp > 1 else ""
    lines = [f"{cluster.world_size} GPUs = dp {layout.dp} × tp {layout.tp} × pp {layout.pp}{cp}; global batch "
             f"{layout.global_batch} sequences = micro-batch {layout.micro_batch} × grad accum {layout.grad_accum} "
             f"× dp {layout.dp} ({layout.global_batch * best.training.seq_len:,} tokens)"
             + (f"; experts over ep {layout.ep} × etp {layout.etp}" if best.model.is_moe else "")]
    for dim in DECISIONS:
        alt = _closest(layout, options, dim)
        extra = _extra(dim, best, alt, cluster)
        if alt is None:
            if dim == "ep" and best.model.is_moe:
                lines.append(f"{label(layout, dim)}: the only choice left; {extra}")
            if dim == "offload":
                lines.append(f"{OFFLOAD['none']}: fits in GPU memory ({best.memory.peak_bytes / GB:.1f} of "
                             f"{result.usable / GB:.1f} GB usable)" if layout.offload == "none"
                             else f"{label(layout, dim)}: the only choice left")
            continue
        alt_label = label(alt.layout, dim)
        diff = [label(alt.layout, d) for d in DECISIONS if d != dim and value(alt.layout, d) != value(layout, d)]
        if diff:
            alt_label += f" ({', '.join(diff)})"
        line = f"{label(layout, dim)} over {label(alt.layout, dim)}: " + versus(best, alt, alt_label, result.usable)
        if dim == "offload" and layout.offload != "none":
            line = _without_offload(options, result.usable) + "; " + line
        lines.append(line + (f"; {extra}" if extra else ""))
    micro = _micro_batch_line(best, options, result.usable, best.headroom)
    if micro:
        lines.append(micro)
    return lines
