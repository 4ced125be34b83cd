"""The DeepSpeed buffer sizes that shape memory: one source of truth for the planner and the renderer.

Two styles: "shardplan" is what launch/ds_config.py renders (buckets sized to the model, overlap on);
"deepspeed" is DeepSpeed 0.19's defaults (deepspeed/runtime/zero/config.py), which the calibration probe
(one H200, ../shared/calibration/gpt2_probe.py) ran with.
"""
from __future__ import annotations

from functools import lru_cache

from dataclasses import dataclass

DEEPSPEED_DEFAULT_BUCKET = 500_000_000       # reduce_bucket_size / allgather_bucket_size, elements
DEEPSPEED_DEFAULT_PREFETCH = 50_000_000      # stage3_prefetch_bucket_size, elements
DEEPSPEED_DEFAULT_PERSISTENCE = 100_000      # stage3_param_persistence_threshold, elements
DEEPSPEED_DEFAULT_SUB_GROUP = 1_000_000_000  # sub_group_size: ZeRO-3 steps the optimizer per sub-group


@dataclass(frozen=True)
class ZeroKnobs:
    """ds_config values (elements, not bytes) that decide which buffers DeepSpeed allocates."""

    reduce_bucket: int
    allgather_bucket: int
    overlap_comm: bool
    prefetch_bucket: int
    persistence_threshold: int
    sub_group: int = DEEPSPEED_DEFAULT_SUB_GROUP
    max_live: int = 1_000_000_000         # stage3_max_live_parameters (DeepSpeed's default, and shardplan's)
    max_reuse_distance: int = 1_000_000_000  # stage3_max_reuse_distance (default): keep what is reused soon


def shardplan_bucket(hidden: int) -> int:
    """About 2.7 layers of weights (32·h²; a layer is ~12·h²), capped at DeepSpeed's 5e8."""
    return min(DEEPSPEED_DEFAULT_BUCKET, 32 * hidden * hidden)


@lru_cache(maxsize=8192)
def zero_knobs(hidden: int, zero_stage: int, style: str = "shardplan", on_gpu: bool = True) -> ZeroKnobs:
    if style == "deepspeed":
        return ZeroKnobs(DEEPSPEED_DEFAULT_BUCKET, DEEPSPEED_DEFAULT_BUCKET, overlap_comm=zero_stage == 3,
                         prefetch_bucket=DEEPSPEED_DEFAULT_PREFETCH,
                         persistence_threshold=DEEPSPEED_DEFAULT_PERSISTENCE)
    if style != "shardplan":
        raise ValueError(f"zero_buckets({style!r}) must be 'shardplan' or 'deepspeed'")
    # ZeRO-3 follows the Hugging Face integration's "auto" rules (transformers/integrations/deepspeed.py)
    reduce = hidden * hidden if zero_stage == 3 else shardplan_bucket(hidden)
    return ZeroKnobs(reduce, shardplan_bucket(hidden), overlap_comm=zero_stage >= 1 and on_gpu,
                     prefetch_bucket=int(0.9 * hidden * hidden), persistence_threshold=10 * hidden)
