"""Model presets: the published shapes of common decoder-only LMs, by name.

Each shape is the one in the model's Hugging Face config.json (or the paper for Megatron GPT); the
parameter counts they give are tested against transformers' models built on the meta device.
`default_seq_len` is the sequence length the model was pre-trained at, the planner's default --seq-len.
"""
from __future__ import annotations

import difflib
import os
from dataclasses import replace

from .model import ModelSpec


def _gpt2(name: str, layers: int, hidden: int, heads: int, *, vocab: int = 50257, positions: int = 1024,
          ffn: int = 0) -> ModelSpec:
    # GPT-2 / Megatron GPT: LayerNorm + learned positions + GELU MLP of 4h, biases, tied embeddings.
    return ModelSpec(name=name, arch="gpt2", n_layers=layers, hidden=hidden, n_heads=heads, n_kv_heads=heads,
                     ffn_hidden=ffn or 4 * hidden, vocab=vocab, max_seq_len=positions, tied_embeddings=True)


def _llama(name: str, layers: int, hidden: int, heads: int, kv_heads: int, ffn: int, vocab: int,
           context: int, *, trained_at: int = 0, tied: bool = False) -> ModelSpec:
    return ModelSpec(name=name, arch="llama", n_layers=layers, hidden=hidden, n_heads=heads,
                     n_kv_heads=kv_heads, ffn_hidden=ffn, vocab=vocab, max_seq_len=context,
                     tied_embeddings=tied, default_seq_len=trained_at)


def _moe(name: str, layers: int, hidden: int, heads: int, kv_heads: int, ffn: int, vocab: int, context: int, *,
         experts: int, top_k: int, expert_ffn: int = 0, shared: int = 0, first_dense: int = 0, head_dim: int = 0,
         qk_norm: bool = False, qk_norm_full: bool = False, q_lora: int = 0, kv_lora: int = 0, rope: int = 0,
         v_head: int = 0, trained_at: int = 0) -> ModelSpec:
    # HF Mixtral / Qwen3-MoE / OLMoE / DeepSeek-V2/V3: llama-style attention (or MLA), SwiGLU experts, untied.
    return ModelSpec(name=name, arch="llama", n_layers=layers, hidden=hidden, n_heads=heads, n_kv_heads=kv_heads,
                     ffn_hidden=ffn, vocab=vocab, max_seq_len=context, tied_embeddings=False, head_dim=head_dim,
                     qk_norm=qk_norm, qk_norm_full=qk_norm_full, default_seq_len=trained_at, experts=experts,
                     top_k=top_k, moe_ffn_hidden=expert_ffn, shared_experts=shared,
                     dense_layers=tuple(range(first_dense)), q_lora_rank=q_lora, kv_lora_rank=kv_lora,
                     rope_head_dim=rope, v_head_dim=v_head)


