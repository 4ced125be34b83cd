"""Step time for one layout: GPU work (gpu_time.py), host work, optimizer, communication (comm.py), bubble.

A step is a race between the GPU and the Python host that feeds it. Eager PyTorch issues kernels
asynchronously, so forward + backward cost max(GPU time, host issue time) — small models and small
micro-batches are host bound, which is why GPT-2 124M at micro-batch 1 runs far below the matmul
ceiling. DeepSpeed adds host work per parameter tensor (gradient hooks, per-tensor norm/overflow checks,
ZeRO-3's gather/release per module) that partly overlaps the GPU's backward; ZeRO-0's unfused bf16
optimizer synchronizes once per tensor (CheckOverflow.has_overflow_serial), so its step is serialized.

Host constants are per eager op on the calibration host (../shared/calibration, H200 node, torch 2.11,
DeepSpeed 0.19.8): HOST_OP_S from plain PyTorch at micro-batch 1 (host bound), op counts read off the
engine's code paths (counted per parameter tensor); they are the only calibrated numbers in the model.
"""
from __future__ import annotations

from functools import lru_cache

from .cluster import Cluster
from .comm import step_comm
from .ds_knobs import zero_knobs
from .estimate import TimeBreakdown, Training
from .gpu_time import HBM_EFFICIENCY, microbatch_gpu_s
from .layout import Layout
from .model import ModelSpec
from .stage import stage_shape

HOST_OP_S = 25e-6          # one eager op: Python module call + dispatch + autograd record + launch
OPS_PER_LAYER = 16 + 30    # forward ops + backward autograd nodes of one block (norms, matmuls, SDPA, adds)
OPS_HEAD = 30              # embedding, final norm, logits, fp32 cross-entropy, forward + backward
CKPT_BLOCK_S = 1.5e-3      # non-reentrant checkpoint per block (saved-tensor hooks, RNG state, recompute frame):
#                            the mean of the measured ckpt-minus-plain step times at micro-batch 1, per block
SYNC_S = 30e-6             # a host<-device synchronization (bool(tensor), .item()) on an idle queue
TENSOR_OP_S = 12e-6        # one plain tensor call outside autograd (optimizer loops, hooks' bookkeeping)
# DeepSpeed host work per parameter tensor per step, in plain tensor calls, read off the code paths:
#   ZeRO-0 FP16_UnfusedOptimizer.step: has_inf_or_nan (amax, amin, 2 isfinite, and, not; bool() syncs),
#     get_weight_norm (float, norm, pow, add), upcast, unscale, downcast copy = 13 calls + 1 sync
#   ZeRO-1/2 grad hook (narrow, copy_, view, .data swap + Python bookkeeping ~6), epilogue copy into
#     grads_in_partition (~2), norm (~2); ZeRO-1 also walks every grad into the bucket at the boundary (+4)
#   ZeRO-3 adds the per-module pre/post forward/backward fetch + release coordinator (~32)
DS_OPS_PER_TENSOR = {0: 13, 1: 14, 2: 10, 3: 42}
DS_FIXED_S = {0: 0.0, 1: 0.02, 2: 0.02, 3: 0.02}   # ZeRO optimizer bookkeeping per step (epilogue, hook counts)
OVERLAP_LEFT = 0.3         # share of the shorter of host/GPU work that does not hide behind the other
PCIE_GBPS = 25.0           # per-GPU host link for offload (PCIe Gen4 x16, achieved)
CPU_ADAM_PARAMS_PER_S = 4e8  # DeepSpeedCPUAdam per GPU process (AVX-512, ~8 cores each)

# optimizer HBM bytes per parameter on this GPU, read + written (fp32 master, bf16 model):
#   torch foreach AdamW: mul_ 8, lerp_ 12, mul_ 8, addcmul_ 16, sqrt 8, div_ 8, add_ 8, addcdiv_ 16 = 84
ADAMW_FOREACH_BYTES = 84
ADAMW_FUSED_BYTES = 28     # torch fused AdamW: read p, g, m, v; write p, m, v (fp32)
UNFUSED_EXTRA_BYTES = 34   # ZeRO-0 per-tensor: amax+amin 4, norm 10, upcast 6, unscale 8, downcast 6
ZERO_EXTRA_BYTES = 28      # ZeRO-1/2/3 flat: flatten 4, upcast 6, norm 4, unscale 8, downcast 6


