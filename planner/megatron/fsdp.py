"""Megatron-FSDP: ZeRO-2 and ZeRO-3 on the Megatron engine, as megatron-core 0.16 allocates and communicates
(megatron/core/distributed/fsdp/src/megatron_fsdp/megatron_fsdp.py, param_and_grad_buffer.py; Megatron-LM's
--use-megatron-fsdp --data-parallel-sharding-strategy).

zero_stage 2 is the strategy optim_grads, 3 is optim_grads_params (1 stays Megatron's distributed optimizer).
Everything is sharded over the data-parallel-with-context-parallel group (routed experts over their
expert-data-parallel group):

- Model states (ParamAndGradBuffer._init_each_parameter_group_buffers): fp32 main weights and Adam's two moments
  (12 B/param) and the fp32 main-grad buffer (4 B; the parameters' fp16 under fp16) are shards; the bf16 model
  weights are whole under optim_grads and shards under optim_grads_params: 18 B/param / (dp·cp) at stage 3.
- Gathered weights (stage 3): each TransformerLayer is an FSDP unit and one bucket, all-gathered before its
  forward and again before its backward and freed after each; the AllGatherPipeline prefetches the next
  buckets until suggested_communication_unit_size / 2 elements are in flight (the unit size defaults to at
  least 1e9 elements: megatron_fsdp.py takes max(1e9, 2 layers)). The other parameters (embedding, final norm,
  output layer) are no FSDP unit: once gathered they stay until finish_grad_sync.
- Unsharded gradients: a layer's (stage 3) or a bucket's (stage 2: max(40M, 1M·dp·cp) elements, Megatron-LM
  training.py) gradients land in a temporary fp32 bucket that is reduce-scattered as soon as it is complete
  (every micro-batch, not only the last: grad_reduce_every_bprop); GradReducePipeline frees finished buckets
  only once more than the unit size (1e9 elements) is queued, and all of them at the end of each backward.
  So up to ~1e9 + 2 buckets of fp32 gradients are live late in the backward, while the activations of the
  layers already done are gone: the peak is the larger of the two moments.
- Time: stage 3 all-gathers each layer in forward and again in backward and reduce-scatters its gradients
  in backward, every micro-batch, on side streams behind the layers' compute (prefetch keeps the next
  layers in flight): what outlasts the compute shows, plus the first gather and the last reduce-scatter of
  each pass, which nothing hides. The non-layer weights are gathered once per step. Stage 2 gathers the
  updated bf16 weights once per step during the first forward (like the distributed optimizer) and
  reduce-scatters every micro-batch's gradients bucket by bucket.
"""
from __future__ import annotations

from ..cluster import Cluster
from ..comm import group_bandwidth
from ..layout import Layout
from ..model import ModelSpec
from ..stage import StageShape, stage_shape

STRATEGIES = {2: "optim_grads", 3: "optim_grads_params"}   # --data-parallel-sharding-strategy of each ZeRO stage
COMM_UNIT = 1_000_000_000     # suggested_communication_unit_size by default: its floor (megatron_fsdp.py)
PREFETCH = COMM_UNIT // 2     # suggested_AG_prefetch_size: elements all-gathered ahead of the one in use
RS_QUEUE = COMM_UNIT          # suggested_RS_queue_capacity: unsharded gradient elements left in flight


def uses_fsdp(layout: Layout) -> bool:
    return int(layout.zero_stage) >= 2


def strategy(zero_stage: int) -> str:
    """Megatron-LM's --data-parallel-sharding-strategy for a ZeRO stage of 2 or 3."""
    return STRATEGIES[int(zero_stage)]


def bucket_elements(layout: Layout) -> int:
    """Gradient bucket of the non-FSDP-unit parameters: Megatron-LM training.py's default bucket size with
    --overlap-grad-reduce (rendered with FSDP), max(40M, 1M·dp·cp) elements."""
    return max(40_000_000, 1_000_000 * layout.dp_cp)


def _split(model: ModelSpec, layout: Layout, shape: StageShape, first: bool) -> tuple[int, int]:
    """(elements of one transformer layer on this rank, elements of the stage outside its layers)."""
    rest = stage_shape(model, layout.tp, layout.pp, first, True, 0, layout.ep, layout.etp).params
    return (shape.params - rest) // max(1, shape.layers), rest


