"""Step time under Megatron-core: GPU work per micro-batch, the pipeline bubble, and the communication each
parallel dimension exposes, read from megatron/core's schedules and layers.

- GPU work: the same kernel-by-kernel model as the DeepSpeed engine (planner/gpu_time.py) with Megatron's
  fused memory-bound kernels (fused LayerNorm, bias-GeLU/SwiGLU, bias-dropout-add: one pass each, the
  elementwise model of planner/compiled.py) and the vocabulary-parallel head. Context parallelism gives
  each rank seq/cp tokens of every GEMM and 1/cp of the causal attention work (load-balanced chunks).
- Pipeline (pipeline_parallel/schedules.py): 1F1B idles (pp-1) micro-batch slots of the stage's work,
  interleaving divides that by vpp; the slowest stage sets the pace.
- Tensor parallel (tensor_parallel/layers.py, mappings.py): without sequence parallelism 2 all-reduces of
  the activations forward and 2 backward per layer; with it all-gather/reduce-scatter pairs (the same
  bus volume) and the all-gather of the saved input redone in backward. Forward collectives sit on the
  critical path; the backward input-gradient collective and the redone all-gather run asynchronously
  beside the weight-gradient GEMM (LinearWithGradAccumulationAndAsyncCommunication, which is why
  CUDA_DEVICE_MAX_CONNECTIONS=1 is required), so only what outlasts that GEMM shows (Training.
  tp_backward_overlap False: the synchronous all-reduce of Megatron-LM before September 2021).
- Data parallel (distributed/distributed_data_parallel.py, param_and_grad_buffer.py): gradients are
  reduced in fp32 (the main-grad buffer's dtype) bucket by bucket during the last micro-batch's backward
  (overlap_grad_reduce); the distributed optimizer reduce-scatters them and all-gathers the updated bf16
  weights during the next forward (overlap_param_gather). What outlasts the compute it hides behind shows;
  with Training.overlap_grad_reduce False all of it does.
- Context parallel (Transformer Engine's attention/dot_product_attention/context_parallel.py, --cp-comm-type):
  p2p passes each rank's K/V chunk around the ring (cp-1 steps forward, K/V and their gradients backward),
  overlapped with the attention of the chunk it holds; a2a all-to-alls q, k, v and the output over the heads
  (and their gradients), allgather gathers K/V forward and backward and reduce-scatters dK/dV: both exposed.
- Optimizer: a fused Adam over the rank's fp32 shard, the gradient norm, and zeroing the grad buffer.
"""
from __future__ import annotations

from math import ceil

from ..cluster import Cluster
from ..comm import all_to_all_s, group_bandwidth
from ..estimate import TimeBreakdown, Training
from ..gpu_time import attention_s, gemm_s, layer_gemms, microbatch_gpu_s
from ..layout import Layout
from ..model import ModelSpec
from ..moe import expert_compute_s, moe_comm_s
from ..precision import attention_precision, fp8_element_bytes, is_fp8, model_bytes, weight_cast_bytes
from ..stage import stage_shape
from ..timing import HOST_OP_S, OVERLAP_LEFT
from .fsdp import fsdp_comm_s, uses_fsdp
from .memory import grad_bytes

# Unfused core attention, HBM bytes per score element (one head's s x s matrix) outside the GEMMs (gemm_s
# counts each GEMM's own reads and writes of the scores), fp16/bf16 with dropout: forward, the fused
# scale-mask-softmax reads and writes the scores (4), dropout reads them and writes the result and its mask
# (5); backward, dropout's backward (5), softmax's backward reads P and dP and writes dS (6)
UNFUSED_FWD_BYTES, UNFUSED_BWD_BYTES = 9, 11
HOST_OPS_PER_LAYER = 40     # fused kernels + autograd nodes of a Megatron block, forward + backward
ADAM_BYTES = 32             # fused Adam on the fp32 shard: read grad, master, m, v (16), write master, m, v (12),
#                             write the bf16 weight (2), and the norm's read of the grad (~2 amortised)