@lru_cache(maxsize=8192)
def n_param_tensors(model: ModelSpec, layers: int, has_emb: bool, has_head: bool) -> int:
    per_layer = 12 if model.arch == "gpt2" else 9
    if model.arch == "llama" and model.attention_bias:
        per_layer += 4
    return layers * per_layer + (2 if has_emb and model.arch == "gpt2" else int(has_emb)) + (
        (2 if model.arch == "gpt2" else 1) if has_head else 0) + (1 if has_head and not model.tied_embeddings else 0)


def estimate_time(model: ModelSpec, cluster: Cluster, layout: Layout, training: Training) -> TimeBreakdown:
    gpu = cluster.gpu
    m, pp, tp, dp = layout.grad_accum, layout.pp, layout.tp, layout.dp
    z = int(layout.zero_stage)
    engine = training.engine
    sp = training.sequence_parallel
    shape = stage_shape(model, tp, pp, True, sp)
    last = stage_shape(model, tp, pp, False, sp)
    # the slower stage sets the pipeline's pace: the first (embedding) or the last (head + loss)
    mb_gpu = max(microbatch_gpu_s(gpu, model, s.layers, layout.micro_batch, training.seq_len, tp,
                                  training.precision, engine, s.has_head, layout.checkpointing, sp)
                 for s in ((shape, last) if pp > 1 else (shape,)))
    ops = shape.layers * OPS_PER_LAYER + OPS_HEAD
    ckpt_host = shape.layers * (CKPT_BLOCK_S + 16 * HOST_OP_S) if layout.checkpointing == "full" else 0.0
    mb_host = ops * HOST_OP_S + ckpt_host
    gpu_fb, host_fb = m * mb_gpu, m * (mb_host if engine == "torch" else mb_host)
    tensors = n_param_tensors(model, shape.layers, shape.has_embedding, shape.has_head)
    local = shape.params // (dp if z >= 1 else 1)
    bw = gpu.hbm_gbps * 1e9 * HBM_EFFICIENCY
    act_bytes = 2 if training.precision in ("bf16", "fp16") else 4
    offload_s = 0.0
    if engine == "torch":
        opt_gpu, opt_host_serial, ds_host = shape.params * ADAMW_FUSED_BYTES / bw, 10 * TENSOR_OP_S, 0.0
    else:
        ds_host = DS_FIXED_S[z] + tensors * DS_OPS_PER_TENSOR[z] * TENSOR_OP_S
        if layout.offload != "none":
            cpu_params = local
            offload_s = cpu_params / CPU_ADAM_PARAMS_PER_S + 6 * cpu_params / (PCIE_GBPS * 1e9)
            opt_gpu = 0.0
        elif z == 0:
            opt_gpu = shape.params * (ADAMW_FOREACH_BYTES + UNFUSED_EXTRA_BYTES) / bw
        else:
            opt_gpu = local * (ADAMW_FOREACH_BYTES + ZERO_EXTRA_BYTES) / bw
        opt_host_serial = 0.0
        if z == 0:   # per-tensor .item() syncs: the step's host work cannot overlap the GPU
            opt_host_serial, ds_host = ds_host + tensors * SYNC_S, 0.0
    # forward/backward + ZeRO host work race the GPU; what does not hide is a share of the shorter one
    host = host_fb + ds_host
    overlapped_opt = opt_gpu if (z != 0 or engine == "torch") else 0.0
    device = gpu_fb + overlapped_opt
    race = max(host, device) + OVERLAP_LEFT * min(host, device)
    compute_s = gpu_fb
    optimizer_s = opt_gpu + opt_host_serial
    overhead_s = race - device          # host time (Python, hooks, launches) the GPU waits for
    knobs = zero_knobs(model.hidden, z, training.zero_buckets, gpu.name.upper() != "CPU")
    comm = step_comm(model, cluster, layout, shape.params, training.seq_len, act_bytes, knobs.reduce_bucket)
    # backward is ~2/3 of a micro-batch's work; ZeRO-1 reduces only during the boundary micro-batch's
    backward_s = (mb_gpu if z == 1 else gpu_fb) * 2 / 3
    hidden = min(comm.dp_overlappable_s, backward_s) if (knobs.overlap_comm or z == 3) else 0.0
    dp_s = comm.dp_s - hidden
    bubble = (pp - 1) * mb_gpu if pp > 1 else 0.0          # 1F1B: (p-1) micro-batch slots idle
    return TimeBreakdown(compute_s=compute_s, optimizer_s=optimizer_s, dp_comm_s=dp_s, tp_comm_s=comm.tp_s,
                         pp_comm_s=comm.pp_s, bubble_s=bubble, offload_s=offload_s, overhead_s=overhead_s,
                         comm_bytes=comm.dp_bytes + comm.tp_bytes + comm.pp_bytes)
