"""Step time for one layout. PLACEHOLDER: compute-only first cut; being replaced."""
from __future__ import annotations

from .cluster import Cluster
from .estimate import TimeBreakdown, Training
from .layout import Layout
from .model import ModelSpec


def estimate_time(model: ModelSpec, cluster: Cluster, layout: Layout, training: Training) -> TimeBreakdown:
    tokens = layout.micro_batch * layout.grad_accum * training.seq_len
    flops = model.flops_per_token(training.seq_len) * tokens / (layout.tp * layout.pp)
    compute = flops / (cluster.gpu.peak_tflops(training.precision) * 1e12 * 0.5)
    bubble = compute * (layout.pp - 1) / layout.grad_accum
    return TimeBreakdown(compute, 0.0, 0.0, 0.0, 0.0, bubble)
