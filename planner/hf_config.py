"""Read a local Hugging Face config.json (or a model directory holding one) into a ModelSpec.

transformers' config classes do the reading (defaults, attribute aliases such as GPT-2's n_embd), so a
config.json means what it means to transformers. Nothing is downloaded. transformers is imported only
here, and only when a path is given, so planning from a preset stays fast.
"""
from __future__ import annotations

import json
from pathlib import Path

from .model import ModelSpec

# model_type -> (which attention biases it has, whether it reads mlp_bias, per-head q/k RMSNorm). Only types
# whose layer shape the "llama" arch reproduces exactly (RMSNorm with a weight, q/k/v/o, 3-matrix gated MLP);
# tests/test_model.py checks each, biases on and off, against transformers' model on the meta device.
#   "flag": q/k/v/o biases when attention_bias;
#   "qkv": q/k/v biases always (Qwen2Attention); "none": no biases whatever the config says.
LLAMA_LIKE: dict[str, tuple[str, bool, bool]] = {
    "llama": ("flag", True, False), "granite": ("flag", True, False), "smollm3": ("flag", True, False),
    "gemma": ("flag", False, False), "mistral": ("none", False, False), "ministral": ("none", False, False),
    "phi3": ("none", False, False), "qwen2": ("qkv", False, False), "qwen3": ("flag", False, True),
}
# GPT-2 layout: LayerNorm with bias, learned positions, 2-matrix MLP, biases everywhere.
GPT2_LIKE: frozenset[str] = frozenset({"gpt2"})
# Mixture-of-experts types (llama-style layers whose MLP is a router + SwiGLU experts; DeepSeek with MLA), read
# by _moe_spec; each checked against transformers' model on the meta device (tests/test_moe_model.py).
MOE_TYPES: frozenset[str] = frozenset({"mixtral", "qwen3_moe", "olmoe", "deepseek_v2", "deepseek_v3"})
SUPPORTED = tuple(sorted(GPT2_LIKE | set(LLAMA_LIKE) | MOE_TYPES))


def _config_file(path: str | Path) -> Path:
    p = Path(path).expanduser()
    if p.is_dir():
        p = p / "config.json"
        if not p.is_file():
            raise ValueError(f"model directory {str(path)!r} has no config.json: give a Hugging Face "
                             "model directory or the path of its config.json")
    elif not p.is_file():
        raise ValueError(f"model config {str(path)!r} does not exist: give a preset name or the path of a "
                         "Hugging Face config.json or model directory")
    return p


def read_config_dict(path: str | Path) -> tuple[Path, dict]:
    """The parsed config.json and where it was, or a ValueError naming the file and what is wrong."""
    f = _config_file(path)
    try:
        text = f.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"cannot read model config {str(f)!r}: {e}; check the path and its permissions") from None
    try:
        d = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"model config {str(f)!r} is not valid JSON ({e.msg} at line {e.lineno} column "
                         f"{e.colno}): fix the file or give a preset name") from None
    if not isinstance(d, dict):
        raise ValueError(f"model config {str(f)!r} is a JSON {type(d).__name__}, not an object: "
                         "give a Hugging Face config.json")
    return f, d


def _pretrained_seq_len(d: dict, context: int) -> int:
    # Long-context checkpoints (Llama 3.1: rope scaling to 131072) record the pre-training length here.
    for key in ("rope_parameters", "rope_scaling"):
        rope = d.get(key)
        if isinstance(rope, dict) and isinstance(rope.get("original_max_position_embeddings"), int):
            return min(rope["original_max_position_embeddings"], context)
    return context


