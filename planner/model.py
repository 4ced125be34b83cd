"""ModelSpec: the shape of a decoder-only transformer (dense or mixture-of-experts), its exact total and active
parameter counts and FLOPs per token."""
from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Literal

Arch = Literal["gpt2", "llama"]
# How flops_per_token counts (estimate's predicted MFU and the training program's measured MFU both use it).
FLOPS_FORMULA = "6N+12Lhs per token, PaLM appendix B (no recompute counted; N = active parameters for MoE)"


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
    # ---- mixture of experts (experts 0: a dense model). An MoE layer replaces the MLP by a router (a bias-free
    # hidden x experts matrix), `experts` routed MLPs of moe_ffn_hidden and `shared_experts` MLPs every token
    # goes through (DeepSeek; HF stores them as one MLP of shared_experts·moe_ffn_hidden: the same count).
    experts: int = 0
    top_k: int = 0                       # routed experts per token
    moe_ffn_hidden: int = 0              # one expert's FFN width; 0 means ffn_hidden
    shared_experts: int = 0
    dense_layers: tuple[int, ...] = ()   # positions of the layers that keep a dense MLP of ffn_hidden
    # ---- multi-head latent attention (DeepSeek-V2/V3, Liu et al. 2024 section 2.1; kv_lora_rank 0: ordinary
    # attention). head_dim is then the q/k head width (nope + rope), v_head_dim the value head width.
    q_lora_rank: int = 0                 # 0: q projected straight from the hidden state
    kv_lora_rank: int = 0
    rope_head_dim: int = 0
    v_head_dim: int = 0                  # 0 means head_dim
    qk_norm_full: bool = False           # OLMoE: one RMSNorm over the whole q and k projections, not per head

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
        self._check_moe()

    def _check_moe(self) -> None:
        for f in ("experts", "top_k", "moe_ffn_hidden", "shared_experts", "q_lora_rank", "kv_lora_rank",
                  "rope_head_dim", "v_head_dim"):
            v = getattr(self, f)
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise ValueError(f"{self.name}: {f}({v!r}) must be a non-negative integer")
        object.__setattr__(self, "dense_layers", tuple(sorted(set(self.dense_layers))))
        if self.experts:
            if not 1 <= self.top_k <= self.experts:
                raise ValueError(f"{self.name}: top_k({self.top_k}) must be between 1 and experts({self.experts})")
            if self.moe_ffn_hidden == 0:
                object.__setattr__(self, "moe_ffn_hidden", self.ffn_hidden)
            if any(not isinstance(i, int) or not 0 <= i < self.n_layers for i in self.dense_layers):
                raise ValueError(f"{self.name}: dense_layers {list(self.dense_layers)} must be layer positions in "
                                 f"[0, {self.n_layers})")
        elif self.top_k or self.shared_experts or self.dense_layers:
            raise ValueError(f"{self.name}: top_k, shared_experts and dense_layers need experts > 0")
        if self.kv_lora_rank:
            if self.arch != "llama" or not 0 < self.rope_head_dim < self.head_dim:
                raise ValueError(f"{self.name}: MLA needs arch llama and 0 < rope_head_dim({self.rope_head_dim}) < "
                                 f"head_dim({self.head_dim})")
        if self.v_head_dim == 0:
            object.__setattr__(self, "v_head_dim", self.head_dim)

    def splits_heads(self, n: int) -> bool:
        """Whether n ranks can share the attention heads evenly: n divides the heads and the kv heads (tensor
        parallelism, and Ulysses / Megatron's a2a context parallelism over tp·cp)."""
        return self.n_heads % n == 0 and self.n_kv_heads % n == 0

    # ---- mixture of experts: which layers, and what one expert holds
    @property
    def is_moe(self) -> bool:
        return self.experts > 0

    @property
    def moe_layers(self) -> tuple[int, ...]:
        """Positions of the MoE layers (none for a dense model)."""
        return tuple(i for i in range(self.n_layers) if i not in self.dense_layers) if self.experts else ()

    def moe_layers_in(self, start: int, stop: int) -> int:
        """MoE layers among positions [start, stop) (a pipeline stage)."""
        return sum(1 for i in self.moe_layers if start <= i < stop)

    @property
    def expert_params(self) -> int:
        """One routed (or shared) expert: the MLP at moe_ffn_hidden."""
        return self._mlp_params(self.moe_ffn_hidden)

    @property
    def router_params(self) -> int:
        return self.experts * self.hidden   # bias-free linear hidden -> experts (HF and DeepSpeed's TopKGate.wg)
    # ---- parameter counts (exact: equal sum(p.numel()) of the transformers model, tied counted once)
    @property
    def embedding_params(self) -> int:
        """Token embedding (+ learned positions for gpt2)."""
        pos = self.max_seq_len * self.hidden if self.arch == "gpt2" else 0
        return self.vocab * self.hidden + pos

    @property
    def lm_head_params(self) -> int:
        return 0 if self.tied_embeddings else self.vocab * self.hidden

    def _mlp_params(self, f: int) -> int:
        h = self.hidden
        if self.arch == "gpt2":
            return 2 * h * f + f + h
        return 3 * h * f + (2 * f + h if self.mlp_bias else 0)

    @property
    def attention_params(self) -> int:
        """One layer's attention and its norms (everything of a layer but the MLP)."""
        h, q, kv = self.hidden, self.n_heads * self.head_dim, self.n_kv_heads * self.head_dim
        if self.arch == "gpt2":
            return h * (q + 2 * kv) + (q + 2 * kv) + q * h + h + 4 * h
        if self.kv_lora_rank:   # MLA (HF DeepseekV3Attention): q_a/q_a_norm/q_b or q_proj; kv_a, kv_a_norm, kv_b; o
            qa = h * self.q_lora_rank + self.q_lora_rank + self.q_lora_rank * q if self.q_lora_rank else h * q
            nope = self.head_dim - self.rope_head_dim
            kv_a = h * (self.kv_lora_rank + self.rope_head_dim) + self.kv_lora_rank
            kv_b = self.kv_lora_rank * self.n_heads * (nope + self.v_head_dim)
            return qa + kv_a + kv_b + self.n_heads * self.v_head_dim * h + 2 * h
        attn = h * (q + 2 * kv) + q * h
        if self.attention_bias:
            attn += q + 2 * kv + h
        elif self.qkv_bias_only:
            attn += q + 2 * kv
        norms = 2 * h + ((q + kv) if self.qk_norm_full else (2 * self.head_dim if self.qk_norm else 0))
        return attn + norms

    @property
    def params_per_layer(self) -> int:
        """A dense layer (attention, norms, the MLP at ffn_hidden)."""
        return self.attention_params + self._mlp_params(self.ffn_hidden)

    @property
    def moe_layer_params(self) -> int:
        """An MoE layer: attention, norms, router, every routed and shared expert."""
        return self.attention_params + self.router_params + (self.experts + self.shared_experts) * self.expert_params

    def layer_params(self, i: int) -> int:
        return self.moe_layer_params if i in self.moe_layers else self.params_per_layer

    def layers_params(self, start: int, stop: int) -> int:
        """Parameters of the layers at positions [start, stop)."""
        moe = self.moe_layers_in(start, stop)
        return moe * self.moe_layer_params + (stop - start - moe) * self.params_per_layer

    @property
    def idle_expert_params(self) -> int:
        """Routed-expert parameters a token does not use: (experts - top_k) per MoE layer."""
        return len(self.moe_layers) * (self.experts - self.top_k) * self.expert_params

    @property
    def final_norm_params(self) -> int:
        return 2 * self.hidden if self.arch == "gpt2" else self.hidden

    @property
    def params(self) -> int:
        return (self.embedding_params + self.layers_params(0, self.n_layers)
                + self.final_norm_params + self.lm_head_params)

    @property
    def active_params(self) -> int:
        """Parameters one token passes through: all but the routed experts it is not sent to (equal to params for
        a dense model; Mixtral 8x7B 12.9B of 46.7B, DeepSeek-V3 37.6B of 671B as their papers count)."""
        return self.params - self.idle_expert_params

    @property
    def non_embedding_params(self) -> int:
        return self.layers_params(0, self.n_layers) + self.final_norm_params

    def flops_per_token(self, seq_len: int) -> int:
        """Training FLOPs per token without recompute: 6·N + 12·L·h·s (PaLM appendix B, nanoGPT's MFU).

        N counts every active parameter once (all of them for a dense model; for MoE the router, shared and
        top_k routed experts: Fedus et al. 2022 count FLOPs per token the same way), the attention term is
        QK^T and AV over the full causal window: 6·L·s·heads·(qk head dim + v head dim), 12·L·h·s when equal.
        """
        attn = 6 * self.n_layers * self.n_heads * (self.head_dim + self.v_head_dim) * seq_len
        return 6 * self.active_params + attn

    def to_dict(self) -> dict:
        return {"name": self.name, "params": self.params, "arch": self.arch, "n_layers": self.n_layers,
                "hidden": self.hidden, "n_heads": self.n_heads, "n_kv_heads": self.n_kv_heads,
                "ffn_hidden": self.ffn_hidden, "vocab": self.vocab, "max_seq_len": self.max_seq_len,
                "tied_embeddings": self.tied_embeddings, "head_dim": self.head_dim,
                "attention_bias": self.attention_bias, "qkv_bias_only": self.qkv_bias_only,
                "mlp_bias": self.mlp_bias, "qk_norm": self.qk_norm, "default_seq_len": self.default_seq_len,
                "active_params": self.active_params, "experts": self.experts,
                "top_k": self.top_k if self.experts else None, "moe_ffn_hidden": self.moe_ffn_hidden,
                "shared_experts": self.shared_experts, "dense_layers": list(self.dense_layers),
                "q_lora_rank": self.q_lora_rank, "kv_lora_rank": self.kv_lora_rank,
                "rope_head_dim": self.rope_head_dim, "v_head_dim": self.v_head_dim,
                "qk_norm_full": self.qk_norm_full}

    @classmethod
    def from_dict(cls, d: dict) -> "ModelSpec":
        """Inverse of to_dict (plan.json's "model"); derived keys such as "params" are ignored."""
        names = {f.name for f in fields(cls)}
        kw = {k: v for k, v in d.items() if k in names}
        if kw.get("top_k") is None:
            kw.pop("top_k", None)   # null for a dense model
        if "dense_layers" in kw:
            kw["dense_layers"] = tuple(kw["dense_layers"])
        return cls(**kw)
