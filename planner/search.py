"""The search: enumerate the layouts a job can use, bisect the micro-batch, keep what fits, rank by
predicted throughput.

Rules (README "How plan searches"):
- world = dp · tp · pp uses every GPU of the cluster.
- tp divides the NVLink domain (a tensor-parallel group never leaves it: the node, or 72 GPUs on NVL72), n_heads
  and n_kv_heads.
- pp divides n_layers (even stages) and world / tp.
- ZeRO 0-3; at most 1 when pp > 1 (DeepSpeed's pipeline engine refuses 2 and 3). Megatron: 0 and 1 (the
  distributed optimizer); ZeRO-3 (Megatron-FSDP, pp 1) for a family only where ZeRO-1 does not fit at any
  micro-batch.
- micro_batch divides the per-replica batch (global / dp); grad_accum = global / (dp · micro_batch).
- checkpointing none or full; "selective" (Megatron-LM's) only when asked for: DeepSpeed checkpoints whole layers.
- CPU offload only when nothing fits without it: optimizer (ZeRO ≥ 1), optimizer+params (ZeRO-3).
- fits: peak ≤ capacity · (1 - headroom). Ranked by tokens/s; within TIE of the fastest, less memory wins.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import NamedTuple

from .cluster import Cluster
from .estimate import Estimate, MemoryBreakdown, Training
from .engines import uneven_stages
from .evaluate import check_headroom, estimate_layout, usable_bytes
from .layout import CHECKPOINTING, OFFLOADS, Layout, ZeroStage, divisors
from .cost import estimate_memory
from .model import ModelSpec

TIE = 0.01                      # throughput within 1% counts as a tie: the model is not more precise than that
DEFAULT_BATCH_TOKENS = 2 ** 19  # GPT-3 (Brown et al. 2020, table 2.1) trains its small models on 0.5M-token batches
SEARCHED_CHECKPOINTING = ("none", "full")
# The layout fields plan() can hold fixed; dp and grad_accum follow from them and the global batch.
SEARCHED_FIELDS = ("tp", "pp", "zero_stage", "micro_batch", "checkpointing", "offload", "sequence_parallel", "cp",
                   "vpp", "pp_layers", "ep", "etp")
CONSTRAINTS = SEARCHED_FIELDS + ("max_micro_batch", "top", "prefer")


CPU_SEQUENCES_PER_PROCESS = 8  # CPU processes (the demo): a step of seconds, not of minutes


def default_global_batch(world: int, seq_len: int, on_cpu: bool = False) -> int:
    """Sequences per step when the user gives none: world · 2^k, the smallest reaching 0.5M tokens
    (8 per process on CPU processes).

    A multiple of the world keeps every data-parallel degree whole; powers of two leave micro-batch choices.
    """
    if on_cpu:
        return world * CPU_SEQUENCES_PER_PROCESS
    batch = world
    while batch * seq_len < DEFAULT_BATCH_TOKENS:
        batch *= 2
    return batch


@dataclass
class SearchResult:
    """Everything the search looked at: what fits (full Estimates) and what did not (memory only)."""

    fits: list[Estimate]
    misses: list[tuple[Layout, MemoryBreakdown]]
    evaluated: int
    training: Training
    usable: float


def tp_degrees(model: ModelSpec, cluster: Cluster) -> list[int]:
    return [t for t in divisors(cluster.nvlink_domain) if model.splits_heads(t)]


# Context parallelism is searched for long sequences only (below this, the sequence's activations are not
# what decides memory, and splitting it only adds the K/V ring); a fixed --cp is evaluated at any length.
CP_MIN_SEQ = 16384
CP_DEGREES = (2, 4, 8, 16)


class Family(NamedTuple):
    """One combination of the layout's choices except the micro-batch (and grad_accum, which follows)."""

    tp: int
    pp: int
    dp: int
    zero: int
    checkpointing: str
    offload: str
    cp: int = 1
    sequence_parallel: bool = False
    vpp: int = 1
    pp_layers: tuple[int, ...] | None = None
    ep: int = 1
    etp: int = 1

    def layout(self, micro_batch: int, grad_accum: int) -> Layout:
        return Layout(self.dp, self.tp, self.pp, ZeroStage(self.zero), micro_batch, grad_accum, self.checkpointing,
                      self.offload, self.sequence_parallel, self.cp, self.vpp, self.pp_layers, self.ep, self.etp)


