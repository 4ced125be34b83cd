"""Step time for one layout: GPU work (gpu_time.py), host work, optimizer, communication (comm.py), bubble.

A step is a race between the GPU and the Python host that feeds it. Eager PyTorch issues kernels
asynchronously, so forward + backward cost max(GPU time, host issue time) — small models and small
micro-batches are host bound, which is why GPT-2 124M at micro-batch 1 runs far below the matmul
ceiling. DeepSpeed adds host work per parameter tensor (gradient hooks, per-tensor norm/overflow checks,
ZeRO-3's gather/release per module) that partly overlaps the GPU's backward; ZeRO-0's unfused bf16
optimizer synchronizes once per tensor (CheckOverflow.has_overflow_serial), so its step is serialized.
ZeRO-1/2's step() waits on the device twice (the overflow flag's .item(), the norm's bool()), so the
per-tensor float64 norm loop and the flat upcast/clip/AdamW/downcast run after the backward, hiding nothing.
Context parallelism is DeepSpeed-Ulysses (ulysses.py): layers on seq/cp tokens, attention over the whole
sequence on heads/cp, 8 synchronous all-to-alls per layer and micro-batch, ZeRO over dp·cp ranks.

Host constants are per eager op on the calibration host (../shared/calibration, H200 node, torch 2.11,
DeepSpeed 0.19.8): HOST_OP_S from plain PyTorch at micro-batch 1 (host bound), op counts read off the
engine's code paths (counted per parameter tensor). Calibrated on the 124M points: HOST_OP_S, TENSOR_OP_S,
CKPT_BLOCK_S, DS_FIXED_S, OVERLAP_LEFT; VIEW_OP_S (a call that launches nothing) is an estimate. Bytes and
op counts are read off the code, not fitted.
"""
from __future__ import annotations

from functools import lru_cache

from .cluster import Cluster
from .comm import step_comm
from .ds_knobs import zero_knobs
from .estimate import TimeBreakdown, Training
from .gpu_time import KERNEL_GPU_S, microbatch_gpu_s
from .compiled import kernels as compiled_kernels
from .layout import Layout, compile_refusal
from .model import ModelSpec
from .moe import expert_compute_s, moe_comm_s
from .precision import attention_precision, model_bytes
from .stage import stage_shape
from . import ulysses