def load_hf_config(path: str | Path) -> ModelSpec:
    """A ModelSpec from a local config.json or model directory; decoder-only GPT-2/Llama-like types only."""
    f, d = read_config_dict(path)
    model_type = d.get("model_type")
    if not isinstance(model_type, str) or not model_type:
        raise ValueError(f"model config {str(f)!r} has no \"model_type\": give a Hugging Face config.json "
                         f"of a decoder-only model ({', '.join(SUPPORTED)})")
    if d.get("is_encoder_decoder") or "encoder" in d or "decoder" in d:
        raise ValueError(f"model config {str(f)!r} is an encoder-decoder ({model_type}): shardplan plans "
                         f"decoder-only models ({', '.join(SUPPORTED)})")
    # lazy: transformers takes seconds to import (it imports torch when installed)
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING
    from transformers.utils import logging as hf_logging

    if model_type not in SUPPORTED:
        kind = "is not supported (its layer shape is not modelled)"
        if model_type in CONFIG_MAPPING and _is_encoder_decoder(CONFIG_MAPPING[model_type]):
            kind = "is an encoder-decoder; shardplan plans decoder-only models"
        raise ValueError(f"model config {str(f)!r}: model_type {model_type!r} {kind}; supported: "
                         f"{', '.join(SUPPORTED)} - or use a preset with --layers/--hidden/--heads/--kv-heads/"
                         "--ffn-hidden/--vocab overrides")
    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # token-id and rope notes are about inference, not the shape we read
    try:
        cfg = CONFIG_MAPPING[model_type].from_dict(d)
    except Exception as e:  # the config class's own validation: wrong types, inconsistent values
        cause = e.__cause__ or e  # huggingface_hub wraps the validator's error in a multi-line one
        reason = " ".join(str(cause).split())
        raise ValueError(f"model config {str(f)!r} is not a valid {model_type} config ({reason}); "
                         "fix the file") from None
    finally:
        hf_logging.set_verbosity(level)
    name = _model_name(f) or model_type
    try:
        if model_type in GPT2_LIKE:
            spec = _gpt2_spec(name, cfg)
        elif model_type in MOE_TYPES:
            spec = _moe_spec(name, cfg, d, model_type)
        else:
            spec = _llama_spec(name, cfg, d, LLAMA_LIKE[model_type])
    except (TypeError, AttributeError) as e:
        raise ValueError(f"model config {str(f)!r} is missing or has a malformed shape field ({e}); "
                         "fix the file") from None
    except ValueError as e:
        raise ValueError(f"model config {str(f)!r}: {e}") from None
    return spec


def _is_encoder_decoder(config_class) -> bool:
    try:
        return bool(config_class().is_encoder_decoder)
    except Exception:  # composite configs that need arguments: not ours to plan either way
        return False


def _model_name(f: Path) -> str:
    """The model directory's name; for a Hub cache snapshot (models--org--name/snapshots/<hash>/) the model's."""
    if f.parent.parent.name == "snapshots" and f.parent.parent.parent.name.startswith("models--"):
        return f.parent.parent.parent.name.split("--")[-1]
    return f.parent.name


def _need(cfg, key: str):
    v = getattr(cfg, key, None)
    if v is None:
        raise TypeError(f"{key} is not set")
    return v


def _gpt2_spec(name: str, cfg) -> ModelSpec:
    hidden = _need(cfg, "n_embd")
    return ModelSpec(name=name, arch="gpt2", n_layers=_need(cfg, "n_layer"), hidden=hidden,
                     n_heads=_need(cfg, "n_head"), n_kv_heads=_need(cfg, "n_head"),
                     ffn_hidden=getattr(cfg, "n_inner", None) or 4 * hidden,  # GPT2MLP: n_inner or 4*n_embd
                     vocab=_need(cfg, "vocab_size"), max_seq_len=_need(cfg, "n_positions"),
                     tied_embeddings=bool(getattr(cfg, "tie_word_embeddings", True)))


