"""DeepSpeed-Ulysses (cp > 1 on the DeepSpeed engine): what it adds to one rank's memory and step time.

Read off DeepSpeed 0.19.8 (deepspeed/sequence/layer.py, runtime/engine.py) and the program's attention
(launch/train/model.py, ulysses.py); memory.py, timing.py and comm.py use these:
- Groups: given an mpu with get_sequence_data_parallel_group, the engine hands ZeRO-1/2/3 and BF16_Optimizer the
  sequence-data-parallel group (all dp·cp ranks) as dp_process_group, and ZeRO-0's buffered all-reduce sums over
  it too: model states are sharded, and gradients reduced, over dp·cp ranks (Layout.dp_cp).
- Every rank runs the layer on seq/cp tokens; DistributedAttention all-to-alls q, k and v into the whole sequence
  for heads/cp heads and the output back: 4 all_to_all_single per layer forward, 4 in backward
  (_SeqAllToAll.backward), 4 more in the recomputed forward under full checkpointing (selective checkpoints only
  the SDPA call inside local_attention, after the exchange). Without an sp_stream (the program passes none) every
  exchange is synchronous: the compute stream waits for it, nothing overlaps.
- Each exchange copies its tensor on HBM: pre_all2all's reshape(...).contiguous() and permute(...).contiguous()
  and post_all2all's permute(...).contiguous() when heads are scattered (q, k, v forward, the output's gradient),
  one copy fewer when the sequence is scattered (the output forward, dq/dk/dv backward: the input is contiguous).
- Attention is causal flash attention over the whole sequence for heads/cp heads: b·s²·q/cp work per rank, cp
  times the b·(s/cp)²·q of a layer that only saw its own tokens.
- Saved for backward: SDPA keeps q, k, v, out and the logsumexp of the whole sequence on heads/cp heads, the same
  bytes as seq/cp tokens of all heads; the output's all-to-all makes a new tensor (the out-projection's saved
  input) beside SDPA's saved out: one more seq/cp x heads tensor per layer (not under selective checkpointing,
  whose checkpoint keeps only q, k, v).
- Backward's attention working set: flash's dq, dk, dv of the whole sequence plus one exchange's three buffers.
"""
from __future__ import annotations

from .cluster import Cluster, GPUType
from .gpu_time import attention_s
from .layout import Layout
from .model import ModelSpec
from .comm import all_to_all_s

# host calls of one exchange (_SeqAllToAll.apply, layer.py single_all_to_all): (kernel-launching calls: 2-3 copies,
# empty_like, all_to_all_single; view calls: apply, reshape, permute x2, reshape)
EXCHANGE_HOST_OPS = (5, 5)


def _widths(model: ModelSpec, tp: int) -> tuple[float, float]:
    """(query/output width, one of key/value's width) on this rank's tp shard."""
    return model.n_heads * model.head_dim / tp, model.n_kv_heads * model.head_dim / tp


def saved_extra_bytes(model: ModelSpec, tokens: int, tp: int, act_bytes: int, checkpointing: str) -> int:
    """Beyond a plain layer on `tokens` (seq/cp) tokens: SDPA's saved output next to the exchanged one."""
    if checkpointing == "selective":
        return 0
    q, _ = _widths(model, tp)
    return int(tokens * q * act_bytes)


def attention_backward_working_bytes(model: ModelSpec, tokens: int, tp: int, act_bytes: int) -> int:
    """The attention's backward at its widest: flash's dq, dk, dv and dout of the whole sequence on heads/cp heads
    (= seq/cp tokens of all heads), its fp32 dq accumulator, or dq, dk, dv with the first exchange's input copy,
    receive buffer and output (three query-sized tensors): (4q + 2kv) per token either way."""
    q, kv = _widths(model, tp)
    return int(tokens * (4 * q + 2 * kv) * act_bytes)


def exchanges(checkpointing: str) -> int:
    """All-to-alls of each of q, k, v and the output per layer and micro-batch: forward, backward, recompute."""
    return 3 if checkpointing == "full" else 2


def comm_s(cluster: Cluster, model: ModelSpec, layout: Layout, tokens: int, act_bytes: int,
           checkpointing: str) -> tuple[float, float]:
    """(seconds, bytes each rank sends) of one layer's exchanges for one micro-batch of `tokens` (seq/cp) tokens.
    The cp group is cp consecutive ranks of the tp-fastest order (parallel_state_sp: rank = dp_rank·cp + cp_rank)."""
    cp = layout.cp
    if cp <= 1:
        return 0.0, 0.0
    q, kv = _widths(model, layout.tp)
    tensors = [tokens * w * act_bytes for w in (q, kv, kv, q)]
    n = exchanges(checkpointing)
    seconds = n * sum(all_to_all_s(cluster, cp, layout.tp, t) for t in tensors)
    return seconds, n * sum(tensors) * (cp - 1) / cp


def copy_bytes(model: ModelSpec, tokens: int, tp: int, act_bytes: int, checkpointing: str) -> float:
    """HBM bytes (read + write) of one layer's exchange copies, forward + backward (+ the recomputed forward)."""
    q, kv = _widths(model, tp)
    forward = 3 * (q + 2 * kv) + 2 * q            # q, k, v scatter heads; the output scatters the sequence
    backward = 3 * q + 2 * (q + 2 * kv)           # dout scatters heads; dq, dk, dv scatter the sequence
    redo = forward if checkpointing == "full" else 0
    return 2.0 * tokens * act_bytes * (forward + backward + redo)


def attention_extra_s(gpu: GPUType, model: ModelSpec, micro_batch: int, seq: int, tp: int, cp: int, precision: str,
                      checkpointing: str) -> float:
    """One layer's attention over the whole sequence on heads/(tp·cp) heads, minus what a layer on seq/cp tokens
    already counts (gpu_time.microbatch_gpu_s); the recomputed forward (2/7 of it) under full and selective."""
    if cp <= 1:
        return 0.0
    redo = 9 / 7 if checkpointing in ("full", "selective") else 1.0
    whole = attention_s(gpu, model, micro_batch, seq, tp * cp, precision)
    return redo * (whole - attention_s(gpu, model, micro_batch, seq // cp, tp, precision))


def host_calls(checkpointing: str) -> tuple[int, int]:
    """(kernel calls, view calls) of one layer's exchanges per micro-batch."""
    calls = 4 * exchanges(checkpointing)
    return calls * EXCHANGE_HOST_OPS[0], calls * EXCHANGE_HOST_OPS[1]