OPS_PER_LAYER = 16 + 30    # forward ops + backward autograd nodes of one block (norms, matmuls, SDPA, adds)
MOE_OPS = 40               # deepspeed/moe/sharded_moe.py per MoE layer, forward + backward: top-k gating (softmax,
#                            topk, one_hot, cumsum, capacity), two einsums, two _AllToAll, reshapes
OPS_HEAD = 30              # embedding, final norm, logits, fp32 cross-entropy, forward + backward
# torch autocast (plain PyTorch AMP, fp32 weights) adds casts the bf16 DeepSpeed engine never issues: per block the
# weight and bias of 4 linears and the fp32 LayerNorm outputs feeding 2 of them (10 casts), each with its
# ToCopyBackward node (10); the head adds the tied weight's and the final norm output's casts (4)
AUTOCAST_OPS_PER_LAYER, AUTOCAST_OPS_HEAD = 20, 4
HOST_OP_S = 17.5e-6        # one eager op: Python module call + dispatch + autograd record + launch; calibrated on
#                            plain PyTorch AMP at micro-batch 1 (host bound) with the autocast casts counted
CKPT_BLOCK_S = 1.5e-3      # non-reentrant checkpoint per block (saved-tensor hooks, RNG state, recompute frame):
#                            the mean of the measured ckpt-minus-plain step times at micro-batch 1, per block
SYNC_S = 30e-6             # a host<-device synchronization (bool(tensor), .item()) on an idle queue
TENSOR_OP_S = 12e-6        # one plain tensor call outside autograd (optimizer loops, hooks' bookkeeping)
# DeepSpeed host work per parameter tensor per step, in plain tensor calls, read off the code paths:
#   ZeRO-0 FP16_UnfusedOptimizer.step: has_inf_or_nan (amax, amin, 2 isfinite, and, not; bool() syncs),
#     get_weight_norm (float, norm, pow, add), upcast, unscale, downcast copy = 13 calls + 1 sync
#   ZeRO-3 adds the per-module pre/post forward/backward fetch + release coordinator (~32) to ZeRO-1/2's 10;
#     its hooks fire in every micro-batch's forward and backward, so ZeRO-3 pays them per micro-batch
DS_OPS_PER_TENSOR = {0: 13, 3: 42}
DS_FIXED_S = {0: 0.0, 1: 0.02, 2: 0.02, 3: 0.02}   # ZeRO engine bookkeeping per step (calibrated, 124M)
VIEW_OP_S = 2e-6           # a narrow/view/.data rebind or a hook's Python bookkeeping: no device dispatch
# Host work per layer and micro-batch of a tensor-parallel layer's four linears beyond the plain linear ops that
# OPS_PER_LAYER counts, as (tensor calls, view calls, collective calls), by Training.tp_linear. nanotron e24d2483
# parallel/tensor_parallel/functional.py, tp_mode REDUCE_SCATTER with tp_linear_async_communication:
#   column (qkv, gate_up) forward: contiguous, async all_gather, empty, split, wait, a second sharded mm (4 views);
#     backward: the recompute all-gather, contiguous, empty, async reduce_scatter, 2 waits (2 views)
#   row (o_proj, down) forward: the reduce-scatter's contiguous + empty; backward: contiguous x2, async all_gather,
#     empty, split x2, wait, a second sharded mm (4 views)
#   = per layer 2 x (6 + 4) + 2 x (2 + 7) = 38 calls, 2 x (4 + 2) + 2 x 4 = 20 views, 2 x (3 + 2) = 10 collectives
TP_LINEAR_HOST = {"plain": (0, 0, 0), "nanotron_async": (38, 20, 10)}
# ZeRO-1/2 (deepspeed/runtime/zero/stage_1_and_2.py, 0.19.8), per parameter tensor: (kernel calls, view calls)
ZERO12_BWD_OPS = (1, 6)        # grad hook -> reduce_independent_p_g_buckets_and_remove_grads: copy_ into the
#                                IPG bucket; narrow, view, view_as, .data swap, hook-count bookkeeping (2)
ZERO12_PARTITION_OPS = (1, 4)  # reduce_ipg_grads -> copy_grads_in_partition: copy_; narrow, view, view_as, .data
ZERO1_WALK_OPS = (0, 4)        # ZeRO-1 reduce_gradients walks every grad into the bucket after backward
OVERFLOW_OPS = (7, 0)          # has_overflow_partitioned_grads_serial (bf16 check_grad_overflow defaults on):
#                                amax, amin, 2 isfinite, logical_and, logical_not, += ; then one .item()
NORM_OPS = (2, 3)              # get_grad_norm_direct (float64): .to(double), vector_norm; .data, .detach,
#                                .to(device); then bool() in is_invalid_grad_norm synchronizes again
REBIND_OPS = (0, 6)            # free_grad_in_param_list x2, _update_model_bit16_weights (narrow+view, 2 .data)
# ZeRO-0 (engine.allreduce_gradients -> buffered_allreduce_fallback, even at dp=1): flatten all grads (2+2 bytes),
# all_reduce, then copy_ each back out of the flat buffer (2+2): per tensor one copy_ and unflatten's views
ZERO0_ALLREDUCE_OPS, ZERO0_ALLREDUCE_BYTES = (1, 3), 8
STEP_FLAT_OPS = 24             # flatten, upcast, clip (4 scalar ops + mul_), foreach AdamW (~10), downcast
OVERLAP_LEFT = 0.3         # share of the shorter of host/GPU work that does not hide behind the other
PCIE_GBPS = 25.0           # per-GPU host link for offload (PCIe Gen4 x16, achieved)
CPU_ADAM_PARAMS_PER_S = 4e8  # DeepSpeedCPUAdam per GPU process (AVX-512, ~8 cores each)