_PRESET_LIST: tuple[ModelSpec, ...] = (
    # GPT-2 (Radford et al. 2019; HF openai-community/gpt2*): vocab 50257, 1024 positions.
    _gpt2("gpt2", 12, 768, 12),
    _gpt2("gpt2-medium", 24, 1024, 16),
    _gpt2("gpt2-large", 36, 1280, 20),
    _gpt2("gpt2-xl", 48, 1600, 25),
    # Small shapes for CPU runs (CONTRACTS.md): equivalence tests and the README demo.
    _gpt2("gpt2-tiny", 2, 64, 4, vocab=512, positions=64, ffn=256),
    _gpt2("gpt2-demo", 4, 128, 4, vocab=2048, positions=128, ffn=512),
    # Llama 2 (Touvron et al. 2023; HF meta-llama/Llama-2-*-hf): vocab 32000, context 4096.
    _llama("llama-2-7b", 32, 4096, 32, 32, 11008, 32000, 4096),
    _llama("llama-2-13b", 40, 5120, 40, 40, 13824, 32000, 4096),
    _llama("llama-2-70b", 80, 8192, 64, 8, 28672, 32000, 4096),
    # Llama 3 (context 8192) and 3.1 (context 131072, pre-trained at 8192); HF meta-llama/Meta-Llama-3*.
    _llama("llama-3-8b", 32, 4096, 32, 8, 14336, 128256, 8192),
    _llama("llama-3-70b", 80, 8192, 64, 8, 28672, 128256, 8192),
    _llama("llama-3.1-8b", 32, 4096, 32, 8, 14336, 128256, 131072, trained_at=8192),
    _llama("llama-3.1-70b", 80, 8192, 64, 8, 28672, 128256, 131072, trained_at=8192),
    _llama("llama-3.1-405b", 126, 16384, 128, 8, 53248, 128256, 131072, trained_at=8192),
    # Llama 3.2 (HF meta-llama/Llama-3.2-1B, -3B): tied embeddings, context 131072, pre-trained at 8192.
    _llama("llama-3.2-1b", 16, 2048, 32, 8, 8192, 128256, 131072, trained_at=8192, tied=True),
    _llama("llama-3.2-3b", 28, 3072, 24, 8, 8192, 128256, 131072, trained_at=8192, tied=True),
    # Mistral 7B v0.1 (Jiang et al. 2023, Table 1: context_len 8192; config max_position_embeddings 32768).
    _llama("mistral-7b", 32, 4096, 32, 8, 14336, 32000, 32768, trained_at=8192),
    # Megatron-LM GPT scaling shapes (Narayanan et al. 2021, Table 1): vocab 51200, seq 2048, tied.
    _gpt2("megatron-gpt-1.7b", 24, 2304, 24, vocab=51200, positions=2048),
    _gpt2("megatron-gpt-3.6b", 30, 3072, 32, vocab=51200, positions=2048),
    _gpt2("megatron-gpt-7.5b", 36, 4096, 32, vocab=51200, positions=2048),
    _gpt2("megatron-gpt-18b", 40, 6144, 48, vocab=51200, positions=2048),
    _gpt2("megatron-gpt-39b", 48, 8192, 64, vocab=51200, positions=2048),
    _gpt2("megatron-gpt-76b", 60, 10240, 80, vocab=51200, positions=2048),
    _gpt2("megatron-gpt-145b", 80, 12288, 96, vocab=51200, positions=2048),
    _gpt2("megatron-gpt-310b", 96, 16384, 128, vocab=51200, positions=2048),
    _gpt2("megatron-gpt-530b", 105, 20480, 128, vocab=51200, positions=2048),
    _gpt2("megatron-gpt-1t", 128, 25600, 160, vocab=51200, positions=2048),
    # Mixture of experts (HF config.json of each; counts tested against transformers' classes on meta).
    # Mixtral (Jiang et al. 2024; mistralai/Mixtral-8x7B-v0.1, -8x22B-v0.1): 8 experts, top-2, every layer MoE.
    _moe("mixtral-8x7b", 32, 4096, 32, 8, 14336, 32000, 32768, experts=8, top_k=2, trained_at=4096),
    _moe("mixtral-8x22b", 56, 6144, 48, 8, 16384, 32768, 65536, experts=8, top_k=2, trained_at=4096),
    # Qwen3 MoE (Qwen/Qwen3-30B-A3B, Qwen3-235B-A22B): 128 experts, top-8, per-head q/k norm, pre-trained at 4096.
    _moe("qwen3-30b-a3b", 48, 2048, 32, 4, 6144, 151936, 40960, experts=128, top_k=8, expert_ffn=768,
         head_dim=128, qk_norm=True, trained_at=4096),
    _moe("qwen3-235b-a22b", 94, 4096, 64, 4, 12288, 151936, 40960, experts=128, top_k=8, expert_ffn=1536,
         head_dim=128, qk_norm=True, trained_at=4096),
    # OLMoE (Muennighoff et al. 2024; allenai/OLMoE-1B-7B-0924): 64 experts, top-8, q/k norm over the projection.
    _moe("olmoe-1b-7b", 16, 2048, 16, 16, 1024, 50304, 4096, experts=64, top_k=8, qk_norm_full=True),
    # DeepSeek-V2-Lite (deepseek-ai/DeepSeek-V2-Lite): MLA without q compression, 2 shared + 64 routed, top-6,
    # layer 0 dense; DeepSeek-V3 (Liu et al. 2024, deepseek-ai/DeepSeek-V3): 1 shared + 256 routed, top-8,
    # layers 0-2 dense, pre-trained at 4096 (the MTP module is not in the HF model and not counted here).
    _moe("deepseek-v2-lite", 27, 2048, 16, 16, 10944, 102400, 163840, experts=64, top_k=6, expert_ffn=1408,
         shared=2, first_dense=1, head_dim=192, kv_lora=512, rope=64, v_head=128, trained_at=4096),
    _moe("deepseek-v3", 61, 7168, 128, 128, 18432, 129280, 163840, experts=256, top_k=8, expert_ffn=2048, shared=1,
         first_dense=3, head_dim=192, q_lora=1536, kv_lora=512, rope=64, v_head=128, trained_at=4096),
    # The CPU test model of the MoE training program: gpt2-tiny with block 1 of 2 (every other block) an MoE of
    # 4 experts, top-2 (deepspeed.moe.layer.MoE; DeepSpeed's gate is a bias-free hidden x experts linear).
    ModelSpec(name="gpt2-tiny-moe", arch="gpt2", n_layers=2, hidden=64, n_heads=4, n_kv_heads=4, ffn_hidden=256,
              vocab=512, max_seq_len=64, tied_embeddings=True, experts=4, top_k=2, dense_layers=(0,)),
)