def _llama_spec(name: str, cfg, raw: dict, kind: tuple[str, bool, bool]) -> ModelSpec:
    biases, reads_mlp_bias, qk_norm = kind
    bias_flag = bool(getattr(cfg, "attention_bias", False))
    hidden, heads = _need(cfg, "hidden_size"), _need(cfg, "num_attention_heads")
    head_dim = getattr(cfg, "head_dim", None) or 0
    if heads and hidden % heads == 0 and head_dim == hidden // heads:
        head_dim = 0  # the derived value; keep it derived so --hidden/--heads overrides recompute it
    context = _need(cfg, "max_position_embeddings")
    return ModelSpec(name=name, arch="llama", n_layers=_need(cfg, "num_hidden_layers"), hidden=hidden,
                     n_heads=heads, n_kv_heads=getattr(cfg, "num_key_value_heads", None) or heads,
                     ffn_hidden=_need(cfg, "intermediate_size"), vocab=_need(cfg, "vocab_size"),
                     max_seq_len=context, tied_embeddings=bool(getattr(cfg, "tie_word_embeddings", False)),
                     head_dim=head_dim, attention_bias=biases == "flag" and bias_flag,
                     qkv_bias_only=biases == "qkv",
                     mlp_bias=reads_mlp_bias and bool(getattr(cfg, "mlp_bias", False)), qk_norm=qk_norm,
                     default_seq_len=_pretrained_seq_len(raw, context))


def _moe_spec(name: str, cfg, raw: dict, model_type: str) -> ModelSpec:
    """Mixtral, Qwen3-MoE, OLMoE, DeepSeek-V2/V3: which layers are MoE follows each modeling file's rule."""
    layers = _need(cfg, "num_hidden_layers")
    if model_type.startswith("deepseek"):   # DeepseekV2/V3DecoderLayer: MoE from layer first_k_dense_replace on
        experts, shared = _need(cfg, "n_routed_experts"), getattr(cfg, "n_shared_experts", 0) or 0
        dense = tuple(range(getattr(cfg, "first_k_dense_replace", 0) or 0))
        mla = dict(q_lora_rank=getattr(cfg, "q_lora_rank", None) or 0, kv_lora_rank=_need(cfg, "kv_lora_rank"),
                   rope_head_dim=_need(cfg, "qk_rope_head_dim"), v_head_dim=_need(cfg, "v_head_dim"),
                   head_dim=_need(cfg, "qk_nope_head_dim") + _need(cfg, "qk_rope_head_dim"))
    else:
        experts = _need(cfg, "num_local_experts" if model_type == "mixtral" else "num_experts")
        shared, mla = 0, {}
        if model_type == "qwen3_moe":   # Qwen3MoeDecoderLayer: mlp_only_layers and decoder_sparse_step stay dense
            step, only = getattr(cfg, "decoder_sparse_step", 1) or 1, set(getattr(cfg, "mlp_only_layers", []) or [])
            dense = tuple(i for i in range(layers) if i in only or (i + 1) % step)
        else:
            dense = ()
    hidden, heads = _need(cfg, "hidden_size"), _need(cfg, "num_attention_heads")
    if not mla:
        head_dim = getattr(cfg, "head_dim", None) or 0
        mla = {"head_dim": 0 if head_dim == hidden // heads and hidden % heads == 0 else head_dim}
    context = _need(cfg, "max_position_embeddings")
    expert_ffn = getattr(cfg, "moe_intermediate_size", None) or _need(cfg, "intermediate_size")
    return ModelSpec(name=name, arch="llama", n_layers=layers, hidden=hidden, n_heads=heads,
                     n_kv_heads=getattr(cfg, "num_key_value_heads", None) or heads,
                     ffn_hidden=_need(cfg, "intermediate_size"), vocab=_need(cfg, "vocab_size"), max_seq_len=context,
                     tied_embeddings=bool(getattr(cfg, "tie_word_embeddings", False)),
                     attention_bias=model_type == "qwen3_moe" and bool(getattr(cfg, "attention_bias", False)),
                     qk_norm=model_type == "qwen3_moe", qk_norm_full=model_type == "olmoe",
                     default_seq_len=_pretrained_seq_len(raw, context), experts=experts,
                     top_k=_need(cfg, "num_experts_per_tok"), moe_ffn_hidden=expert_ffn, shared_experts=shared,
                     dense_layers=dense, **mla)
