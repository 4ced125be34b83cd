"""Peak memory per GPU under Megatron-core, as its source allocates it.

Model states (megatron/core/distributed/param_and_grad_buffer.py, optimizer/distrib_optimizer.py): the
bf16/fp16 weights live in one contiguous parameter buffer per bucket group (2 B/param); gradients
accumulate in a contiguous main-grad buffer, fp32 for bf16 (validate_args turns on
accumulate_allreduce_grads_in_fp32) and the parameters' dtype for fp16 (2 B/param; the fp16 optimizer
upcasts them at the step); the optimizer keeps an fp32 master
copy and Adam's two moments (12 B/param) — sharded over the data-parallel-with-context-parallel group by
the distributed optimizer (--use-distributed-optimizer, zero_stage 1 here), whole otherwise. That is
megatron/training/theoretical_memory_usage.py's 18 B/param, or 6 + 12/(dp·cp). ZeRO-2/3 are Megatron-FSDP
(fsdp.py): 2 + 16/(dp·cp) and 18/(dp·cp) B/param plus the gathered layers and in-flight gradient buckets.

Activations per layer and micro-batch (Korthikanti et al. 2022, Table 2, counted tensor by tensor for
flash attention, which saves q, k, v, the output and a logsumexp instead of the a·s² scores): the tensors
that sequence parallelism splits over tp (norm inputs, the inputs of the column-parallel GEMMs, dropout
masks) and the ones tensor parallelism always splits (q, k, v, attention output, the MLP's). Context
parallelism gives each rank seq/cp tokens. Full recompute keeps each layer's input only; "selective"
recomputes core attention, which flash attention does not store anyway. The first pipeline stage holds
min(pp, m) micro-batches (1F1B), times 1 + (pp-1)/(pp·vpp) when interleaved (theoretical_memory_usage.py's
interleaved_schedule_memory_penalty, which is what the schedule's warm-up keeps: 2(pp-1) + (vpp-1)·pp + 1
chunks of L/vpp layers). The last stage holds the vocabulary-parallel cross-entropy: tensor_parallel/
cross_entropy.py upcasts the logits to fp32 and saves exp(logits) (4 B), its backward works in place and
hands the output layer a bf16 gradient (2 B).
"""
from __future__ import annotations

from ..activations import LN_STAT_BYTES, layer_backward_working_bytes
from ..cluster import Cluster
from ..estimate import MemoryBreakdown, Training
from ..layout import Layout
from ..memory import ALLOCATOR_EXCESS, cuda_runtime_bytes
from ..model import ModelSpec
from ..moe import moe_activation_extra_bytes, selective_saving_bytes
from ..precision import fp8_element_bytes, is_fp8, model_bytes, weight_workspace_bytes
from ..stage import stage_shape
from .fsdp import fsdp_model_states, uses_fsdp

DROPOUT_MASK_BYTES = 1     # torch's fused dropout keeps a bool mask per element (GPT recipes: dropout 0.1)


def grad_bytes(precision: str) -> int:
    """Bytes per gradient in the main-grad buffer (and on the wire): fp32 for bf16 and fp32 training, the
    parameters' fp16 otherwise (distributed_data_parallel.py: grad dtype = fp32 if
    accumulate_allreduce_grads_in_fp32 else param dtype)."""
    return 2 if precision == "fp16" else 4


def uses_dropout(model: ModelSpec) -> bool:
    """Megatron GPT recipes train with hidden/attention dropout 0.1; Llama-style recipes set both to 0."""
    return model.arch == "gpt2"


def layer_activation_bytes(model: ModelSpec, tokens: int, tp: int, sp: bool, act_bytes: int,
                           fp8_bytes: float = 0.0) -> float:
    """Bytes one layer saves for backward for `tokens` tokens on this rank (no recompute). fp8_bytes > 0: the
    FP8 GEMMs save their inputs in FP8 (planner/precision.py): the norm outputs in place of bf16 ones, separate
    FP8 copies of the attention output and of the activation output (their bf16 originals stay saved too)."""
    h, q = model.hidden, model.n_heads * model.head_dim
    kv, f = model.n_kv_heads * model.head_dim, model.ffn_hidden
    gin = fp8_bytes or act_bytes                          # a saved GEMM input
    masks = 2 * h * DROPOUT_MASK_BYTES if uses_dropout(model) else 0   # after attention and after the MLP
    # norm inputs (2), inputs of the QKV and fc1 GEMMs (2): split over tp only with sequence parallelism
    seq_split = 2 * h * act_bytes + 2 * h * gin + masks + 2 * LN_STAT_BYTES
    # fc1 out + GeLU out (fc2's input); SwiGLU: gate, up, product
    mlp = (1 if model.arch == "gpt2" else 2) * f * act_bytes + f * gin
    attn_out = q * act_bytes + (q * fp8_bytes)            # flash attention's output (+ the projection's FP8 copy)
    heads = model.n_heads / tp
    tp_split = ((q + 2 * kv) * act_bytes + attn_out) / tp + mlp / tp + 4 * heads   # q, k, v, attn out; MLP; lse
    return tokens * (seq_split / (tp if sp else 1) + tp_split)


