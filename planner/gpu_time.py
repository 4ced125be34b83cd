"""GPU time of one micro-batch's forward + backward on one rank, kernel by kernel, from first principles.

Matmuls: a roofline per GEMM — max(FLOPs at the card's matmul ceiling, operand bytes at HBM bandwidth) —
derated by wave quantization (output tiles over the SMs) and a pipeline-fill term in K (a short K leaves
each tile's main loop too short to hide its prologue/epilogue). Attention: FlashAttention-2 (what SDPA
runs) does the causal half of the QK^T/AV work forward and 2.5x that backward, at a fraction of the
matmul ceiling. Everything else (norms, GELU/SwiGLU, residual adds, bias grads, the fp32 loss) is
memory bound: HBM bytes counted per token below, at an achievable fraction of peak bandwidth.
"""
from __future__ import annotations

from functools import lru_cache

from math import ceil

from . import compiled as compiled_time
from .cluster import GPUType
from .model import ModelSpec
from .precision import attention_precision, is_fp8, layer_cast_bytes, model_bytes

TILE_M, TILE_N = 128, 256       # cuBLAS/CUTLASS bf16 tile on Hopper (a 128x128 tile on older cards)
K_FILL = 512                    # K elements of main loop that one tile's prologue+epilogue cost
K_CEILING = 8192                # the matmul ceiling (GPUType.matmul_efficiency) was measured at 8192^3
HBM_EFFICIENCY = GPUType.hbm_efficiency  # the catalog's default share of peak HBM bandwidth (calibration may fit it)
FLASH_EFFICIENCY = 0.3          # FlashAttention-2 share of the dense peak at head_dim 64-128 (Dao 2023, fig. 5)
KERNEL_GPU_S = 3e-6             # the smallest kernel's time on the GPU (launch + ramp)


def sm_count(gpu: GPUType) -> int:
    """Streaming multiprocessors (the catalog's, from datasheets): wave quantization needs them; a card
    without the figure gets ~1 SM per 7.5 dense bf16 TFLOP/s."""
    return gpu.sm_count or max(1, round(gpu.bf16_tflops / 7.5))


def _wave_efficiency(m: int, n: int, sms: int) -> float:
    """Useful share of the tile work issued: a tile computes all TILE_M x TILE_N outputs even where the
    matrix edge cuts it (N=1600 needs 7 tiles of 256 = 1792 columns), and output tiles spread over the SMs
    in waves, a partial last wave leaving SMs idle. The library may put the wide tile side on either
    output dimension (C or C^T), so the better orientation counts."""
    def eff(a: int, b: int) -> float:
        tiles = ceil(a / TILE_M) * ceil(b / TILE_N)
        return a * b / (ceil(tiles / sms) * sms * TILE_M * TILE_N)
    return max(eff(m, n), eff(n, m))


def gemm_s(gpu: GPUType, m: int, n: int, k: int, precision: str = "bf16") -> float:
    """Seconds for an (m x k) @ (k x n) matmul."""
    if m <= 0 or n <= 0 or k <= 0:
        return 0.0
    elem = 4 if precision == "fp32" else 1 if is_fp8(precision) else 2   # FP8 operands, a bf16 output (below)
    peak = gpu.peak_tflops(precision) * 1e12 * (gpu.matmul_efficiency if precision != "fp32" else 1.0)
    sms = sm_count(gpu)
    # the ceiling was measured at 8192^3, which itself loses a little to the last wave: normalize to it
    wave_eff = min(1.0, _wave_efficiency(m, n, sms) / _wave_efficiency(K_CEILING, K_CEILING, sms))
    fill = (k / (k + K_FILL)) / (K_CEILING / (K_CEILING + K_FILL))
    flops_s = 2.0 * m * n * k / (peak * wave_eff * min(1.0, fill))
    bytes_s = (elem * (m * k + k * n) + max(elem, 2) * m * n) / (gpu.hbm_gbps * 1e9 * gpu.hbm_efficiency)
    return max(flops_s, bytes_s, KERNEL_GPU_S)