def _local(layout: Layout, dense: float, experts: float) -> float:
    """This rank's shard of `dense` elements over dp·cp and `experts` over the expert-data-parallel group."""
    return dense / layout.dp_cp + experts / layout.expert_dp("megatron")


def fsdp_model_states(model: ModelSpec, layout: Layout, shape: StageShape, first: bool, weight_bytes: int,
                      grad_bytes: int, opt_bytes: int, freed_per_layer: float) -> tuple[int, int, int]:
    """(params, grads, optimizer) bytes on one rank of this stage at the step's peak. grads holds the sharded
    main grads plus the unsharded buckets in flight, net of the activations the backward has freed by then
    (freed_per_layer: what one layer of the last micro-batch saved)."""
    layer, rest = _split(model, layout, shape, first)
    shard = _local(layout, shape.params - shape.expert_params, shape.expert_params)
    optimizer = opt_bytes * shard
    if int(layout.zero_stage) >= 3:
        in_flight = min(shape.layers, 1 + -(-PREFETCH // max(1, layer)))   # the layer in use + the prefetched
        params = weight_bytes * (shard + rest + in_flight * layer)
        unit = layer
    else:
        params = weight_bytes * shape.params
        unit = bucket_elements(layout)
    cap = min(shape.params, RS_QUEUE + 2 * unit)            # unsharded gradient elements at most in flight
    # after k layers of backward: min(k·layer + unit, cap) elements live, k·freed_per_layer bytes freed
    moments = [0.0, shape.layers, (cap - unit) / max(1, layer)]
    live = max(grad_bytes * min(k * layer + unit, cap) - k * freed_per_layer
               for k in moments if 0 <= k <= shape.layers)
    grads = grad_bytes * shard + max(0.0, live)
    return int(params), int(grads), int(optimizer)


def pipelined_s(comm_s: float, compute_s: float, units: int) -> float:
    """Seconds a stream of `units` equal collectives shows behind `units` equal compute pieces, each piece
    needing its own collective first (or last): the first (last) is exposed, the rest only where they
    outlast the compute."""
    units = max(1, units)
    one = comm_s / units
    return one + max(0.0, comm_s - one - compute_s * (units - 1) / units)


def fsdp_comm_s(cluster: Cluster, model: ModelSpec, layout: Layout, shape: StageShape, weight_bytes: int,
                grad_bytes: int, forward_s: float, backward_s: float) -> tuple[float, float]:
    """(exposed seconds per step, bytes per rank on the wire per step) of Megatron-FSDP's collectives on the
    busiest stage (the first). forward_s/backward_s: one micro-batch's compute on that stage."""
    group, m = layout.dp_cp, layout.grad_accum
    bw, lat = group_bandwidth(cluster, group, layout.tp)
    edp = layout.expert_dp("megatron")
    frac = (group - 1) / group
    expert_frac = (edp - 1) / edp
    layer, rest = _split(model, layout, shape, True)
    experts_layer = shape.expert_params / max(1, shape.layers)
    layer_wire = frac * (layer - experts_layer) + expert_frac * experts_layer   # one layer's elements, bus share
    stage_wire = layer_wire * shape.layers + frac * rest
    units = shape.layers
    if int(layout.zero_stage) >= 3:
        reduce_s = grad_bytes * stage_wire / bw + units * lat        # one micro-batch's reduce-scatters
        gather_s = weight_bytes * layer_wire * shape.layers / bw + units * lat   # one pass's all-gathers
        rest_s = weight_bytes * frac * rest / bw + lat               # embedding/head: once per step
        per_mb = pipelined_s(gather_s, forward_s, units) + pipelined_s(gather_s + reduce_s, backward_s, units)
        seconds = m * per_mb + rest_s
        wire = m * (2 * weight_bytes * layer_wire * shape.layers + grad_bytes * stage_wire) + weight_bytes * frac * rest
    else:
        buckets = max(1, -(-shape.params // bucket_elements(layout)))
        gather_s = weight_bytes * stage_wire / bw + buckets * lat    # updated weights, during the first forward
        seconds = m * pipelined_s(grad_bytes * stage_wire / bw + buckets * lat, backward_s, buckets) + max(
            0.0, gather_s - forward_s)
        wire = m * grad_bytes * stage_wire + weight_bytes * stage_wire
    return seconds, wire
