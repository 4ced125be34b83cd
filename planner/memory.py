"""Peak memory per GPU for one layout: the largest of the step's phases on the worst pipeline stage.

A step goes through phases with different live sets (what torch.cuda.max_memory_allocated() sees):
  loss       end of forward / start of backward: every saved activation + the fp32 logits and their grads
  bwd_top    first gradient hooks: ZeRO-1/2 reduce buckets appear, activations are still all there
  bwd_end    end of backward: all gradients (+ the epilogue's partition copy), activations gone
  step       optimizer step: fp32 grads + the foreach-sqrt temporary, no activations
The peak is the max over phases (not a sum), and the breakdown is the live set of the winning phase.
Model states: model_states.py; activations: activations.py; both cite the sources they follow. Context
parallelism (DeepSpeed-Ulysses, ulysses.py): model states sharded over dp·cp ranks, layers on seq/cp tokens.
"""
from __future__ import annotations

from dataclasses import fields, replace

from .activations import (checkpoint_input_bytes, final_norm_bytes, layer_backward_working_bytes,
                          layer_saved_bytes, loss_peak_bytes, tied_head_grad_bytes)
from .cluster import Cluster, GPUType, MiB
from .ds_knobs import zero_knobs
from .estimate import MemoryBreakdown, Training
from .layout import Layout
from .model import ModelSpec
from .model_states import StateBytes, deepspeed_states, torch_states
from .moe import moe_activation_extra_bytes
from .precision import model_bytes
from .stage import StageShape, stage_shape
from .ulysses import attention_backward_working_bytes, saved_extra_bytes

# The caching allocator reserves beyond the allocated peak in proportion to the memory that comes and goes
# each step (activations, logits, buckets), not the model states: median (peak_reserved - peak_allocated) /
# (peak_allocated - mem_steady) over the H200 calibration's DeepSpeed runs (ZeRO 0-3, mbs 1-16, with and
# without checkpointing; spread 0.1-1.7). Predicts their reserved memory to a median +0.3% (MAPE 9%; 5% of
# the peak gave -13.6%, MAPE 15%) and the Ultra-Scale Playbook's nanotron reserved memory at pp=1 to -0.5%.
ALLOCATOR_EXCESS = 0.38


def cuda_runtime_bytes(gpu: GPUType) -> int:
    """Allocations every CUDA step makes inside the caching allocator: the cuBLAS and cuBLASLt workspaces
    (torch's default 32 MiB each on Hopper/Blackwell, ~8 MiB on older cards) and ~1 MiB of small tensors.
    The calibration shows 65 MiB appear on the first step on an H200."""
    if gpu.is_cpu:
        return 0
    name = gpu.name.upper()
    hopper = name.startswith(("H", "B", "GH", "GB"))
    return (64 if hopper else 16) * MiB + MiB


def _stage_phases(model: ModelSpec, shape: StageShape, layout: Layout, training: Training, st: StateBytes,
                  first: bool, runtime: int) -> list[tuple[str, tuple[int, int, int, int, int]]]:
    """(phase, (params, grads, optimizer, activations, other)) for one pipeline stage."""
    engine = training.engine
    act_b = model_bytes(training.precision)
    tokens = layout.micro_batch * training.seq_len // layout.cp    # Ulysses: each rank holds seq/cp tokens
    m = layout.grad_accum
    inflight = min(layout.pp, m) if (first and layout.pp > 1) else 1
    sp = layout.sequence_parallel
    shards = layout.tp if sp else 1
    full_layer = layer_saved_bytes(model, tokens, layout.tp, act_b, engine, sp)
    work = layer_backward_working_bytes(model, tokens, layout.tp, act_b)
    if layout.cp > 1:    # Ulysses: SDPA's output beside the exchanged one; flash's whole-sequence backward
        full_layer += saved_extra_bytes(model, tokens, layout.tp, act_b, layout.checkpointing)
        work = max(work, attention_backward_working_bytes(model, tokens, layout.tp, act_b))
    if layout.checkpointing == "full":
        saved = checkpoint_input_bytes(model, tokens, act_b, engine, shards)
        work += full_layer              # the layer being recomputed holds its whole working set again
    else:
        saved = full_layer
    acts = inflight * shape.layers * saved
    if shape.moe_layers:     # routed tokens, router, experts' MLP tensors (planner/moe.py)
        extra = int(moe_activation_extra_bytes(model, tokens, layout.tp, layout.etp, act_b, sp, engine))
        if layout.checkpointing == "full":
            work += extra
        else:
            acts += inflight * shape.moe_layers * extra
    if engine == "torch" and layout.checkpointing != "full":
        acts += 2 * (shape.params - model.embedding_params + model.vocab * model.hidden)  # autocast bf16 weight casts
    elif engine == "torch":
        acts += 2 * model.vocab * model.hidden
    head = final_norm_bytes(model, tokens, act_b, engine, shards) if shape.has_head else 0
    held = st.grads_persistent + (st.grads_held if m > 1 else 0)
    params = st.params + st.gathered
    always = st.buffers_always + runtime
    phases = []
    if shape.has_head:
        loss = loss_peak_bytes(model, tokens, shards)
        if layout.pp > 1:
            # DeepSpeed's PipelineEngine keeps each micro-batch's stage output (here the logits) in its pipe
            # buffers, at least two of them (TrainSchedule.num_pipe_buffers): two model-dtype logits tensors
            loss += 2 * act_b * tokens * model.vocab // shards
        phases.append(("loss", (params, held, st.optimizer, acts + head, always + loss)))
    tied = tied_head_grad_bytes(model, act_b, shards) if shape.has_head and shape.has_embedding else 0
    phases.append(("bwd_top", (params, held + tied, st.optimizer, acts + head + work, always + st.buffers_bwd)))
    rest = (inflight - 1) * shape.layers * saved
    phases.append(("bwd_end", (params, st.grads_persistent + st.grads_end, st.optimizer, rest + work,
                               always + st.buffers_bwd)))
    phases.append(("step", (st.params, st.step_grads, st.optimizer, 0, always + st.step_other)))
    return phases