def expert_degrees(model: ModelSpec, world: int, fam: tuple, engine: str, c: dict) -> list[tuple[int, int]]:
    """(ep, etp) pairs the engine's rules allow for this family (planner/engines.py _experts): dense models (1, 1);
    Megatron ep dividing the experts and world/(etp·pp) with etp 1 or tp; DeepSpeed ep dividing experts and dp,
    with tp, pp, cp 1 and ZeRO below 3."""
    tp, pp, dp, zero, cp = fam
    if not model.is_moe:
        return [(1, 1)] if c.get("ep", 1) == 1 and c.get("etp", 1) == 1 else []
    if engine == "megatron":
        etps = [c["etp"]] if c.get("etp") is not None else sorted({1, tp})
        pairs = [(e, t) for t in etps for e in divisors(model.experts) if world % (t * e * pp) == 0
                 and model.moe_ffn_hidden % t == 0]
    elif tp > 1 or pp > 1 or cp > 1 or zero == 3 or c.get("etp", 1) != 1:
        return []
    else:
        pairs = [(e, 1) for e in divisors(model.experts) if dp % e == 0]
    return [(e, t) for e, t in pairs if c.get("ep") is None or e == c["ep"]]


def check_fixed(model: ModelSpec, cluster: Cluster, c: dict, engine: str = "deepspeed") -> None:
    """A fixed tp or pp that no layout can have: say which values can."""
    if c.get("tp") is not None and c["tp"] not in tp_degrees(model, cluster) and (
            c["tp"] % cluster.gpus_per_node or not model.splits_heads(c["tp"])):
        raise ValueError(f"tp({c['tp']}) must divide the {cluster.nvlink_domain} GPUs of an NVLink domain (or be a "
                         f"multiple of the node's {cluster.gpus_per_node}), n_heads({model.n_heads}) and "
                         f"n_kv_heads({model.n_kv_heads}); use --tp in "
                         f"{tp_degrees(model, cluster)}")
    if c.get("pp") is not None:
        pps = pp_degrees(model, cluster.world_size, engine)
        if c["pp"] not in pps and c.get("pp_layers") is None:
            rule = "divide n_layers({}) and".format(model.n_layers) if engine != "megatron" else "divide"
            raise ValueError(f"pp({c['pp']}) must {rule} the {cluster.world_size} GPUs; use --pp in {pps[:12]}"
                             + ("" if engine == "megatron" else " (or --engine megatron for uneven stages)"))


