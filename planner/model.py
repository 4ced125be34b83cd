"""ModelSpec: the shape of a decoder-only transformer, its exact parameter count and FLOPs per token."""
from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Literal

Arch = Literal["gpt2", "llama"]
# How flops_per_token counts (estimate's predicted MFU and the training program's measured MFU both use it).
FLOPS_FORMULA = "6N+12Lhs per token, PaLM appendix B (no recompute counted)"


@dataclass(frozen=True)
class ModelSpec:
    """A decoder-only transformer's shape.

    arch "gpt2": LayerNorm with bias, learned position embeddings, GELU MLP (2 matrices), biases
    everywhere (GPT-2, Megatron GPT). arch "llama": RMSNorm, rotary, SwiGLU MLP (3 matrices), no biases
    unless the flags say so (Llama, Mistral, most HF decoder-only configs).
    """

    name: str
    arch: Arch
    n_layers: int
    hidden: int
    n_heads: int
    n_kv_heads: int
    ffn_hidden: int
    vocab: int
    max_seq_len: int             # position-embedding table size (gpt2) / context length (llama)
    tied_embeddings: bool
    head_dim: int = 0            # 0 means hidden // n_heads
    attention_bias: bool = False  # llama-style q/k/v/o biases (Qwen2 has q/k/v only; see qkv_bias_only)
    qkv_bias_only: bool = False
    mlp_bias: bool = False
    qk_norm: bool = False        # llama-style RMSNorm on each head's q and k (Qwen3): 2·head_dim per layer
    # Sequence length the model is usually trained at (the planner's default --seq-len); 0 means
    # max_seq_len. Llama 3.1 has a 131072-token context but was pre-trained at 8192.
    default_seq_len: int = 0

    def __post_init__(self) -> None:
        for f in ("n_layers", "hidden", "n_heads", "n_kv_heads", "ffn_hidden", "vocab", "max_seq_len"):
            v = getattr(self, f)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{self.name}: {f}({v!r}) must be a positive integer")
        if self.n_heads % self.n_kv_heads:
            raise ValueError(f"{self.name}: n_kv_heads({self.n_kv_heads}) must divide n_heads({self.n_heads})")
        if self.head_dim == 0:
            if self.hidden % self.n_heads:
                raise ValueError(f"{self.name}: n_heads({self.n_heads}) must divide hidden({self.hidden}), "
                                 "or give head_dim")
            object.__setattr__(self, "head_dim", self.hidden // self.n_heads)
        if self.default_seq_len == 0:
            object.__setattr__(self, "default_seq_len", self.max_seq_len)
        if not isinstance(self.default_seq_len, int) or self.default_seq_len < 1:
            raise ValueError(f"{self.name}: default_seq_len({self.default_seq_len!r}) must be a positive integer")
        if self.arch not in ("gpt2", "llama"):
            raise ValueError(f"{self.name}: arch({self.arch!r}) must be 'gpt2' or 'llama'")

    # ---- parameter counts (exact: equal sum(p.numel()) of the transformers model, tied counted once)
    @property
    def embedding_params(self) -> int:
        """Token embedding (+ learned positions for gpt2)."""
        pos = self.max_seq_len * self.hidden if self.arch == "gpt2" else 0
        return self.vocab * self.hidden + pos

    @property
    def lm_head_params(self) -> int:
        return 0 if self.tied_embeddings else self.vocab * self.hidden

    @property
    def params_per_layer(self) -> int:
        h, q, kv = self.hidden, self.n_heads * self.head_dim, self.n_kv_heads * self.head_dim
        if self.arch == "gpt2":
            attn = h * (q + 2 * kv) + (q + 2 * kv) + q * h + h
            mlp = 2 * h * self.ffn_hidden + self.ffn_hidden + h
            norms = 4 * h
        else:
            attn = h * (q + 2 * kv) + q * h
            if self.attention_bias:
                attn += q + 2 * kv + h
            elif self.qkv_bias_only:
                attn += q + 2 * kv
            mlp = 3 * h * self.ffn_hidden + (2 * self.ffn_hidden + h if self.mlp_bias else 0)
            norms = 2 * h + (2 * self.head_dim if self.qk_norm else 0)
        return attn + mlp + norms

    @property
    def final_norm_params(self) -> int:
        return 2 * self.hidden if self.arch == "gpt2" else self.hidden

    @property
    def params(self) -> int:
        return (self.embedding_params + self.n_layers * self.params_per_layer
                + self.final_norm_params + self.lm_head_params)

    @property
    def non_embedding_params(self) -> int:
        return self.n_layers * self.params_per_layer + self.final_norm_params

    def flops_per_token(self, seq_len: int) -> int:
        """Training FLOPs per token without recompute: 6·N + 12·L·h·s (PaLM appendix B, nanoGPT's MFU).

        N counts every parameter once, the attention term is QK^T and AV over the full causal window.
        """
        return 6 * self.params + 12 * self.n_layers * self.n_heads * self.head_dim * seq_len

    def to_dict(self) -> dict:
        return {"name": self.name, "params": self.params, "arch": self.arch, "n_layers": self.n_layers,
                "hidden": self.hidden, "n_heads": self.n_heads, "n_kv_heads": self.n_kv_heads,
                "ffn_hidden": self.ffn_hidden, "vocab": self.vocab, "max_seq_len": self.max_seq_len,
                "tied_embeddings": self.tied_embeddings, "head_dim": self.head_dim,
                "attention_bias": self.attention_bias, "qkv_bias_only": self.qkv_bias_only,
                "mlp_bias": self.mlp_bias, "qk_norm": self.qk_norm, "default_seq_len": self.default_seq_len}

    @classmethod
    def from_dict(cls, d: dict) -> "ModelSpec":
        """Inverse of to_dict (plan.json's "model"); derived keys such as "params" are ignored."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})