# optimizer HBM bytes per parameter on this GPU, read + written (fp32 master, bf16 model):
#   torch foreach AdamW: mul_ 8, lerp_ 12, mul_ 8, addcmul_ 16, sqrt 8, div_ 8, add_ 8, addcdiv_ 16 = 84
ADAMW_FOREACH_BYTES = 84
ADAMW_FUSED_BYTES = 28     # torch fused AdamW: read p, g, m, v; write p, m, v (fp32)
UNFUSED_EXTRA_BYTES = 34   # ZeRO-0 per-tensor: amax+amin 4, norm 10, upcast 6, unscale 8, downcast 6
ZERO3_EXTRA_BYTES = 28     # ZeRO-3 flat: flatten 4, upcast 6, norm 4, unscale 8, downcast 6
# ZeRO-3 gradient path per micro-batch, even at dp = 1 (stage3.py __add_grad_to_ipg_bucket,
# __avg_scatter_contiguous_grads, partition_grads): copy into the IPG bucket (2+2), div_ by the dp size (2+2),
# cast to the fp32 accumulation dtype (2+4), copy_/add_ into the fp32 partition (4+4, 4+4+4 when accumulating);
# step(): has_overflow runs isinf().any() and isnan().any() over the flat fp32 grads (2 x (4+1+1))
ZERO3_BWD_BYTES, ZERO3_ACCUM_EXTRA_BYTES, ZERO3_OVERFLOW_BYTES = 22, 4, 12
# ZeRO-1/2 bf16 gradient path (stage_1_and_2.py): every stage parameter's grad is copied into the IPG bucket
# (2+2) and divided in place by the dp size in average_tensor (2+2), even at dp=1; the local share is copied
# into grads_in_partition (2+2)
ZERO12_BWD_BYTES, ZERO12_PARTITION_BYTES = 8, 4
# step() on the local partition: overflow amax+amin (2+2), norm in float64 (get_norm_dtype: .to(double) 2+8,
# vector_norm reads 8), flatten (2+2), upcast to fp32 (2+4), clip mul_ (4+4), downcast copy (4+2)
ZERO12_CHECK_BYTES, ZERO12_NORM_BYTES, ZERO12_FLAT_BYTES = 4, 18, 24

@lru_cache(maxsize=8192)
def n_param_tensors(model: ModelSpec, layers: int, has_emb: bool, has_head: bool) -> int:
    per_layer = 12 if model.arch == "gpt2" else 9
    if model.arch == "llama" and model.attention_bias:
        per_layer += 4
    return layers * per_layer + (2 if has_emb and model.arch == "gpt2" else int(has_emb)) + (
        (2 if model.arch == "gpt2" else 1) if has_head else 0) + (1 if has_head and not model.tied_embeddings else 0)


