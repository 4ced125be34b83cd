"""What a training precision means for memory and time: bytes per element, the GEMM rate, and FP8 as
Transformer Engine runs it.

FP8 (--precision fp8 / mxfp8) is what Transformer Engine does under megatron-core (TransformerEngine
transformer_engine/pytorch/module/linear.py and layernorm_linear.py at d0067d0; megatron/core/extensions/
transformer_engine.py, megatron/core/fp8_utils.py and transformer/transformer_config.py of megatron-core 0.16.1):

- Only the GEMMs of the transformer layers (QKV, attention projection, fc1, fc2: TE's Linear and
  LayerNormLinear) run in FP8 — forward, data-gradient and weight-gradient GEMMs (fp8_wgrad defaults True;
  "hybrid": E4M3 activations and weights, E5M2 gradients). Core attention stays bf16 (fp8_dot_product_attention
  defaults False), as do norms, activations, residuals, the embedding and the output layer (megatron-core's
  GPTModel builds the LM head from tensor_parallel.ColumnParallelLinear, not a TE module).
- Master state is unchanged: bf16 weights, fp32 main grads, fp32 master + Adam moments (Megatron's
  --fp8-param-gather, not rendered here, would keep the weights in FP8).
- Weights: each GEMM weight is quantized once per step (is_first_microbatch: update_workspace only on the first
  micro-batch) into a cached workspace holding row-wise and column-wise (transposed) FP8 copies: 2 B/param,
  plus one E8M0 scale per 32 elements of each copy for MXFP8.
- Saved activations: the input each FP8 GEMM saves for its weight gradient is the FP8 tensor (1 B, + 1/32 for
  MXFP8 scales), not bf16: the norm outputs feeding QKV and fc1 (the LayerNorm kernel writes FP8 directly),
  the attention output feeding the projection and the activation output feeding fc2 (separate FP8 copies:
  flash attention keeps its bf16 output, and the activation's backward its bf16 input).
- Casts (memory bound): the inputs of the projection and fc2 are quantized in forward (read 2, write 1 per
  usage); the output gradient of every FP8 GEMM is cast and transposed in backward (read 2, write 1 + 1); the
  column-wise copy of each saved input is written once (1 B). Per-tensor current scaling ("tensorwise", what
  NVIDIA's published FP8 runs use) first reads the tensor for its amax (2 B); delayed scaling keeps an amax
  history (fp8_amax_history_len, 1 in Megatron) of 4 B per quantizer; MXFP8 computes block scales in the cast.
- With sequence parallelism TE quantizes before the all-gather (gather_along_first_dim(..., quantizer)), so the
  gathered GEMM inputs cross NVLink in FP8; reduce-scatters carry the bf16 GEMM outputs.
"""
from __future__ import annotations

from .cluster import GPUType
from .model import ModelSpec

FP8_PRECISIONS = ("fp8", "mxfp8")
MX_BLOCK = 32               # MXFP8: one E8M0 scale byte per 32 elements (OCP MX spec v1.0)
QUANTIZERS_PER_GEMM = 3     # input, weight, output gradient: one scale/amax each (TE's FP8GlobalStateManager)


def is_fp8(precision: str) -> bool:
    return precision in FP8_PRECISIONS


def model_bytes(precision: str) -> int:
    """Bytes of a weight / activation element in the model's dtype: FP8 training keeps bf16 there."""
    return 4 if precision == "fp32" else 2


def fp8_element_bytes(precision: str) -> float:
    """Bytes of one FP8 element with its share of scales (MXFP8: one byte per block of 32)."""
    return 1.0 + (1.0 / MX_BLOCK if precision == "mxfp8" else 0.0)


def attention_precision(precision: str) -> str:
    """Core attention's precision: bf16 under FP8 (megatron-core fp8_dot_product_attention defaults False)."""
    return "bf16" if is_fp8(precision) else precision


