"""Model states (weights, gradients, optimizer) as DeepSpeed 0.19 really allocates them, phase by phase.

Every number below is read off the engine's source (deepspeed/runtime/...) and torch's AdamW:
- ZeRO-0, bf16/fp16, torch AdamW: engine.py picks FP16_UnfusedOptimizer (fp16/unfused_optimizer.py):
  low-precision weights, an fp32 copy per parameter, Adam moments created at construction by a dummy
  step (14 B/param after init); at the step each low-precision grad is copied to fp32 (4 B/param).
- ZeRO-0 under the pipeline engine: BF16_Optimizer (bf16_optimizer.py) with a flat bf16 gradient buffer.
- ZeRO-1/2 (zero/stage_1_and_2.py): a flat low-precision weight buffer, fp32 master partition; Adam
  moments lazily at the first step; reduce buckets of reduce_bucket_size elements (two with
  overlap_comm) allocated at the first gradient hook and freed at the backward epilogue; gradients of
  this partition gathered into grads_in_partition; at the step that partition is flattened and upcast.
- ZeRO-3 (zero/stage3.py): partitioned weights, fp32 master, a persistent flat gradient-partition
  buffer (model dtype) and a persistent reduce bucket (both allocated at init); params under
  stage3_param_persistence_threshold stay whole on every rank; the step upcasts per sub-group.
- torch AdamW foreach (torch/optim/adam.py `_multi_tensor_adam`): `torch._foreach_sqrt(exp_avg_sqs)`
  allocates a full fp32 copy of the second moment of the param group: 4 B/param at the step.
"""
from __future__ import annotations

from functools import lru_cache

from dataclasses import dataclass

from .ds_knobs import ZeroKnobs
from .model import ModelSpec
from .precision import model_bytes
from .stage import StageShape


@dataclass(frozen=True)
class StateBytes:
    """Bytes one rank holds in each phase of a step, by kind (activations come from activations.py)."""

    params: int              # resident low-precision weights (+ ZeRO-3 persistent and gathered)
    optimizer: int           # fp32 master + Adam moments on this GPU
    grads_held: int          # gradient memory alive before a micro-batch's backward starts
    grads_end: int           # gradient memory at the end of backward (incl. the epilogue's copies)
    buffers_bwd: int         # reduce buckets etc. alive during backward only (in "other")
    buffers_always: int      # persistent buffers (ZeRO-3 reduce bucket) (in "other")
    step_grads: int          # gradient memory during the optimizer step
    step_other: int          # optimizer-step temporaries (foreach sqrt)
    gathered: int = 0        # ZeRO-3: full weights gathered for the running module + prefetch (in params)
    grads_persistent: int = 0  # gradient buffers allocated at init and alive in every phase (ZeRO-3)


def persistent_small_params(model: ModelSpec, shape: StageShape, threshold: int) -> int:
    """ZeRO-3 keeps parameters with fewer than `threshold` elements whole (biases, norms)."""
    h, f = model.hidden, model.ffn_hidden
    qkv = (model.n_heads + 2 * model.n_kv_heads) * model.head_dim
    if model.arch == "gpt2":
        vectors = [h, h, qkv, h, h, h, f, h]
    else:
        vectors = [h, h] + ([qkv, h] if model.attention_bias else []) + ([f, f, h] if model.mlp_bias else [])
    per_layer = sum(v for v in vectors if v < threshold)
    final = model.final_norm_params if shape.has_head and h < threshold else 0
    return shape.layers * per_layer + final