def megatron_time(model: ModelSpec, cluster: Cluster, layout: Layout, training: Training) -> TimeBreakdown:
    gpu = cluster.gpu
    tp, pp, cp, m, sp = layout.tp, layout.pp, layout.cp, layout.grad_accum, layout.sequence_parallel
    stages = layout.stage_layers(model.n_layers)
    act_b = model_bytes(training.precision)
    attn_prec = attention_precision(training.precision)   # core attention stays bf16 under FP8
    seq_r = training.seq_len // cp                       # tokens of each sequence on this rank
    tokens = layout.micro_batch * seq_r

    def stage_s(layers: int, has_head: bool) -> float:
        t = microbatch_gpu_s(gpu, model, layers, layout.micro_batch, seq_r, tp, training.precision, "deepspeed",
                             has_head, layout.checkpointing, sp, True, vocab_parallel=True)
        if cp > 1:   # causal attention over the whole sequence, split over cp ranks (not (s/cp)^2)
            redo = 9 / 7 if layout.checkpointing == "full" else 1.0
            full = attention_s(gpu, model, layout.micro_batch, training.seq_len, tp, attn_prec) / cp
            t += layers * redo * (full - attention_s(gpu, model, layout.micro_batch, seq_r, tp, attn_prec))
        return t

    if training.attention == "unfused":
        flash = attention_s(gpu, model, layout.micro_batch, training.seq_len, tp, attn_prec) / cp
        fwd, bwd = unfused_attention_s(gpu, model, layout.micro_batch, training.seq_len, tp, attn_prec)
        recompute = fwd if layout.checkpointing in ("full", "selective") else 0.0
        flash_recompute = flash * 2 / 7 if layout.checkpointing in ("full", "selective") else 0.0
        attention_delta = (fwd + bwd + recompute) / cp - flash - flash_recompute
    else:
        attention_delta = 0.0

    def stage_total(layers: int, has_head: bool) -> float:
        return stage_s(layers, has_head) + layers * attention_delta

    starts = [sum(stages[:i]) for i in range(pp)]
    moe_in = [model.moe_layers_in(a, a + n) for a, n in zip(starts, stages)]
    moe_s = moe_c = moe_b = 0.0
    if model.is_moe:     # grouped-GEMM experts, router, permutation; the dispatch/combine all-to-all (planner/moe.py)
        moe_s = expert_compute_s(gpu, model, tokens, tp, layout.ep, layout.etp, sp, training.precision, "megatron",
                                 layout.checkpointing)
        moe_c, moe_b = moe_comm_s(cluster, model, tokens, tp, layout.ep, layout.etp, sp, act_b, layout.etp,
                                  layout.checkpointing)
    mb_stage = [stage_total(n, i == pp - 1) + moe_in[i] * (moe_s + moe_c) for i, n in enumerate(stages)]
    mb_gpu = max(mb_stage)
    layers = max(stages)
    mb_host = (layers * HOST_OPS_PER_LAYER + 30) * HOST_OP_S * gpu.host_overhead
    bw_hbm = gpu.hbm_gbps * 1e9 * gpu.hbm_efficiency
    # FP8: every GEMM weight quantized once per step, on the first micro-batch (planner/precision.py)
    compute = m * mb_gpu + weight_cast_bytes(model, max(stages), tp, training.precision) / bw_hbm
    host = m * mb_host
    overhead = max(host, compute) + OVERLAP_LEFT * min(host, compute) - compute
    bubble = (pp - 1) / layout.vpp * mb_gpu if pp > 1 else 0.0

    # ---- tensor parallel, per layer and micro-batch (bus bytes of one collective over the activations)
    tp_s = tp_bytes = 0.0
    if tp > 1:
        bw, lat = group_bandwidth(cluster, tp, 1)
        unit = (tp - 1) / tp * tokens * model.hidden * act_b          # one all-gather or reduce-scatter
        # FP8 with SP: the GEMM inputs are quantized before their all-gather (forward, and redone in backward)
        ag = fp8_element_bytes(training.precision) / act_b if sp and is_fp8(training.precision) else 1.0
        shapes = layer_gemms(model, tokens, tp)
        wgrad = sum(gemm_s(gpu, k, n, mm, training.precision) for mm, n, k in shapes)
        fwd_units = 2 + 2 * ag if sp else 4                            # AR = RS + AG: 2 AR or 2 (AG + RS)
        bwd_exposed = 2 if sp else 0                                   # row-parallel's AG of the output grad
        bwd_hidden = 4 + (2 * ag if sp else 0)                         # input-grad AR/RS, redone AG (async)
        redo = fwd_units if layout.checkpointing == "full" else 0      # the recomputed forward's collectives
        calls = (4 if not sp else 8) + (2 if sp else 0) + ((2 if not sp else 4) if redo else 0)
        hidden_by = wgrad if training.tp_backward_overlap else 0.0
        per_layer = ((fwd_units + bwd_exposed + redo) * unit / bw + max(0.0, bwd_hidden * unit / bw - hidden_by)
                     + calls * lat)
        tp_s = m * layers * per_layer
        tp_bytes = m * layers * (fwd_units + bwd_exposed + bwd_hidden + redo) * unit

    # ---- context parallel (Transformer Engine's context_parallel.py, by Training.cp_comm_type)
    cp_s = cp_bytes = 0.0
    if cp > 1:
        bw, lat = group_bandwidth(cluster, cp, tp)
        kv = tokens * 2 * model.n_kv_heads * model.head_dim * act_b / tp   # this rank's K and V
        forwards = 2 if layout.checkpointing == "full" else 1               # + the recomputed forward's exchange
        if training.cp_comm_type == "a2a":
            # all-to-all of q, k, v before the attention and of its output after (then dout, dq, dk, dv):
            # each rank keeps 1/cp of what it holds; synchronous around the attention
            q = tokens * model.n_heads * model.head_dim * act_b / tp
            cp_bytes = m * layers * (forwards + 1) * (cp - 1) / cp * (2 * q + kv)
            cp_s = m * layers * (forwards + 1) * sum(all_to_all_s(cluster, cp, tp, t) for t in (q, kv / 2, kv / 2, q))
        elif training.cp_comm_type == "allgather":
            # K/V all-gathered forward (and again backward), dK/dV reduce-scattered: "exposed" (TE's docstring)
            cp_bytes = m * layers * (forwards + 2) * (cp - 1) * kv
            cp_s = cp_bytes / bw + m * layers * 2 * (forwards + 2) * lat
        else:
            # the K/V ring (p2p): K,V forward; K,V and dK,dV backward, hidden behind the local chunk's attention
            ring = 3 * (cp - 1) * kv
            attn = attention_s(gpu, model, layout.micro_batch, training.seq_len, tp, attn_prec) / cp
            cp_s = m * layers * (max(0.0, ring / bw - attn) + 3 * (cp - 1) * lat)
            cp_bytes = m * layers * ring

    # ---- data parallel (and cp: the weights are the same on dp·cp ranks)
    shape = stage_shape(model, tp, pp, True, True, stages[0], layout.ep, layout.etp)
    p = shape.params
    group = layout.dp_cp
    dp_s = dp_bytes = 0.0
    distributed = int(layout.zero_stage) >= 1
    if group > 1 and uses_fsdp(layout):   # Megatron-FSDP (ZeRO-2/3): per-layer gathers, per-micro-batch reduce-scatters
        dp_s, dp_bytes = fsdp_comm_s(cluster, model, layout, shape, act_b, grad_bytes(training.precision), mb_gpu / 3,
                                     mb_gpu * 2 / 3)
    elif group > 1:
        bw, lat = group_bandwidth(cluster, group, tp)
        frac = (group - 1) / group
        grads = frac * grad_bytes(training.precision) * p * (1 if distributed else 2)   # RS, or all-reduce
        gather = frac * act_b * p if distributed else 0.0               # updated weights, all-gathered
        buckets = max(1, -(-p // 40_000_000))                           # DDP's 40M-element buckets
        reduce_s = grads / bw + buckets * lat
        gather_s = gather / bw + (buckets * lat if distributed else 0.0)
        # the last micro-batch's backward and the next step's first forward hide them when overlapped
        # (overlap_param_gather needs overlap_grad_reduce: Megatron's validate_args)
        backward = mb_gpu * 2 / 3 if training.overlap_grad_reduce else 0.0
        forward = mb_gpu / 3 if training.overlap_grad_reduce else 0.0
        dp_s = max(0.0, reduce_s - backward) + max(0.0, gather_s - forward)
        dp_bytes = grads + gather

    # ---- pipeline point-to-point: each micro-batch's activation and gradient across each stage boundary
    pp_s = pp_bytes = 0.0
    if pp > 1:
        bw, lat = group_bandwidth(cluster, pp, layout.dp * tp * cp)
        msg = tokens * model.hidden * act_b / (tp if sp else 1)
        pp_bytes = 2 * m * layout.vpp * msg
        pp_s = pp_bytes / bw + 2 * m * layout.vpp * lat

    local = (p - shape.expert_params) // (group if distributed else 1) + shape.expert_params // (
        layout.expert_dp("megatron") if distributed else 1)
    optimizer = (local * ADAM_BYTES + 4 * p) / bw_hbm                    # + zeroing the fp32 grad buffer
    # the all-to-all sits inside each micro-batch's critical path (in mb_gpu for the bubble); report it apart
    ep_s = m * max(moe_in) * moe_c
    return TimeBreakdown(compute_s=compute - ep_s, optimizer_s=optimizer, dp_comm_s=dp_s, tp_comm_s=tp_s + cp_s,
                         pp_comm_s=pp_s, bubble_s=bubble, overhead_s=overhead,
                         comm_bytes=int(tp_bytes + cp_bytes + dp_bytes + pp_bytes + m * max(moe_in) * moe_b),
                         ep_comm_s=ep_s)


def batched_gemm_s(gpu, batch: int, m: int, n: int, k: int, precision: str) -> float:
    """Seconds of `batch` equal (m x k) @ (k x n) matmuls launched as one batched GEMM (cuBLAS strided
    batched, as Megatron's unfused attention calls it): the tiles of all of them spread over the SMs
    together, so there is no per-matrix wave loss, only the edge tiles' waste (128 x 128 tiles; a short
    side pads to the tile). A roofline: FLOPs at the matmul ceiling or bytes at HBM speed, whichever is
    longer (with K = head_dim the score matrix's HBM traffic is what bounds these)."""
    elem = 4 if precision == "fp32" else 2
    useful = (m * n) / (ceil(m / 128) * 128 * ceil(n / 128) * 128)
    peak = gpu.peak_tflops(precision) * 1e12 * gpu.matmul_efficiency * useful
    flops_s = 2.0 * batch * m * n * k / peak
    bytes_s = batch * elem * (m * k + k * n + m * n) / (gpu.hbm_gbps * 1e9 * gpu.hbm_efficiency)
    return max(flops_s, bytes_s)


def unfused_attention_s(gpu, model: ModelSpec, micro_batch: int, seq: int, tp: int, precision: str
                        ) -> tuple[float, float]:
    """(forward, backward) seconds of Megatron's unfused core attention for one layer: the full s x s score
    matrix of every head on this rank (the causal mask is applied, not skipped) as batched GEMMs with
    K = head_dim or K = seq, and the memory-bound softmax/dropout passes over it."""
    heads = micro_batch * model.n_heads // tp
    d = model.head_dim
    scores = heads * seq * seq
    bw = gpu.hbm_gbps * 1e9 * gpu.hbm_efficiency
    qk = batched_gemm_s(gpu, heads, seq, seq, d, precision)        # QK^T, and dP = dO V^T backward
    av = batched_gemm_s(gpu, heads, seq, d, seq, precision)        # PV, and dV, dQ, dK backward
    return qk + av + scores * UNFUSED_FWD_BYTES / bw, qk + 3 * av + scores * UNFUSED_BWD_BYTES / bw
