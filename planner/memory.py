"""Memory per GPU for one layout. PLACEHOLDER: the model-states-only first cut; being replaced."""
from __future__ import annotations

from .cluster import Cluster
from .estimate import MemoryBreakdown, Training
from .layout import Layout
from .model import ModelSpec


def estimate_memory(model: ModelSpec, cluster: Cluster, layout: Layout, training: Training) -> MemoryBreakdown:
    n = model.params // (layout.tp * layout.pp)
    dp = layout.dp
    z = int(layout.zero_stage)
    params = 2 * n // (dp if z >= 3 else 1)
    grads = 2 * n // (dp if z >= 2 else 1)
    optim = 12 * n // (dp if z >= 1 else 1)
    act = training.seq_len * layout.micro_batch * model.hidden * 34 * model.n_layers // (layout.tp * layout.pp)
    return MemoryBreakdown(params, grads, optim, act, 0, cluster.gpu.memory_bytes)