def memory_phases(model: ModelSpec, cluster: Cluster, layout: Layout,
                  training: Training) -> list[tuple[str, tuple[int, int, int, int, int]]]:
    """Every phase of every stage that can be the worst, named "stage/phase"."""
    runtime = cuda_runtime_bytes(cluster.gpu)
    z = int(layout.zero_stage)
    knobs = zero_knobs(model.hidden, z, training.zero_buckets, not cluster.gpu.is_cpu)
    out = []
    for first in ((True, False) if layout.pp > 1 else (True,)):
        stages = layout.stage_layers(model.n_layers)
        shape = stage_shape(model, layout.tp, layout.pp, first, layout.sequence_parallel,
                            stages[0] if first else stages[-1], layout.ep, layout.etp)
        if training.engine == "torch":
            st = torch_states(model, shape)
        else:
            def states(part: StageShape, dp: int) -> StateBytes:
                return deepspeed_states(model, part, dp, z, layout.offload, training.precision, layout.pp, knobs,
                                        training.grad_accum_dtype == "fp32", not cluster.gpu.is_cpu)
            st = states(shape, layout.dp_cp)     # Ulysses: ZeRO shards over the dp·cp ranks
            if shape.expert_params:     # DeepSpeed-MoE: expert parameter groups partitioned over dp/ep
                st = _add_expert_states(states(replace(shape, params=shape.params - shape.expert_params),
                                               layout.dp_cp),
                                        states(replace(shape, params=shape.expert_params, has_embedding=False,
                                                       has_head=False), layout.expert_dp()))
        name = "first" if first and layout.pp > 1 else ("last" if layout.pp > 1 else "all")
        out += [(f"{name}/{ph}", parts) for ph, parts in _stage_phases(model, shape, layout, training, st, first,
                                                                        runtime)]
    return out


def _add_expert_states(dense: StateBytes, experts: StateBytes) -> StateBytes:
    """The dense and the expert parameter groups together: every buffer adds up except the reduce buckets, which
    the two groups take turns with (stage_1_and_2.py reduces one group's bucket at a time)."""
    both = {f.name: getattr(dense, f.name) + getattr(experts, f.name) for f in fields(StateBytes)}
    for f in ("buffers_bwd", "buffers_always"):
        both[f] = max(getattr(dense, f), getattr(experts, f))
    return StateBytes(**both)


def estimate_memory(model: ModelSpec, cluster: Cluster, layout: Layout, training: Training) -> MemoryBreakdown:
    _, (params, grads, optim, acts, other) = max(memory_phases(model, cluster, layout, training),
                                                 key=lambda kv: sum(kv[1]))
    return MemoryBreakdown(params, grads, optim, acts, other, cluster.gpu.memory_bytes,
                           reserved_headroom_bytes=int(ALLOCATOR_EXCESS * (acts + other)))