def estimate_time(model: ModelSpec, cluster: Cluster, layout: Layout, training: Training) -> TimeBreakdown:
    gpu = cluster.gpu
    m, pp, tp = layout.grad_accum, layout.pp, layout.tp
    dp = layout.dp_cp     # ZeRO shards and reduces over the dp·cp ranks (the sequence-data-parallel group)
    z = int(layout.zero_stage)
    engine = training.engine
    sp = layout.sequence_parallel
    stages = layout.stage_layers(model.n_layers)
    shape = stage_shape(model, tp, pp, True, sp, stages[0], layout.ep, layout.etp)
    last = stage_shape(model, tp, pp, False, sp, stages[-1], layout.ep, layout.etp)
    # the slower stage sets the pipeline's pace: the first (embedding) or the last (head + loss)
    compiled = training.compile and compile_refusal(layout) is None
    cp, seq_r = layout.cp, training.seq_len // layout.cp      # Ulysses: each rank's layers see seq/cp tokens
    mb_gpu = max(microbatch_gpu_s(gpu, model, s.layers, layout.micro_batch, seq_r, tp,
                                  training.precision, engine, s.has_head, layout.checkpointing, sp, compiled)
                 for s in ((shape, last) if pp > 1 else (shape,)))
    ulysses_s = ulysses_bytes = 0.0
    if cp > 1:      # whole-sequence attention on heads/cp, the exchanges' copies, and the exchanges (synchronous)
        tokens_r, act_b = layout.micro_batch * seq_r, model_bytes(training.precision)
        mb_gpu += shape.layers * (
            ulysses.attention_extra_s(gpu, model, layout.micro_batch, training.seq_len, tp, cp,
                                      attention_precision(training.precision), layout.checkpointing)
            + ulysses.copy_bytes(model, tokens_r, tp, act_b, layout.checkpointing) / (gpu.hbm_gbps * 1e9
                                                                                       * gpu.hbm_efficiency))
        layer_s, layer_b = ulysses.comm_s(cluster, model, layout, tokens_r, act_b, layout.checkpointing)
        ulysses_s, ulysses_bytes = m * shape.layers * layer_s, m * shape.layers * layer_b
    ep_s = ep_bytes = 0.0
    if shape.moe_layers:     # experts, router, dispatch einsums (planner/moe.py) and the all-to-all per MoE layer
        tokens = layout.micro_batch * training.seq_len
        mb_gpu += shape.moe_layers * expert_compute_s(gpu, model, tokens, tp, layout.ep, layout.etp, sp,
                                                      training.precision, engine, layout.checkpointing)
        a2a_s, a2a_b = moe_comm_s(cluster, model, tokens, tp, layout.ep, layout.etp, sp,
                                  model_bytes(training.precision), tp, layout.checkpointing)
        ep_s, ep_bytes = m * shape.moe_layers * a2a_s, m * shape.moe_layers * a2a_b
    autocast = engine == "torch"
    ops = shape.layers * (OPS_PER_LAYER + AUTOCAST_OPS_PER_LAYER * autocast) + OPS_HEAD + AUTOCAST_OPS_HEAD * autocast
    recompute_ops = 16 + AUTOCAST_OPS_PER_LAYER // 2 * autocast        # the block's forward again
    ckpt_host = shape.layers * (CKPT_BLOCK_S + recompute_ops * HOST_OP_S) if layout.checkpointing == "full" else 0.0
    hs = gpu.host_overhead     # a calibration profile's host speed (1.0: the calibration host's)
    ops += shape.moe_layers * (MOE_OPS + 6 * (model.experts // layout.ep))   # gate, einsums, a2a; per local expert
    mb_host = (ops * HOST_OP_S + ckpt_host) * hs
    if compiled:   # the generated wrapper launches each fused kernel (planner/compiled.py), recompute included
        mb_host = compiled_kernels(shape.layers, autocast, layout.checkpointing == "full") * TENSOR_OP_S * hs
    if cp > 1:
        mb_host += shape.layers * _calls(ulysses.host_calls(layout.checkpointing)) * hs
    if tp > 1:      # the TP linears' own host work (a collective call costs at least a plain tensor call)
        calls, views, collectives = TP_LINEAR_HOST[training.tp_linear]
        mb_host += shape.layers * ((calls + collectives) * TENSOR_OP_S + views * VIEW_OP_S) * hs
    gpu_fb, host_fb = m * mb_gpu, m * mb_host
    tensors = n_param_tensors(model, shape.layers, shape.has_embedding, shape.has_head)
    local = shape.params // (dp if z >= 1 else 1)
    bw = gpu.hbm_gbps * 1e9 * gpu.hbm_efficiency
    act_bytes = model_bytes(training.precision)
    offload_s = serial_s = zero_gpu = 0.0
    knobs = zero_knobs(model.hidden, z, training.zero_buckets, not gpu.is_cpu)
    adamw_bytes = ADAMW_FUSED_BYTES if training.fused_step else ADAMW_FOREACH_BYTES
    if engine == "torch":
        opt_gpu, opt_host_serial, ds_host = shape.params * ADAMW_FUSED_BYTES / bw, 10 * TENSOR_OP_S * hs, 0.0
    elif z in (1, 2):
        no_check = training.fused_step and training.precision == "bf16"   # bf16.check_grad_overflow false
        ds_host, zero_gpu, serial_s, opt_gpu = _zero12_step(tensors, shape.params, dp, z, m, bw,
                                                             layout.offload != "none", knobs, hs,
                                                             fused=training.fused_step, overflow_check=not no_check)
        opt_host_serial = 0.0
        if layout.offload != "none":
            offload_s = local / CPU_ADAM_PARAMS_PER_S + 6 * local / (PCIE_GBPS * 1e9)
    else:
        passes = m if z == 3 else 1     # ZeRO-3's fetch/release and grad hooks run in every micro-batch
        ds_host = (DS_FIXED_S[z] + passes * tensors * DS_OPS_PER_TENSOR[z] * TENSOR_OP_S) * hs
        if layout.offload != "none":
            offload_s = local / CPU_ADAM_PARAMS_PER_S + 6 * local / (PCIE_GBPS * 1e9)
            opt_gpu = 0.0
        elif z == 0:
            opt_gpu = shape.params * (adamw_bytes + UNFUSED_EXTRA_BYTES) / bw
        else:
            opt_gpu = local * (adamw_bytes + ZERO3_EXTRA_BYTES + ZERO3_OVERFLOW_BYTES) / bw
            zero_gpu = (m * shape.params * ZERO3_BWD_BYTES + (m - 1) * local * ZERO3_ACCUM_EXTRA_BYTES) / bw
        opt_host_serial = 0.0
        if z == 0:   # per-tensor .item() syncs: the step's host work cannot overlap the GPU
            opt_host_serial, ds_host = ds_host + tensors * SYNC_S * hs, tensors * _calls(ZERO0_ALLREDUCE_OPS) * hs
            zero_gpu = shape.params * ZERO0_ALLREDUCE_BYTES / bw
    # forward/backward + ZeRO host work race the GPU; what does not hide is a share of the shorter one.
    # ZeRO-3's step() starts with has_overflow's .item(), which waits for the backward: its optimizer runs after
    host = host_fb + ds_host
    overlapped_opt = opt_gpu if engine == "torch" else 0.0
    device = gpu_fb + overlapped_opt + zero_gpu + ulysses_s     # the device stream waits on the exchanges
    race = max(host, device) + OVERLAP_LEFT * min(host, device)
    compute_s = gpu_fb
    optimizer_s = (opt_gpu if z not in (1, 2) else 0.0) + opt_host_serial + zero_gpu + serial_s
    overhead_s = race - device          # host time (Python, hooks, launches) the GPU waits for
    comm = step_comm(model, cluster, layout, shape.params, seq_r, act_bytes, knobs.reduce_bucket)
    # backward is ~2/3 of a micro-batch's work; ZeRO-1 reduces only during the boundary micro-batch's
    backward_s = (mb_gpu if z == 1 else gpu_fb) * 2 / 3
    hidden = min(comm.dp_overlappable_s, backward_s) if (knobs.overlap_comm or z == 3) else 0.0
    dp_s = comm.dp_s - hidden
    bubble = (pp - 1) * mb_gpu if pp > 1 else 0.0          # 1F1B: (p-1) micro-batch slots idle
    # the Ulysses exchanges are reported with the tensor-parallel collectives (as Megatron's cp ring is)
    return TimeBreakdown(compute_s=compute_s, optimizer_s=optimizer_s, dp_comm_s=dp_s,
                         tp_comm_s=comm.tp_s + ulysses_s, pp_comm_s=comm.pp_s, bubble_s=bubble,
                         offload_s=offload_s, overhead_s=overhead_s,
                         comm_bytes=int(comm.dp_bytes + comm.tp_bytes + comm.pp_bytes + ep_bytes + ulysses_bytes),
                         ep_comm_s=ep_s)


def _calls(ops: tuple[int, int]) -> float:
    """Host seconds of (kernel-launching tensor calls, view/bookkeeping calls)."""
    return ops[0] * TENSOR_OP_S + ops[1] * VIEW_OP_S


def _zero12_step(tensors: int, stage_params: int, dp: int, z: int, m: int, bw: float,
                 offload: bool, knobs, hs: float = 1.0, fused: bool = False,
                 overflow_check: bool = True) -> tuple[float, float, float, float]:
    """DeepSpeed ZeRO-1/2 gradient handling and step() on one rank, read off stage_1_and_2.py (0.19.8).

    Returns (host seconds that race the forward/backward, GPU seconds that join that race, seconds of the
    step phases that follow a host<-device sync and so hide nothing, of which the optimizer's GPU share).
    Backward: per-parameter hooks copy each grad into the IPG bucket, average_tensor divides the bucket in
    place, reduce_ipg_grads copies the local share into grads_in_partition; with overlap_comm every bucket's
    allreduce_and_copy and the epilogue synchronize the device, and ZeRO-1 reduces from the hooks instead of
    walking the grads after backward. step(): the overflow check
    (per-tensor amax/amin, then .item()), the float64 norm (per-tensor .to(double) + vector_norm, then
    bool()), then flatten, upcast, clip, foreach AdamW and the downcast on the flat fp32 partition.
    hs scales the host seconds (GPUType.host_overhead). fused: torch's fused AdamW instead of foreach;
    overflow_check False (bf16.check_grad_overflow off): no per-tensor check, its .item(), nor the norm's bool().
    """
    local_tensors = -(-tensors // dp)
    local = stage_params // dp
    passes = m if z == 2 else 1      # ZeRO-2 reduces every micro-batch; ZeRO-1 once, at the boundary
    host = DS_FIXED_S[z] + passes * (tensors * _calls(ZERO12_BWD_OPS) + local_tensors * _calls(ZERO12_PARTITION_OPS))
    host += local_tensors * _calls(OVERFLOW_OPS) * overflow_check + (
        tensors * _calls(ZERO1_WALK_OPS) if z == 1 else 0.0) * (not knobs.overlap_comm)
    if knobs.overlap_comm:
        host += passes * (-(-stage_params // max(knobs.reduce_bucket, 1)) + 1) * SYNC_S
    host *= hs
    race_gpu = (passes * (stage_params * ZERO12_BWD_BYTES + local * ZERO12_PARTITION_BYTES)
                + local * ZERO12_CHECK_BYTES * overflow_check) / bw + local_tensors * 2 * KERNEL_GPU_S
    norm_host = local_tensors * (_calls(NORM_OPS) + (SYNC_S if offload else 0.0)) * hs  # offload: .item() per tensor
    norm = max(norm_host, local * ZERO12_NORM_BYTES / bw + local_tensors * 2 * KERNEL_GPU_S) + (
        2 * SYNC_S * hs * overflow_check)
    adamw = ADAMW_FUSED_BYTES if fused else ADAMW_FOREACH_BYTES
    opt_gpu = 0.0 if offload else local * (ZERO12_FLAT_BYTES + adamw) / bw
    opt = max((local_tensors * _calls(REBIND_OPS) + STEP_FLAT_OPS * TENSOR_OP_S) * hs, opt_gpu)
    return host, race_gpu, norm + opt, opt_gpu
