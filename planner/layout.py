"""Layout: one way to split a training job over a cluster, validated at construction."""
from __future__ import annotations

from dataclasses import dataclass, fields
from enum import IntEnum
from typing import Literal

Checkpointing = Literal["none", "full", "selective"]
Offload = Literal["none", "optimizer", "optimizer+params"]
Precision = Literal["bf16", "fp16", "fp32", "fp8", "mxfp8"]   # fp8/mxfp8: Transformer Engine GEMMs (planner/precision.py)

CHECKPOINTING: tuple[Checkpointing, ...] = ("none", "full", "selective")
OFFLOADS: tuple[Offload, ...] = ("none", "optimizer", "optimizer+params")
PRECISIONS: tuple[Precision, ...] = ("bf16", "fp16", "fp32", "fp8", "mxfp8")


def divisors(n: int) -> list[int]:
    """The divisors of n, ascending: the degrees a dimension of size n can be split into."""
    small = [d for d in range(1, int(n ** 0.5) + 1) if n % d == 0]
    return sorted(set(small + [n // d for d in small]))


def even_stages(n_layers: int, pp: int) -> tuple[int, ...]:
    """n_layers over pp stages as evenly as it goes, the first stages taking the remainder."""
    base, extra = divmod(n_layers, pp)
    return tuple(base + (1 if i < extra else 0) for i in range(pp))


class ZeroStage(IntEnum):
    """DeepSpeed ZeRO stage: what is sharded over the data-parallel group."""

    NONE = 0       # nothing sharded (DDP-like)
    OPTIMIZER = 1  # optimizer states
    GRADIENTS = 2  # + gradients
    PARAMETERS = 3  # + parameters


@dataclass(frozen=True)
class Layout:
    """A parallel layout. world size = dp · tp · pp · cp; ZeRO (or Megatron's distributed optimizer) shards
    over dp · cp, the ranks that hold the same weights (Megatron's dp·cp group; DeepSpeed-Ulysses' sequence-data-
    parallel group)."""

    dp: int                      # data-parallel degree (replicas, or ZeRO shards)
    tp: int = 1                  # tensor-parallel degree (best inside an NVLink domain)
    pp: int = 1                  # pipeline-parallel degree (stages)
    zero_stage: ZeroStage = ZeroStage.NONE
    micro_batch: int = 1         # sequences per GPU per forward/backward
    grad_accum: int = 1          # micro-batches per optimizer step (per pipeline: micro-batches in flight)
    checkpointing: Checkpointing = "none"
    offload: Offload = "none"
    # Megatron sequence parallelism over the tp ranks: norms, dropout and residuals hold s/tp tokens, the tp
    # all-reduces become all-gather + reduce-scatter (Korthikanti et al. 2022, section 4.2.2)
    sequence_parallel: bool = False
    cp: int = 1                  # context-parallel degree: each rank holds seq/cp tokens (Megatron CP, DeepSpeed Ulysses)
    vpp: int = 1                 # virtual pipeline stages per pipeline rank (interleaved 1F1B)
    pp_layers: tuple[int, ...] | None = None   # layers of each pipeline stage when uneven; None = even split
    # Mixture of experts (1 for dense models): each MoE layer's routed experts are split over ep ranks, and each
    # expert's FFN over etp ranks; the ranks holding the same experts form the expert-data-parallel group
    # (expert_dp) that ZeRO / the distributed optimizer shards the expert states over.
    ep: int = 1
    etp: int = 1

    def __post_init__(self) -> None:
        for name in ("dp", "tp", "pp", "micro_batch", "grad_accum", "cp", "vpp", "ep", "etp"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name}({value!r}) must be a positive integer")
        if not isinstance(self.sequence_parallel, bool):
            raise ValueError(f"sequence_parallel({self.sequence_parallel!r}) must be true or false")
        if self.sequence_parallel and self.tp == 1:
            raise ValueError("sequence_parallel with tp(1): it splits norms and residuals over the tp ranks; "
                             "use --tp 2 or more, or --no-sp")
        if self.vpp > 1 and self.pp == 1:
            raise ValueError(f"vpp({self.vpp}) interleaves pipeline stages: it needs pp > 1; use --pp 2 or more, "
                             "or --vpp 1")
        if self.pp_layers is not None:
            stages = tuple(self.pp_layers) if isinstance(self.pp_layers, (list, tuple)) else None
            if (stages is None or len(stages) != self.pp
                    or any(isinstance(n, bool) or not isinstance(n, int) or n < 1 for n in stages)):
                raise ValueError(f"pp_layers({self.pp_layers!r}) must list {self.pp} positive layer counts, "
                                 "one per pipeline stage, e.g. --pp-layers 7,8,8,7")
            object.__setattr__(self, "pp_layers", stages)
        try:
            object.__setattr__(self, "zero_stage", ZeroStage(int(self.zero_stage)))
        except ValueError:
            raise ValueError(f"zero_stage({self.zero_stage!r}) must be 0, 1, 2 or 3") from None
        if self.checkpointing not in CHECKPOINTING:
            raise ValueError(f"checkpointing({self.checkpointing!r}) must be one of {', '.join(CHECKPOINTING)}")
        if self.offload not in OFFLOADS:
            raise ValueError(f"offload({self.offload!r}) must be one of {', '.join(OFFLOADS)}")
        if self.pp > 1 and self.zero_stage >= ZeroStage.GRADIENTS:
            raise ValueError(
                f"zero_stage({int(self.zero_stage)}) with pp({self.pp}): DeepSpeed's pipeline engine "
                "supports ZeRO 0 or 1 only; use --zero 1 or --pp 1")
        if self.offload == "optimizer+params" and self.zero_stage != ZeroStage.PARAMETERS:
            raise ValueError(
                f"offload({self.offload!r}) needs zero_stage 3 (got {int(self.zero_stage)}); "
                "use --offload optimizer or --zero 3")
        if self.offload == "optimizer" and self.zero_stage == ZeroStage.NONE:
            raise ValueError("offload('optimizer') needs ZeRO stage 1, 2 or 3 (got 0); use --zero 1 or higher")

    @property
    def world_size(self) -> int:
        return self.dp * self.tp * self.pp * self.cp

    @property
    def dp_cp(self) -> int:
        """Ranks holding the same weights, dp·cp (Megatron's data-parallel-with-context-parallel group,
        DeepSpeed-Ulysses' sequence-data-parallel group): ZeRO and the distributed optimizer shard over them,
        gradients are reduced over them."""
        return self.dp * self.cp

    def expert_dp(self, engine: str = "deepspeed") -> int:
        """Ranks holding the same expert shard: Megatron world/(etp·ep·pp) (megatron/core/parallel_state.py's
        expert-data-parallel group), DeepSpeed-MoE dp/ep (deepspeed/utils/groups.py
        _create_expert_and_data_parallel)."""
        if engine == "megatron":
            return max(1, self.world_size // (self.etp * self.ep * self.pp))
        return max(1, self.dp // self.ep)

    def stage_layers(self, n_layers: int) -> tuple[int, ...]:
        """Transformer layers of each pipeline stage: pp_layers, else as even as it goes (the first stages
        take the remainder, as DeepSpeed's uniform partition and Megatron's even split do)."""
        return self.pp_layers if self.pp_layers is not None else even_stages(n_layers, self.pp)

    @property
    def global_batch(self) -> int:
        """Sequences per optimizer step over the whole job."""
        return self.micro_batch * self.grad_accum * self.dp

    def to_dict(self) -> dict:
        """Field name -> value (plan.json's "layout", estimate --json)."""
        out = {name: getattr(self, name) for name in LAYOUT_FIELDS}
        out["zero_stage"] = int(self.zero_stage)
        out["pp_layers"] = list(self.pp_layers) if self.pp_layers is not None else None
        return out

    def to_flags(self) -> dict:
        """Flag name -> value: to_dict with the command line's names ("zero" for zero_stage)."""
        return {flag_name(k): v for k, v in self.to_dict().items()}

    @classmethod
    def from_dict(cls, d: dict) -> "Layout":
        unknown = set(d) - set(LAYOUT_FIELDS)
        if unknown:
            raise ValueError(f"unknown layout keys {sorted(unknown)}; known: {sorted(LAYOUT_FIELDS)}")
        return cls(**d)


# The one list of layout fields; flags, --batch keys, plan.json and render derive their names from it.
LAYOUT_FIELDS: tuple[str, ...] = tuple(f.name for f in fields(Layout))
# The fields whose flag is not their name: --zero (DeepSpeed's word), --sp/--no-sp (Megatron's short name).
_FLAG_OF = {"zero_stage": "zero", "sequence_parallel": "sp"}


def flag_name(field_name: str) -> str:
    """The command-line name of a layout field: "zero" for zero_stage, "sp" for sequence_parallel, else the
    field name."""
    return _FLAG_OF.get(field_name, field_name)


def field_name(flag: str) -> str:
    """The layout field a flag (or --batch key, either spelling) sets: zero -> zero_stage, sp -> sequence_parallel."""
    return {v: k for k, v in _FLAG_OF.items()}.get(flag, flag)


LAYOUT_FLAGS: tuple[str, ...] = tuple(flag_name(f) for f in LAYOUT_FIELDS)


def compile_refusal(layout: Layout) -> str | None:
    """Why shardplan's training program cannot torch.compile this layout (None: it can).

    The one rule that render (which turns compile on), the planner's time model and the program share.
    Checked on CPU with DeepSpeed 0.19.8 and torch 2.13 (tests/test_train_compile.py): ZeRO 0-2, AutoTP
    (tp), the pipeline engine (pp, every stage layer compiled) and full or selective recompute train to the
    eager losses. ZeRO-3 does not: its parameters are gathered by module hooks that the compiled graph
    skips (the tied LM head reads a still-partitioned wte.weight: "size mismatch ... vec (0)").
    """
    if layout.zero_stage == ZeroStage.PARAMETERS:
        return (f"zero_stage({int(layout.zero_stage)}) cannot be compiled: ZeRO-3 gathers parameters in module "
                "hooks that a compiled graph skips; use --zero 2 (or 1) or run with --no-compile")
    return None
