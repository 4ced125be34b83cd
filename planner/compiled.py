"""What torch.compile (inductor) changes in a micro-batch's time: fused memory-bound kernels and fewer launches.

Matmuls and flash attention run the same kernels compiled or not (inductor calls cuBLAS and SDPA as extern
kernels in its default mode), so only the memory-bound work and the host's issue cost change. Counted
kernel by kernel from what inductor generates for this GPT-2 block, not fitted to measurements:

- Pointwise ops and reductions that share an iteration space become one kernel, so an intermediate is
  neither written nor read back (torch/_inductor/scheduler.py fusion): a residual add, the next LayerNorm
  and the autocast down-cast of its output are one pass; LayerNorm backward, the residual-gradient add and
  the down-cast of that gradient are one pass.
- The partitioner (torch/_functorch/partitioners.py, min_cut_rematerialization_partition) saves the GELU
  input only and recomputes the GELU output in backward for the weight gradient: one extra pass over the
  ffn activation, which eager does not pay.
- The fp32 cross-entropy is one reduction kernel forward (the bf16 logits read twice: max, then sum of
  exp) and one pointwise kernel backward (softmax minus one-hot, scaled, down-cast), with no fp32 copy of
  the logits in HBM.
- No CUDA graphs (the default mode): every kernel is still launched from the host, but by inductor's
  generated wrapper, a plain call outside autograd each (timing.TENSOR_OP_S), instead of an eager op with
  module call, dispatch and autograd recording (timing.HOST_OP_S).
"""
from __future__ import annotations

from .model import ModelSpec

# Bytes per vocabulary entry per token: write bf16 logits (2, the GEMM), cross-entropy forward reads them
# twice (4), backward reads them (2) and writes the bf16 gradient (2).
LOSS_BYTES = 10
# Kernels one compiled block launches per micro-batch (forward + backward), DeepSpeed's bf16 engine:
# forward LN, qkv GEMM, SDPA, proj GEMM, residual+LN, fc GEMM, bias+GELU, proj GEMM (8); backward two GEMMs
# per linear (8), SDPA backward, the q/k/v gradient concat, 2 LN backward, GELU recompute, GELU backward,
# 4 bias-gradient reductions (10)
KERNELS_PER_LAYER = 26
AUTOCAST_KERNELS_PER_LAYER = 8   # plain PyTorch AMP: the 4 weights' bf16 casts and their gradients' fp32 casts
# embedding lookups + add, final LN, logits GEMM, loss forward; loss backward, logits' two GEMMs, LN and
# embedding backward
KERNELS_HEAD = 10
RECOMPUTE_KERNELS_PER_LAYER = 8  # full recompute: the block's forward again, inside the compiled graph


def layer_elementwise_bytes(model: ModelSpec, tokens: int, tp: int, act_bytes: int, engine: str,
                            sequence_parallel: bool = False) -> float:
    """HBM bytes of one compiled layer's memory-bound kernels, forward + backward (compare
    gpu_time.layer_elementwise_bytes, eager), in units of (hidden x act_bytes) per token.

    Shared with eager, on this rank's heads/ffn shard: SDPA's reads/writes (4 forward, 8 backward), the
    q/k/v gradient concat (6). The ffn activation: forward bias+GELU reads and writes it (2r), backward
    recomputes the GELU output (2r) and reads the input, the output gradient and writes the input gradient
    (3r); bias gradients read the ffn gradient (r). Replicated: per LayerNorm position a fused pass reading
    the residual and the branch output and writing the new residual and the normalized output, and a fused
    backward pass reading the norm's input gradient, its input and the residual gradient and writing the
    residual gradient (plus its bf16 copy under autocast); the h-sized bias/norm-weight gradients (2).
    """
    h, f = model.hidden, model.ffn_hidden
    r = f / h * (1.5 if model.arch == "llama" else 1.0)    # SwiGLU touches gate, up and product
    split = (4 + 8 + 6) / tp + (2 * r + 2 * r + 3 * r + r) / tp
    if engine == "torch":
        # fp32 residual (2 units of 2 bytes): forward 2+1+2+1, backward 1+2+2+2+1
        replicated = 2 * 6 + 2 * 8 + 2
    else:
        replicated = 2 * 4 + 2 * 4 + 2
    per_token = (split + replicated / (tp if sequence_parallel else 1)) * h * act_bytes
    return per_token * tokens


def loss_bytes(model: ModelSpec, tokens: int) -> float:
    return float(LOSS_BYTES * tokens * model.vocab)


def kernels(layers: int, autocast: bool, recompute: bool) -> int:
    """Kernels a compiled stage launches per micro-batch (each a host call of the generated wrapper)."""
    per_layer = KERNELS_PER_LAYER + AUTOCAST_KERNELS_PER_LAYER * autocast + RECOMPUTE_KERNELS_PER_LAYER * recompute
    return layers * per_layer + KERNELS_HEAD
