"""Activation memory of shardplan's GPT-2/Llama training program, per layer and for the loss.

Counted tensor by tensor from what autograd saves (Korthikanti et al. 2022, "Reducing Activation
Recomputation", section 4.1), adapted to this program: SDPA/flash attention keeps q, k, v, the output and
a logsumexp instead of the a·s² score and softmax tensors; there is no dropout (no masks); GELU tanh
saves its input; sequence parallelism is off, so norms and residuals are replicated over tp.
"""
from __future__ import annotations

from functools import lru_cache

from .model import ModelSpec

LN_STAT_BYTES = 8          # LayerNorm/RMSNorm keep fp32 mean and rstd per token (RMSNorm: rstd only)


@lru_cache(maxsize=8192)
def layer_saved_bytes(model: ModelSpec, tokens: int, tp: int, act_bytes: int, engine: str = "deepspeed",
                      sequence_parallel: bool = False) -> int:
    """Bytes autograd keeps for one transformer layer of one micro-batch of `tokens` tokens (no recompute).

    deepspeed: the model itself is cast to bf16/fp16, so every saved tensor is in that dtype (gpt2 with
    ffn=4h gives 8 + 24/t bytes·sbh/2... i.e. Korthikanti's 10 + 24/t without the two dropout masks).
    torch: autocast keeps fp32 residuals and LayerNorm inputs and saves the bf16 casts of matmul inputs.
    """
    h, q = model.hidden, model.n_heads * model.head_dim
    kv, f = model.n_kv_heads * model.head_dim, model.ffn_hidden
    heads = model.n_heads // tp if model.n_heads % tp == 0 else model.n_heads / tp
    b = act_bytes
    # replicated over tp: norm inputs (x, x + attn) and norm outputs (inputs of the column-parallel matmuls)
    replicated = 4 * tokens * h * b
    if engine == "torch":        # fp32 residual stream and norm inputs, bf16 casts of the norm outputs
        replicated = 2 * tokens * h * 4 + 2 * tokens * h * 2
    qkv = tokens * (q + 2 * kv) * b          # saved by SDPA (views of the fused projection's output)
    attn_out = tokens * q * b                # SDPA output = input of the row-parallel out-projection
    if model.arch == "gpt2":
        mlp = 2 * tokens * f * b             # c_fc output (GELU input) and GELU output (c_proj input)
    else:
        mlp = 4 * tokens * f * b             # gate, up, silu(gate), silu(gate)*up (SwiGLU)
    lse = 4 * tokens * heads                 # flash attention's fp32 logsumexp per head and token
    if sequence_parallel:                    # norms and residuals hold s/t tokens each
        replicated /= tp
    stats = 2 * LN_STAT_BYTES * tokens
    return int(replicated + (qkv + attn_out + mlp) / tp + lse + stats)


@lru_cache(maxsize=8192)
def layer_backward_working_bytes(model: ModelSpec, tokens: int, tp: int, act_bytes: int) -> int:
    """Transient gradients while one layer runs backward: the MLP's widest input/output gradients."""
    return int(2 * tokens * model.ffn_hidden * act_bytes / tp + 2 * tokens * model.hidden * act_bytes)


def checkpoint_input_bytes(model: ModelSpec, tokens: int, act_bytes: int, engine: str = "deepspeed",
                           shards: int = 1) -> int:
    """Full recompute keeps only each block's input (the residual stream; fp32 under torch autocast),
    split over tp under sequence parallelism (shards = tp)."""
    return tokens * model.hidden * (4 if engine == "torch" else act_bytes) // shards


def final_norm_bytes(model: ModelSpec, tokens: int, act_bytes: int, engine: str = "deepspeed",
                     shards: int = 1) -> int:
    """The final norm's saved input and output (the LM-head matmul input)."""
    if engine == "torch":
        return tokens * model.hidden * (4 + 2) + LN_STAT_BYTES * tokens
    return (2 * tokens * model.hidden * act_bytes + LN_STAT_BYTES * tokens) // shards


def loss_peak_bytes(model: ModelSpec, tokens: int, vocab_shards: int = 1) -> int:
    """Logits and cross-entropy at their largest: the first step of backward.

    The program computes logits in the model dtype, upcasts them to fp32 and runs log_softmax + nll_loss.
    log_softmax saves its fp32 output (4·b·s·V); its backward then holds that output, the incoming
    gradient and its own result at once: 12·b·s·V bytes (the forward's end holds 2 + 4 + 4 = 10).
    """
    return 12 * tokens * model.vocab // vocab_shards


def tied_head_grad_bytes(model: ModelSpec, act_bytes: int, vocab_shards: int = 1) -> int:
    """The LM head's gradient w.r.t. a tied embedding waits in autograd's input buffer until the
    embedding's own gradient arrives at the end of backward (one V·h tensor in the model dtype)."""
    return model.vocab * model.hidden * act_bytes // vocab_shards if model.tied_embeddings else 0
