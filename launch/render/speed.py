"""Which of the training program's speed options a rendered run gets, and the estimate that knows them.

On a GPU, shardplan's program compiles the model where the layout allows it (planner/layout.py
`compile_refusal`) and runs the step without needless host syncs (torch's fused AdamW, no bf16 overflow
check: Training.fused_step); the planner's time model prices both (planner/compiled.py, timing.py), so
plan.json's prediction is the one for what the scripts start. On CPU neither is turned on: inductor's
first-step C++ build costs more than a short CPU run gains, and the CPU memory calibration used the
unfused optimizer. The program's --compile / --no-compile overrides plan.json's choice.
"""
from __future__ import annotations

import dataclasses

from shardplan.planner.estimate import Estimate
from shardplan.planner.evaluate import estimate_layout
from shardplan.planner.layout import compile_refusal


def program_estimate(est: Estimate) -> Estimate:
    """est with Training.compile / fused_step as the program will run this layout (unchanged on CPU)."""
    if est.cluster.gpu.is_cpu:
        return est
    training = dataclasses.replace(est.training, compile=compile_refusal(est.layout) is None,
                                   fused_step=est.layout.offload == "none")
    if training == est.training:
        return est
    return estimate_layout(est.model, est.cluster, est.layout, training, est.headroom, est.memory)
