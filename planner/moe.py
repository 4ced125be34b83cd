"""Mixture-of-experts costs, for both engines: what a rank holds of an MoE layer, the routed tokens' activations,
the experts' GEMMs and the dispatch/combine all-to-all. memory.py, timing.py and megatron/ add these to their
dense layer model for the stage's MoE layers.

- Parameters: the router and the shared experts are dense (split over tp like an MLP, the router replicated); the
  routed experts split over ep ranks (experts/ep each) and each expert's FFN over etp ranks.
- Tokens: a rank's MoE layer receives its tokens·top_k token-expert pairs in a balanced world (every rank sends
  tokens·k/ep to each peer and gets as many back), times IMBALANCE on the busiest rank, which sets the step's
  pace and its peak memory. Megatron routes dropless (--moe-token-dispatcher-type alltoall, no capacity);
  DeepSpeed's program routes dropless too (drop_tokens=False: the capacity is the busiest expert's load).
- Time: the experts' matmuls as Megatron's grouped GEMM (--moe-grouped-gemm: the tiles of all local experts
  share the SMs, only the edge tiles of a short M are wasted; megatron/time.batched_gemm_s) or DeepSpeed's loop
  of one GEMM per local expert (deepspeed/moe/experts.py); the all-to-all of dispatch and combine, forward and
  backward (deepspeed/moe/sharded_moe.py _AllToAll; Megatron's MoEAlltoAllTokenDispatcher), not overlapped.
"""
from __future__ import annotations

from .cluster import Cluster
from .comm import all_to_all_s, group_bandwidth
from .gpu_time import fwd_bwd_gemm_s, gemm_s
from .model import ModelSpec

# Load-imbalance allowance: the busiest expert-parallel rank receives 10% more token-expert pairs than the
# mean under an aux-loss (or bias) balanced router. A stated allowance, not a fit: Megatron's MoE docs and
# DeepSeek-V3 (section 3.2 / Fig. 9) show per-expert loads within about ±10% once balancing has converged.
IMBALANCE = 1.1
PERMUTE_PASSES = 8          # permute + unpermute forward and backward, the probabilities' multiply: HBM passes
#                             over the routed tokens (Megatron moe_utils.permute/unpermute, DeepSpeed's einsums' I/O)
ROUTER_BYTES = 4 + 4        # fp32 router logits and the softmax/sigmoid scores kept for backward, per expert


def mlp_tensors(model: ModelSpec) -> int:
    """MLP-width tensors autograd keeps per token: GELU's input and output (2), SwiGLU's gate, up, product (3)."""
    return 2 if model.arch == "gpt2" else 3


def moe_layer_on_rank(model: ModelSpec, tp: int, ep: int, etp: int) -> tuple[int, int]:
    """(dense parameters, routed-expert parameters) of one MoE layer on one rank."""
    h = model.hidden
    replicated = (6 * h if model.arch == "gpt2" else 2 * h) + model.router_params   # norms, out biases, router
    dense = (model.attention_params + model.shared_experts * model.expert_params - (replicated - model.router_params)
             ) // tp + replicated
    return dense, model.experts // ep * model.expert_params // etp


def routed_tokens(tokens: float, model: ModelSpec) -> float:
    """Token-expert pairs the busiest rank's experts process for `tokens` tokens of this rank."""
    return tokens * model.top_k * IMBALANCE


def moe_activation_extra_bytes(model: ModelSpec, tokens: float, tp: int, etp: int, act_b: int, sp: bool,
                               engine: str) -> float:
    """What one MoE layer saves for backward beyond the dense layer the activation models count (whose MLP is at
    ffn_hidden on all `tokens`, split over tp): the router's fp32 logits and scores, the permuted tokens and the
    expert outputs before the combine (h each), the routed experts' MLP tensors at moe_ffn_hidden/etp, the shared
    experts'. `tokens` are this rank's tokens of the micro-batch (seq/cp; /tp under sequence parallelism).
    DeepSpeed's GShard gating keeps dense [tokens, experts, capacity] combine weights (fp32) and dispatch mask."""
    local = tokens / tp if sp else tokens            # the MoE layer sees the sequence-parallel shard
    routed = routed_tokens(local, model)
    saved = local * model.experts * ROUTER_BYTES
    saved += 2 * routed * model.hidden * act_b                                  # permuted input, expert output
    saved += routed * etp * mlp_tensors(model) * model.moe_ffn_hidden * act_b / etp   # etp gathers etp× the tokens
    saved += local * mlp_tensors(model) * model.shared_experts * model.moe_ffn_hidden * act_b / (1 if sp else tp)
    if engine != "megatron":
        capacity = routed / model.experts
        saved += local * model.experts * capacity * (4 + 1)
    dense_mlp = tokens * mlp_tensors(model) * model.ffn_hidden * act_b / tp
    return saved - dense_mlp