@lru_cache(maxsize=8192)
def deepspeed_states(model: ModelSpec, shape: StageShape, dp: int, zero: int, offload: str, precision: str,
                     pp: int, knobs: ZeroKnobs, fp32_grad_accum: bool = False, foreach: bool = True) -> StateBytes:
    """dp: the ranks ZeRO partitions over, the engine's seq_data_parallel_group (dp·cp under Ulysses: engine.py
    passes it as every ZeRO optimizer's and BF16_Optimizer's dp_process_group).
    foreach: torch AdamW's multi-tensor path (CUDA). On CPU torch runs the single-tensor path, whose
    `exp_avg_sq.sqrt() / bias_correction2_sqrt` holds two temporaries of the largest tensor at once."""
    lp = model_bytes(precision)                       # bytes of the model dtype

    def sqrt_temp(group: int, largest: int) -> int:
        return 4 * group if foreach else 8 * largest

    up = 4 if lp < 4 else 0                           # an fp32 upcast copy exists only for mixed precision
    p = shape.params
    tied = model.vocab * model.hidden * lp if (model.tied_embeddings and shape.has_embedding and shape.has_head) else 0
    if fp32_grad_accum and lp < 4 and zero <= 1 and offload == "none":
        # BF16_Optimizer (engine._do_optimizer_sanity_check): a full fp32 gradient buffer from init, the
        # low-precision grads until zero_grad, fp32 master + moments sharded over dp, step reads the
        # buffer in place and adds only the foreach sqrt
        return StateBytes(lp * p, 12 * p // dp, lp * p, lp * p, 0, 0, 4 * p + lp * p,
                          sqrt_temp(p // dp, p // dp), grads_persistent=4 * p)
    if zero == 0:
        if pp > 1 and lp < 4:
            # BF16_Optimizer: flat bf16 weights + flat hp grads (bf16 unless grad_accum_dtype says fp32)
            # the low-precision param grads stay until zero_grad (immediate_grad_update is off by default)
            return StateBytes(lp * p, 12 * p // dp, 2 * lp * p, 2 * lp * p, 0, 0,
                              2 * lp * p + 4 * p // dp, sqrt_temp(p // dp, p // dp))
        opt = (12 if lp < 4 else 8) * p
        allreduce = min(p, knobs.reduce_bucket) * lp if dp > 1 else 0   # engine's buffered_allreduce_fallback
        return StateBytes(lp * p, opt, lp * p, lp * p + 2 * tied, allreduce, 0, lp * p + up * p,
                          sqrt_temp(p, shape.largest_module))
    buckets = (2 if knobs.overlap_comm else 1) * knobs.reduce_bucket * lp
    if zero in (1, 2):
        part = p // dp
        if offload != "none":
            # ZeRO-Offload: fp32 master, moments and fp32 grads live on the CPU; the GPU keeps a staging
            # buffer of the largest parameter (temp_grad_buffer_for_gpu_offload)
            staging = shape.largest_module * lp
            held = lp * p if zero == 1 else 0
            return StateBytes(lp * p, 0, held, held + staging, buckets, 0, 0, 0)
        if zero == 1:
            # full low-precision grads until the boundary; then bucket by bucket into grads_in_partition
            end = lp * p + max(2 * tied, lp * part if knobs.reduce_bucket < p else 0)
            held = lp * p
        else:
            end = max(lp * part, 3 * tied)
            held = lp * part
        # the step flattens + upcasts this partition's grads (2+2+4 B), then Adam holds the fp32 grad and
        # the foreach sqrt (4+4 B): the same 8 B/param either way
        return StateBytes(lp * p, 12 * part, held, end, buckets, 0, 4 * part, sqrt_temp(part, part))
    # ZeRO-3
    small = persistent_small_params(model, shape, knobs.persistence_threshold)
    part = (p - small) // dp
    params = lp * (part + small)
    # partition_parameters.py / parameter_offload.py: after a module runs its weights are released unless
    # they are reused within max_reuse_distance elements (forward's last layers are reused soon by backward),
    # capped by max_live_parameters; plus the running module and the prefetch bucket
    live = min(shape.params, knobs.max_reuse_distance // 2 + shape.largest_module + knobs.prefetch_bucket,
               knobs.max_live + shape.largest_module)
    # all-gather writes the whole flat buffer (every rank's partition, this one's too) next to ds_tensor
    gathered = lp * live if dp > 1 else 0
    if offload == "optimizer+params":
        gathered = lp * live
    if offload == "optimizer+params":
        params = lp * small
    grads = 0 if offload != "none" else lp * (part + small)
    opt = 0 if offload != "none" else 12 * (part + small)
    scatter = knobs.reduce_bucket * lp if dp > 1 else 0    # reduce-scatter staging next to the bucket
    # the step upcasts one sub-group (flat lp + fp32 = 6 B), then Adam holds fp32 grad + sqrt (8 B)
    sub = min(part + small, knobs.sub_group) if offload == "none" else 0
    return StateBytes(params, opt, 0, 0, scatter, knobs.reduce_bucket * lp, grads + 4 * sub, sqrt_temp(sub, sub),
                      gathered, grads_persistent=grads)


@lru_cache(maxsize=8192)
def torch_states(model: ModelSpec, shape: StageShape) -> StateBytes:
    """Plain PyTorch AMP with fused AdamW: fp32 weights, fp32 grads, fp32 moments; no step temporaries."""
    p = shape.params
    return StateBytes(4 * p, 8 * p, 4 * p, 4 * p, 0, 0, 4 * p, 0)