def pp_degrees(model: ModelSpec, gpus: int, engine: str) -> list[int]:
    """Pipeline degrees the search tries on `gpus` GPUs: divisors of the layers (DeepSpeed: shardplan's program
    runs even stages), or any degree up to the layers with uneven first/last stages (Megatron)."""
    if engine == "megatron":
        return [p for p in divisors(gpus) if p <= max(1, model.n_layers // 2) or p == 1]
    return [p for p in divisors(model.n_layers) if gpus % p == 0]


def _stages(model: ModelSpec, pp: int, engine: str, c: dict) -> tuple[int, ...] | None:
    if c.get("pp_layers") is not None:
        return tuple(c["pp_layers"])
    return uneven_stages(model.n_layers, pp) if engine == "megatron" and model.n_layers % pp else None


def _ulysses_runs(model: ModelSpec, tp: int, pp: int, cp: int) -> bool:
    """Whether shardplan's program runs this DeepSpeed-Ulysses layout (searched; a fixed --cp is checked by
    the engine's rules instead): the ZeRO engine (pp 1) of a dense model, without tp, heads and kv heads over cp."""
    return pp == 1 and tp == 1 and not model.is_moe and model.splits_heads(cp)


def families(model: ModelSpec, cluster: Cluster, c: dict, offload: bool, training: Training | None = None):
    """Every Family allowed by the engine's rules (planner/engines.py) and the constraints in c."""
    engine = training.engine if training is not None else "deepspeed"
    seq = training.seq_len if training is not None else 0
    megatron = engine == "megatron"
    world = cluster.world_size
    tps = tp_degrees(model, cluster) if c.get("tp") is None else [c["tp"]]
    ckpts = (c["checkpointing"],) if c.get("checkpointing") else SEARCHED_CHECKPOINTING
    if megatron and model.is_moe and not c.get("checkpointing"):
        ckpts += ("selective",)      # + layernorm, moe_act (and mla_up_proj) recompute: planner/moe.py
    if c.get("cp") is not None:
        cps = [c["cp"]]
    else:
        # Megatron splits a sequence into 2·cp chunks; DeepSpeed-Ulysses into cp
        cps = [1] + [d for d in CP_DEGREES if seq >= CP_MIN_SEQ and seq % ((2 if megatron else 1) * d) == 0]
    for tp in tps:
        for cp in cps:
            if world % (tp * cp):
                continue
            if cp > 1 and training is not None and training.cp_comm_type == "a2a" and not model.splits_heads(tp * cp):
                continue
            rest = world // (tp * cp)
            for pp in pp_degrees(model, rest, engine) if c.get("pp") is None else [c["pp"]]:
                if rest % pp:
                    continue
                if cp > 1 and not megatron and c.get("cp") is None and not _ulysses_runs(model, tp, pp, cp):
                    continue
                dp = rest // pp
                stages = _stages(model, pp, engine, c)
                per_stage = stages or (model.n_layers // pp,) * pp
                sps = [c["sequence_parallel"]] if c.get("sequence_parallel") is not None else [megatron and tp > 1]
                if c.get("vpp") is not None:
                    vpps = [c["vpp"]]
                else:
                    vpps = [1] + [v for v in (2, 4) if megatron and pp > 2 and all(n % v == 0 for n in per_stage)]
                if megatron:   # ZeRO-2/3 are Megatron-FSDP: when asked for, or where memory asks (search)
                    zeros = (0, 1, 2, 3) if c.get("zero_stage") is not None and pp == 1 else (0, 1)
                else:
                    zeros = (0, 1) if pp > 1 else (0, 1, 2, 3)
                if c.get("zero_stage") is not None:
                    zeros = tuple(z for z in zeros if z == int(c["zero_stage"]))
                for zero in zeros:
                    offloads = ["none"]
                    if offload and not megatron:
                        offloads = [o for o in OFFLOADS[1:] if zero == 3 or o == "optimizer"] if zero else []
                    if c.get("offload") is not None:
                        offloads = [o for o in offloads + ["none"] if o == c["offload"]][:1]
                    for ckpt in ckpts:
                        for off in offloads:
                            for sp in sps:
                                for vpp in vpps:
                                    for ep, etp in expert_degrees(model, world, (tp, pp, dp, zero, cp), engine, c):
                                        yield Family(tp, pp, dp, zero, ckpt, off, cp, sp, vpp, stages, ep, etp)


def search(model: ModelSpec, cluster: Cluster, training: Training, headroom: float, c: dict,
           offload: bool) -> SearchResult:
    """Best micro-batches of every family: bisect the largest that fits (memory grows with it), time those below."""
    usable = usable_bytes(cluster.gpu.memory_bytes, headroom)
    result = SearchResult([], [], 0, training, usable)
    fsdp_fallback = training.engine == "megatron" and c.get("zero_stage") is None
    for fam in families(model, cluster, c, offload, training):
        if not _search_family(model, cluster, training, headroom, c, fam, result) and fsdp_fallback and (
                fam.zero == 1 and fam.pp == 1 and fam.dp * fam.cp > 1):
            # the distributed optimizer does not fit even at the smallest micro-batch: Megatron-FSDP's ZeRO-3
            _search_family(model, cluster, training, headroom, c, fam._replace(zero=3), result)
    return result


def _search_family(model: ModelSpec, cluster: Cluster, training: Training, headroom: float, c: dict, fam: Family,
                   result: SearchResult) -> bool:
    """Add the family's micro-batches that fit (and its smallest miss) to result; False when none fits."""
    usable = result.usable
    dp = fam.dp
    if training.global_batch % dp:
        return True
    per_replica = training.global_batch // dp
    micros = [m for m in divisors(per_replica) if m <= c.get("max_micro_batch", per_replica)]
    if c.get("micro_batch") is not None:
        micros = [m for m in micros if m == c["micro_batch"]]
    if not micros:
        return True

    def layout(m: int, fam=fam) -> Layout:
        return fam.layout(m, per_replica // m)

    memo: dict[int, MemoryBreakdown] = {}

    def memory(i: int) -> MemoryBreakdown:
        if i not in memo:
            memo[i] = estimate_memory(model, cluster, layout(micros[i]), training)
            result.evaluated += 1
        return memo[i]

    # Memory grows with the micro-batch, except at grad_accum 1 (the last micro-batch): without
    # accumulation the held gradient buffers go away. So bisect the others and check that one alone.
    last = len(micros) - 1
    fitting: list[int] = []
    if memory(0).peak_bytes <= usable:
        lo, hi = 0, max(last - 1, 0)     # invariant: micros[lo] fits, micros[hi+1] (below last) does not
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if memory(mid).peak_bytes <= usable:
                lo = mid
            else:
                hi = mid - 1
        fitting = list(range(lo + 1))
    if last not in fitting and memory(last).peak_bytes <= usable:
        fitting.append(last)
    missing = next((i for i in range(len(micros)) if i not in fitting), None)
    if missing is not None:             # the smallest micro-batch that does not fit: what the reasons cite
        result.misses.append((layout(micros[missing]), memory(missing)))
    for i in fitting:
        result.fits.append(estimate_layout(model, cluster, layout(micros[i]), training, headroom, memory(i)))
    return bool(fitting)


PREFERENCES = ("simple", "memory", "speed")


def complexity(layout: Layout) -> tuple:
    """How much machinery a layout asks for: ZeRO stage (ZeRO-3 gathers every parameter each micro-batch,
    whose host-side cost the model knows least), offload, recompute, then the model-parallel degrees."""
    return (int(layout.zero_stage), layout.offload != "none", layout.checkpointing != "none",
            layout.tp * layout.pp * layout.cp, layout.vpp, layout.pp_layers is not None, layout.ep * layout.etp)


def rank(estimates: list[Estimate], prefer: str = "simple") -> list[Estimate]:
    """Fastest first; within TIE of the fastest (the model is not more precise than that) the preferred one:
    "simple" the layout with the least machinery (complexity), "memory" the one with less memory, "speed"
    strictly the fastest. The rest follow by speed."""
    if prefer not in PREFERENCES:
        raise ValueError(f"prefer({prefer!r}) must be one of {', '.join(PREFERENCES)}")
    ordered = sorted(estimates, key=lambda e: (-e.tokens_per_s, e.memory.peak_bytes))
    if not ordered or prefer == "speed":
        return ordered
    top = ordered[0].tokens_per_s * (1 - TIE)
    tied = [e for e in ordered if e.tokens_per_s >= top]
    if prefer == "memory":
        winner = min(tied, key=lambda e: e.memory.peak_bytes)
    else:
        winner = min(tied, key=lambda e: (complexity(e.layout), -e.tokens_per_s))
    return [winner] + [e for e in ordered if e is not winner]


def family_key(layout: Layout) -> tuple:
    return (int(layout.zero_stage), layout.tp, layout.pp, layout.checkpointing, layout.offload, layout.cp,
            layout.vpp, layout.ep, layout.etp)


def resolve_training(model: ModelSpec, cluster: Cluster, training: Training) -> Training:
    if training.global_batch:
        return training
    return dataclasses.replace(training, global_batch=default_global_batch(
        cluster.world_size, training.seq_len, on_cpu=cluster.gpu.is_cpu))


def check_constraints(constraints: dict) -> dict:
    unknown = set(constraints) - set(CONSTRAINTS)
    if unknown:
        raise ValueError(f"unknown plan constraints {sorted(unknown)}; known: {', '.join(CONSTRAINTS)}")
    c = {k: v for k, v in constraints.items() if v is not None}
    if c.get("checkpointing") is not None and c["checkpointing"] not in CHECKPOINTING:
        raise ValueError(f"checkpointing({c['checkpointing']!r}) must be one of {', '.join(CHECKPOINTING)}")
    if c.get("offload") is not None and c["offload"] not in OFFLOADS:
        raise ValueError(f"offload({c['offload']!r}) must be one of {', '.join(OFFLOADS)}")
    return c


def run_search(model: ModelSpec, cluster: Cluster, training: Training, headroom: float, c: dict) -> SearchResult:
    """Without offload first; with offload only when nothing fits without it (or when offload is asked for)."""
    check_headroom(headroom)
    training = resolve_training(model, cluster, training)
    wants_offload = c.get("offload") not in (None, "none")
    result = search(model, cluster, training, headroom, c, offload=wants_offload)
    if not result.fits and c.get("offload") is None:
        more = search(model, cluster, training, headroom, c, offload=True)
        more.misses[:0] = result.misses
        more.evaluated += result.evaluated
        result = more
    return result