def recipe(precision: str) -> tuple[str, str]:
    """(--fp8-format, --fp8-recipe) of the rendered Megatron arguments: hybrid E4M3/E5M2 with per-tensor current
    scaling on Hopper (NVIDIA's published FP8 runs), E4M3 with MXFP8 block scaling on Blackwell."""
    return ("e4m3", "mxfp8") if precision == "mxfp8" else ("hybrid", "tensorwise")


def check_precision(gpu: GPUType, precision: str, engine: str) -> None:
    """Raise ValueError naming the value and the fix when this card or engine cannot train in `precision`."""
    if not is_fp8(precision):
        return
    if engine != "megatron":
        raise ValueError(f"precision({precision!r}) with engine({engine!r}): DeepSpeed has no FP8 training path of "
                         "its own (its FP8 test, tests/unit/runtime/half_precision/test_fp8.py, runs Transformer "
                         "Engine layers inside a user's model, which shardplan's program does not build); use "
                         "--engine megatron")
    if not gpu.fp8_tflops:
        raise ValueError(f"precision({precision!r}) on {gpu.name}: the card has no FP8 tensor cores; use --precision "
                         "bf16, or a Hopper/Ada/Blackwell/MI300 card")
    if precision == "mxfp8" and not gpu.mxfp8:
        raise ValueError(f"precision('mxfp8') on {gpu.name}: MXFP8 block scaling needs Blackwell (B200, B300, GB200, "
                         "GB300); use --precision fp8 (per-tensor scaling)")


def gemm_weight_params(model: ModelSpec, tp: int) -> int:
    """Parameters of one layer's FP8 GEMM weights on a tensor-parallel rank (QKV, projection, fc1, fc2)."""
    h, q = model.hidden, model.n_heads * model.head_dim
    kv, f = model.n_kv_heads * model.head_dim, model.ffn_hidden
    mlp_in = (2 if model.arch == "llama" else 1) * f
    return ((q + 2 * kv) * h + q * h + mlp_in * h + f * h) // tp


def weight_workspace_bytes(model: ModelSpec, layers: int, tp: int, precision: str) -> float:
    """The cached FP8 weights of `layers` layers: row-wise and column-wise copies of every GEMM weight, plus
    the amax/scale state of the quantizers (4 B each, history length 1)."""
    if not is_fp8(precision):
        return 0.0
    return layers * (2 * fp8_element_bytes(precision) * gemm_weight_params(model, tp) + 4 * 4 * QUANTIZERS_PER_GEMM)


def layer_cast_bytes(model: ModelSpec, tokens: int, tp: int, precision: str) -> float:
    """HBM bytes of one layer's FP8 casts for `tokens` tokens, forward + backward (see the module docstring)."""
    if not is_fp8(precision):
        return 0.0
    h, q = model.hidden, model.n_heads * model.head_dim
    kv, f = model.n_kv_heads * model.head_dim, model.ffn_hidden
    mlp_in = (2 if model.arch == "llama" else 1) * f
    e = fp8_element_bytes(precision)
    amax = 2.0 if precision == "fp8" else 0.0                   # current scaling reads each tensor once for amax
    inputs = 2 * h + (q + f) / tp                               # QKV, fc1 (norm outputs), projection, fc2 inputs
    cast_in = (q + f) / tp * (2 + e + amax)                     # projection and fc2 inputs quantized in forward
    colwise = inputs * e                                        # the column-wise copy of every saved input
    grads = ((q + 2 * kv) / tp + h + mlp_in / tp + h) * (2 + 2 * e + amax)   # output gradients: cast + transpose
    return tokens * (cast_in + colwise + grads)


def weight_cast_bytes(model: ModelSpec, layers: int, tp: int, precision: str) -> float:
    """HBM bytes of quantizing the weights once per step: read bf16 (2), write both FP8 copies."""
    if not is_fp8(precision):
        return 0.0
    return layers * gemm_weight_params(model, tp) * (2 + 2 * fp8_element_bytes(precision))