def expert_compute_s(gpu, model: ModelSpec, tokens: float, tp: int, ep: int, etp: int, sp: bool, precision: str,
                     engine: str, recompute: str) -> float:
    """GPU seconds of one MoE layer's routed and shared experts, router and permutation (forward + backward), minus
    the dense MLP the layer model already counted."""
    h, f = model.hidden, model.moe_ffn_hidden
    local = tokens / tp if sp else tokens
    experts = model.experts // ep
    m_e = max(1, round(routed_tokens(local, model) * etp / experts))       # rows each local expert multiplies
    gate = (2 if model.arch == "llama" else 1) * f // etp
    shapes = [(m_e, gate, h), (m_e, h, f // etp)]
    if engine == "megatron":      # grouped GEMM: forward, data grad and weight grad, all local experts at once
        routed_s = sum(grouped_gemm_s(gpu, experts, m, n, k, precision) + grouped_gemm_s(gpu, experts, m, k, n, precision)
                       + grouped_gemm_s(gpu, experts, k, n, m, precision) for m, n, k in shapes)
    else:                          # DeepSpeed's Experts: one module (and its GEMMs) after another
        routed_s = experts * fwd_bwd_gemm_s(gpu, shapes, precision)
        capacity = routed_tokens(local, model) / model.experts
        ec = int(model.experts * capacity)                             # einsum dispatch and combine: s x (E·C) x h
        routed_s += 2 * (gemm_s(gpu, ec, h, int(local), precision) * 3)
    act_b = 4 if precision == "fp32" else 2
    bw = gpu.hbm_gbps * 1e9 * gpu.hbm_efficiency
    router = fwd_bwd_gemm_s(gpu, [(int(local), model.experts, h)], precision)
    permute = PERMUTE_PASSES * routed_tokens(local, model) * h * act_b / bw
    shared = 0.0
    if model.shared_experts:     # a dense MLP of shared·moe_ffn_hidden on every token, split over tp
        fs = model.shared_experts * f // tp
        shared = fwd_bwd_gemm_s(gpu, [(int(tokens), (2 if model.arch == "llama" else 1) * fs, h),
                                      (int(tokens), h, fs)], precision)
    mlp_in = (2 if model.arch == "llama" else 1) * model.ffn_hidden
    dense = fwd_bwd_gemm_s(gpu, [(int(tokens), mlp_in // tp, h), (int(tokens), h, model.ffn_hidden // tp)], precision)
    total = routed_s + router + permute + shared
    if recompute == "full":
        total *= 4 / 3
        dense *= 4 / 3
    return total - dense


def grouped_gemm_s(gpu, groups: int, m: int, n: int, k: int, precision: str) -> float:
    """`groups` (m x k) @ (k x n) matmuls as one grouped GEMM (Megatron's --moe-grouped-gemm, CUTLASS/cuBLASLt
    grouped kernels): all groups' tiles spread over the SMs at once, so a short M wastes only its edge tile
    (128-row tiles: m = 40 rows use 31% of each tile); a roofline against every expert's weights read from HBM,
    which is what bounds small expert batches."""
    elem = 4 if precision == "fp32" else 2
    useful = m / (-(-m // 128) * 128)
    peak = gpu.peak_tflops(precision) * 1e12 * gpu.matmul_efficiency * useful
    bytes_s = groups * elem * (m * k + k * n + m * n) / (gpu.hbm_gbps * 1e9 * gpu.hbm_efficiency)
    return max(2.0 * groups * m * n * k / peak, bytes_s)


def moe_comm_s(cluster: Cluster, model: ModelSpec, tokens: float, tp: int, ep: int, etp: int, sp: bool, act_b: int,
               stride: int, recompute: str) -> tuple[float, float]:
    """(seconds, bytes sent) of one MoE layer's token traffic per micro-batch: dispatch and combine forward, their
    gradients backward (4 all-to-alls over ep; 6 with full recompute), and with etp > 1 the all-gather /
    reduce-scatter of the routed tokens inside the expert-tensor-parallel group."""
    local = tokens / tp if sp else tokens
    payload = routed_tokens(local, model) * model.hidden * act_b
    calls = 6 if recompute == "full" else 4
    seconds = calls * all_to_all_s(cluster, ep, stride, payload)
    sent = calls * payload * (ep - 1) / ep
    if etp > 1:
        bw, lat = group_bandwidth(cluster, etp, 1)
        unit = (etp - 1) / etp * payload * etp
        seconds += calls * (unit / bw + lat)
        sent += calls * unit
    return seconds, sent


# Megatron's selective recompute for MoE models (--recompute-granularity selective --recompute-modules ...,
# TransformerConfig.recompute_modules): what render asks for and what the memory model drops.
SELECTIVE_MODULES = ("core_attn", "layernorm", "moe_act")
MLA_SELECTIVE_MODULES = SELECTIVE_MODULES + ("mla_up_proj",)


def selective_saving_bytes(model: ModelSpec, tokens: float, tp: int, etp: int, sp: bool, act_b: int) -> tuple[float, float]:
    """(bytes per layer, bytes per MoE layer) that the selective modules do not keep: the two norm outputs
    ("layernorm"); MLA's decompressed q, k, v, kept as the q/kv latents instead ("mla_up_proj", DeepSeek-V3
    section 3.3.2 recomputes both); the routed experts' activation output ("moe_act")."""
    per_layer = 2 * tokens * model.hidden * act_b / (tp if sp else 1)
    if model.kv_lora_rank:
        q, kv = model.n_heads * model.head_dim, model.n_heads * (model.head_dim + model.v_head_dim)
        latent = model.q_lora_rank + model.kv_lora_rank + model.rope_head_dim
        per_layer += tokens * ((q + kv) / tp - latent) * act_b
    routed = routed_tokens(tokens / tp if sp else tokens, model)
    return per_layer, routed * model.moe_ffn_hidden * act_b
