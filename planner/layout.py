"""Layout: one way to split a training job over a cluster, validated at construction."""
from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum
from typing import Literal

Checkpointing = Literal["none", "full", "selective"]
Offload = Literal["none", "optimizer", "optimizer+params"]
Precision = Literal["bf16", "fp16", "fp32"]

CHECKPOINTING: tuple[Checkpointing, ...] = ("none", "full", "selective")
OFFLOADS: tuple[Offload, ...] = ("none", "optimizer", "optimizer+params")
PRECISIONS: tuple[Precision, ...] = ("bf16", "fp16", "fp32")


class ZeroStage(IntEnum):
    """DeepSpeed ZeRO stage: what is sharded over the data-parallel group."""

    NONE = 0       # nothing sharded (DDP-like)
    OPTIMIZER = 1  # optimizer states
    GRADIENTS = 2  # + gradients
    PARAMETERS = 3  # + parameters


@dataclass(frozen=True)
class Layout:
    """A parallel layout. world size = dp * tp * pp; ZeRO shards over dp only."""

    dp: int                      # data-parallel degree (replicas, or ZeRO shards)
    tp: int = 1                  # tensor-parallel degree (inside a node)
    pp: int = 1                  # pipeline-parallel degree (stages)
    zero_stage: ZeroStage = ZeroStage.NONE
    micro_batch: int = 1         # sequences per GPU per forward/backward
    grad_accum: int = 1          # micro-batches per optimizer step (per pipeline: micro-batches in flight)
    checkpointing: Checkpointing = "none"
    offload: Offload = "none"

    def __post_init__(self) -> None:
        for name in ("dp", "tp", "pp", "micro_batch", "grad_accum"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name}({value!r}) must be a positive integer")
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
        return self.dp * self.tp * self.pp

    @property
    def global_batch(self) -> int:
        """Sequences per optimizer step over the whole job."""
        return self.micro_batch * self.grad_accum * self.dp

    def to_dict(self) -> dict:
        return {"dp": self.dp, "tp": self.tp, "pp": self.pp, "zero_stage": int(self.zero_stage),
                "micro_batch": self.micro_batch, "grad_accum": self.grad_accum,
                "checkpointing": self.checkpointing, "offload": self.offload}

    @classmethod
    def from_dict(cls, d: dict) -> "Layout":
        known = {"dp", "tp", "pp", "zero_stage", "micro_batch", "grad_accum", "checkpointing", "offload"}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown layout keys {sorted(unknown)}; known: {sorted(known)}")
        return cls(**d)