PRESETS: dict[str, ModelSpec] = {m.name: m for m in _PRESET_LIST}

# Other spellings people type (Hub ids, the paper's names); keys are normalised by _normalise.
ALIASES: dict[str, str] = {
    "gpt2-small": "gpt2",
    "mistral-7b-v0.1": "mistral-7b",
    "llama-3-405b": "llama-3.1-405b",
    "megatron-gpt-1008b": "megatron-gpt-1t",
    "megatron-gpt-1000b": "megatron-gpt-1t",
}


def _normalise(name: str) -> str:
    """'meta-llama/Meta-Llama-3-8B' -> 'llama-3-8b'; 'openai-community/gpt2-XL' -> 'gpt2-xl'."""
    n = name.strip().lower().rsplit("/", 1)[-1].replace("_", "-")
    if n.startswith("meta-llama-"):
        n = n[len("meta-"):]
    for suffix in ("-hf", "-chat", "-instruct"):  # fine-tuned variants keep the base shape
        if n.endswith(suffix):
            n = n[: -len(suffix)]
    return ALIASES.get(n, n)


def find_preset(name: str) -> ModelSpec | None:
    return PRESETS.get(_normalise(name))


def get_preset(name: str) -> ModelSpec:
    """The preset called `name` (case-insensitive, Hub ids accepted), or a ValueError naming close ones."""
    spec = find_preset(name)
    if spec is not None:
        return spec
    close = difflib.get_close_matches(_normalise(name), list(PRESETS) + list(ALIASES), n=4, cutoff=0.5)
    hint = f"did you mean {', '.join(close)}? " if close else ""
    raise ValueError(f"unknown model {name!r}: {hint}give a preset ({', '.join(PRESETS)}) "
                     "or the path of a Hugging Face config.json or model directory")


# get_model's keyword overrides (the CLI's --layers --hidden ...) -> ModelSpec fields.
OVERRIDES: dict[str, str] = {"layers": "n_layers", "hidden": "hidden", "heads": "n_heads", "kv_heads": "n_kv_heads",
                             "ffn_hidden": "ffn_hidden", "vocab": "vocab", "seq_len": "max_seq_len"}


def apply_overrides(spec: ModelSpec, **overrides) -> ModelSpec:
    """spec with some shape fields replaced; None values are ignored (unset CLI flags).

    Derived fields follow: head_dim when it was hidden/heads, kv_heads when the model had one per head
    (no GQA), a GPT-2 ffn of 4h. The name records the changes, e.g. "gpt2+layers=48".
    """
    given = {k: v for k, v in overrides.items() if v is not None}
    unknown = sorted(set(given) - set(OVERRIDES))
    if unknown:
        raise ValueError(f"unknown model override(s) {', '.join(unknown)}: use {', '.join(OVERRIDES)}")
    if not given:
        return spec
    for k, v in given.items():
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"model override {k}({v!r}) must be a positive integer")
    new = {OVERRIDES[k]: v for k, v in given.items()}
    if "hidden" in new or "n_heads" in new:
        if spec.head_dim * spec.n_heads == spec.hidden and not spec.kv_lora_rank:
            new["head_dim"] = new["v_head_dim"] = 0  # was derived: derive again from the new hidden/heads
        if "n_kv_heads" not in new and spec.n_kv_heads == spec.n_heads:
            new["n_kv_heads"] = new.get("n_heads", spec.n_heads)
        if "ffn_hidden" not in new and spec.arch == "gpt2" and spec.ffn_hidden == 4 * spec.hidden:
            new["ffn_hidden"] = 4 * new.get("hidden", spec.hidden)
    if "max_seq_len" in new:
        new["default_seq_len"] = new["max_seq_len"]
    new["name"] = spec.name + "".join(f"+{k}={v}" for k, v in given.items())
    return replace(spec, **new)


def get_model(name_or_path: str, **overrides) -> ModelSpec:
    """A ModelSpec from a preset name, a local HF config.json or a model directory, then the overrides.

    >>> get_model("gpt2").params
    124439808
    >>> get_model("llama-3-8b", layers=8).n_layers
    8
    """
    if isinstance(name_or_path, os.PathLike):
        name_or_path = os.fspath(name_or_path)
    if not isinstance(name_or_path, str) or not name_or_path.strip():
        raise ValueError(f"model({name_or_path!r}) must be a preset name or a config.json/model directory path")
    looks_like_path = os.sep in name_or_path or name_or_path.endswith(".json") or name_or_path.startswith(".")
    spec = None if looks_like_path and os.path.exists(name_or_path) else find_preset(name_or_path)
    if spec is None:
        if looks_like_path or os.path.exists(name_or_path):
            from .hf_config import load_hf_config

            spec = load_hf_config(name_or_path)
        else:
            spec = get_preset(name_or_path)  # raises with close names
    return apply_overrides(spec, **overrides)