def layer_gemms(model: ModelSpec, tokens: int, tp: int) -> list[tuple[int, int, int]]:
    """(M, N, K) of one layer's forward matmuls on this rank (column-parallel N and row-parallel K split)."""
    h, q = model.hidden, model.n_heads * model.head_dim
    kv, f = model.n_kv_heads * model.head_dim, model.ffn_hidden
    mlp_in = (2 if model.arch == "llama" else 1) * f
    return [(tokens, (q + 2 * kv) // tp, h), (tokens, h, q // tp), (tokens, mlp_in // tp, h), (tokens, h, f // tp)]


def fwd_bwd_gemm_s(gpu: GPUType, shapes, precision: str) -> float:
    """Forward (M,N,K), backward data grad (M,K,N) and weight grad (K,N,M) for each shape."""
    return sum(gemm_s(gpu, m, n, k, precision) + gemm_s(gpu, m, k, n, precision) + gemm_s(gpu, k, n, m, precision)
               for m, n, k in shapes)


def attention_s(gpu: GPUType, model: ModelSpec, micro_batch: int, seq: int, tp: int, precision: str) -> float:
    """Causal flash attention forward (2·b·s²·q FLOPs) + backward (2.5x forward), heads split over tp."""
    q = model.n_heads * model.head_dim / tp
    fwd = 2.0 * micro_batch * seq * seq * q
    return 3.5 * fwd / (gpu.peak_tflops(precision) * 1e12 * FLASH_EFFICIENCY)


def layer_elementwise_bytes(model: ModelSpec, tokens: int, tp: int, act_bytes: int, engine: str,
                            sequence_parallel: bool = False) -> float:
    """HBM bytes of one layer's memory-bound kernels, forward + backward, counted kernel by kernel.

    Per token, in units of (hidden x act_bytes): forward — 2 norms (2 each), 2 residual adds (3 each), the
    activation (2 x ffn/h) and SDPA's own reads/writes of q,k,v,out (4); backward — 2 norms (4 each), 2
    residual-grad adds (3 each), activation backward (3 x ffn/h), bias/norm-weight grads (read the grads,
    ~2 + ffn/h), SDPA's reads of q,k,v,out,dout and writes of dq,dk,dv (8) and the re-layout of dq,dk,dv
    into the fused projection's gradient (6). Torch autocast keeps residuals and norms in fp32 (below).
    """
    h, f = model.hidden, model.ffn_hidden
    r = f / h * (1.5 if model.arch == "llama" else 1.0)    # SwiGLU touches gate, up and product
    split = (4 + 8 + 6) / tp + 2 * r / tp + 3 * r / tp + r / tp      # parts that live on this rank's heads/ffn shard
    replicated = 2 * 2 + 2 * 3 + 2 * 4 + 2 * 3 + 2
    if engine == "torch":
        # autocast with fp32 weights keeps the residual stream and the norms in fp32: forward norms read and write
        # fp32 (4 each) and their outputs are cast to bf16 for the next linear (3 each), residual adds read fp32 +
        # bf16 and write fp32 (5 each); backward norms 6 each, the casts' backward 3 each, fp32 grad adds 6 each
        replicated = 2 * 4 + 2 * 3 + 2 * 5 + 2 * 6 + 2 * 3 + 2 * 6 + 2
    per_token = (split + replicated / (tp if sequence_parallel else 1)) * h * act_bytes
    return per_token * tokens


def loss_bytes(model: ModelSpec, tokens: int) -> float:
    """LM head epilogue and fp32 cross-entropy, forward + backward: write bf16 logits (2), upcast (2+4),
    log_softmax (4+4, + 4 for the max/sum pass), nll grad (4), log_softmax backward (4+4+4), downcast (4+2),
    slice/view backward (2+2): ~50 bytes per vocabulary entry per token."""
    return 50.0 * tokens * model.vocab


@lru_cache(maxsize=8192)
def microbatch_gpu_s(gpu: GPUType, model: ModelSpec, layers: int, micro_batch: int, seq: int, tp: int,
                     precision: str, engine: str, has_head: bool, recompute: str,
                     sequence_parallel: bool = False, compiled: bool = False,
                     vocab_parallel: bool | None = None) -> float:
    """One micro-batch forward + backward on one pipeline stage. recompute: none | full | selective.
    compiled: torch.compile's fused memory-bound kernels (planner/compiled.py) instead of eager's.
    vocab_parallel: the LM head and loss split over tp (Megatron always; default: with sequence_parallel)."""
    vocab_parallel = sequence_parallel if vocab_parallel is None else vocab_parallel
    tokens = micro_batch * seq
    act_b = 2 if engine == "torch" else model_bytes(precision)
    bw = gpu.hbm_gbps * 1e9 * gpu.hbm_efficiency
    mm_prec = "bf16" if engine == "torch" else precision
    bf16_prec = attention_precision(mm_prec)     # FP8 runs only the layers' GEMMs in FP8 (planner/precision.py)
    shapes = layer_gemms(model, tokens, tp)
    gemm = fwd_bwd_gemm_s(gpu, shapes, mm_prec)
    attn = attention_s(gpu, model, micro_batch, seq, tp, bf16_prec)
    elem_bytes = compiled_time.layer_elementwise_bytes if compiled else layer_elementwise_bytes
    elem = elem_bytes(model, tokens, tp, act_b, engine, sequence_parallel) / bw
    per_layer = gemm + attn + elem + layer_cast_bytes(model, tokens, tp, mm_prec) / bw
    weight_casts = engine == "torch"    # autocast: each fp32 weight cast to bf16 per forward (4+2 bytes), its bf16
    #                                     weight grad cast back to fp32 in backward (2+4)
    if weight_casts:
        per_layer += 12 * sum(n * k for _, n, k in shapes) / bw
    if recompute == "full":   # one more forward: the forward third of the GEMMs, 2/7 of attention, ~1/3 of the rest
        per_layer += sum(gemm_s(gpu, m, n, k, mm_prec) for m, n, k in shapes) + attn * 2 / 7 + elem / 3
    elif recompute == "selective":
        per_layer += attn * 2 / 7
    total = layers * per_layer
    if has_head:
        v = model.vocab // tp if vocab_parallel else model.vocab     # vocabulary-parallel head and loss
        total += (fwd_bwd_gemm_s(gpu, [(tokens, v, model.hidden)], bf16_prec)
                  + (compiled_time.loss_bytes if compiled else loss_bytes)(model, tokens) / bw * v / model.vocab
                  + weight_casts * 12 * v * model.hidden / bw)
    return total
