"""Memory and step time of a layout under the engine that runs it (Training.engine): the one dispatch.

DeepSpeed (and plain PyTorch, for the calibration's reference rows) is memory.py + timing.py; Megatron-core
is megatron/memory.py + megatron/time.py. Everything that scores layouts (evaluate, search, suggest,
reasons) asks here."""
from __future__ import annotations

from .cluster import Cluster
from .estimate import MemoryBreakdown, TimeBreakdown, Training
from .layout import Layout
from .megatron.memory import megatron_memory
from .megatron.time import megatron_time
from .memory import estimate_memory as deepspeed_memory
from .model import ModelSpec
from .precision import check_precision
from .timing import estimate_time as deepspeed_time


def estimate_memory(model: ModelSpec, cluster: Cluster, layout: Layout, training: Training) -> MemoryBreakdown:
    check_precision(cluster.gpu, training.precision, training.engine)   # FP8: Megatron on a card that has it
    if training.engine == "megatron":
        return megatron_memory(model, cluster, layout, training)
    return deepspeed_memory(model, cluster, layout, training)


def estimate_time(model: ModelSpec, cluster: Cluster, layout: Layout, training: Training) -> TimeBreakdown:
    check_precision(cluster.gpu, training.precision, training.engine)
    if training.engine == "megatron":
        return megatron_time(model, cluster, layout, training)
    return deepspeed_time(model, cluster, layout, training)