def megatron_memory(model: ModelSpec, cluster: Cluster, layout: Layout, training: Training) -> MemoryBreakdown:
    """The worst of the first and the last pipeline stage (the first holds the in-flight micro-batches, the
    last the logits); each at its peak, the start of the backward of the last micro-batch."""
    best = None
    for first in ((True, False) if layout.pp > 1 else (True,)):
        parts = _stage_peak(model, cluster, layout, training, first)
        if best is None or sum(parts) > sum(best):
            best = parts
    params, grads, optimizer, acts, other = best
    return MemoryBreakdown(params, grads, optimizer, acts, other, cluster.gpu.memory_bytes,
                           reserved_headroom_bytes=int(ALLOCATOR_EXCESS * (acts + other)))


def _stage_peak(model: ModelSpec, cluster: Cluster, layout: Layout, training: Training,
                first: bool) -> tuple[int, int, int, int, int]:
    tp, pp, sp = layout.tp, layout.pp, layout.sequence_parallel
    stages = layout.stage_layers(model.n_layers)
    shape = stage_shape(model, tp, pp, first, True, stages[0] if first else stages[-1], layout.ep, layout.etp)
    p = shape.params
    low = training.precision != "fp32"
    act_b = model_bytes(training.precision)
    fp8_b = fp8_element_bytes(training.precision) if is_fp8(training.precision) else 0.0
    params = act_b * p + weight_workspace_bytes(model, shape.layers, tp, training.precision)   # + cached FP8 weights
    grads = grad_bytes(training.precision) * p
    opt_per_param = 12 if low else 8          # fp32 master (mixed precision only) + exp_avg + exp_avg_sq
    shards = layout.dp_cp if int(layout.zero_stage) >= 1 else 1
    optimizer = opt_per_param * (p - shape.expert_params) // shards
    # routed experts: sharded over the expert-data-parallel group, world/(etp·ep·pp) (parallel_state.py)
    optimizer += opt_per_param * shape.expert_params // (layout.expert_dp("megatron") if shards > 1 else 1)
    tokens = layout.micro_batch * training.seq_len // layout.cp
    per_layer = layer_activation_bytes(model, tokens, tp, sp, act_b, fp8_b)
    m = layout.grad_accum
    inflight = 1.0
    if first and pp > 1:
        inflight = min(pp, m) * ((1 + (pp - 1) / (pp * layout.vpp)) if layout.vpp > 1 else 1.0)
    work = layer_backward_working_bytes(model, tokens, tp, act_b)
    if layout.checkpointing == "full":
        saved = tokens * model.hidden * act_b / (tp if sp else 1)   # each layer's input (uniform, 1 layer)
        work += per_layer                                           # the layer recomputed for its backward
    else:
        saved = per_layer
    if model.is_moe and layout.checkpointing == "selective":    # + layernorm, mla_up_proj, moe_act (planner/moe.py)
        dense_saving, moe_saving = selective_saving_bytes(model, tokens, tp, layout.etp, sp, act_b)
        saved -= dense_saving
    acts = inflight * shape.layers * saved + work
    if shape.moe_layers:     # routed tokens, router, experts' MLP tensors (planner/moe.py)
        extra = moe_activation_extra_bytes(model, tokens, tp, layout.etp, act_b, sp, "megatron")
        if layout.checkpointing == "selective":
            extra -= moe_saving
        acts += extra if layout.checkpointing == "full" else inflight * shape.moe_layers * extra
    if uses_fsdp(layout):    # Megatron-FSDP, ZeRO-2/3: sharded weights and grads, gathered layers (fsdp.py)
        params, grads, optimizer = fsdp_model_states(model, layout, shape, first, act_b, grad_bytes(training.precision),
                                                     opt_per_param, saved)
        params += weight_workspace_bytes(model, shape.layers, tp, training.precision)
    other = cuda_runtime_bytes(cluster.gpu)
    if shape.has_head:
        vshard = tp
        final_norm = tokens * model.hidden * act_b * 2 / (tp if sp else 1)
        acts += final_norm
        other += (4 + 2) * tokens * model.vocab // vshard       # fp32 exp(logits) + the bf16 gradient
    return int(params), int(grads), int(optimizer), int(acts), int(other)
