"""ModelSpec, presets, HF config.json reading and overrides.

Parameter counts are checked against the real thing: transformers' model built on the meta device from
the same config.json that get_model reads (sum(p.numel()) over model.parameters() counts tied weights once).
"""
import json
import subprocess
import sys

import pytest

from shardplan.planner.hf_config import LLAMA_LIKE
from shardplan.planner.model import ModelSpec
from shardplan.planner.presets import PRESETS, apply_overrides, get_model


def hf_config_dict(spec: ModelSpec, model_type: str | None = None) -> dict:
    """The config.json the Hub publishes for this shape (field names as in the real files)."""
    if spec.arch == "gpt2":
        return {"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"], "n_layer": spec.n_layers,
                "n_embd": spec.hidden, "n_head": spec.n_heads, "n_inner": spec.ffn_hidden,
                "vocab_size": spec.vocab, "n_positions": spec.max_seq_len, "n_ctx": spec.max_seq_len,
                "activation_function": "gelu_new", "tie_word_embeddings": spec.tied_embeddings,
                "bos_token_id": 0, "eos_token_id": 0}
    mt = model_type or ("mistral" if spec.name.startswith("mistral") else "llama")
    d = {"model_type": mt, "num_hidden_layers": spec.n_layers, "hidden_size": spec.hidden,
         "num_attention_heads": spec.n_heads, "num_key_value_heads": spec.n_kv_heads,
         "intermediate_size": spec.ffn_hidden, "vocab_size": spec.vocab, "head_dim": spec.head_dim,
         "max_position_embeddings": spec.max_seq_len, "tie_word_embeddings": spec.tied_embeddings,
         "hidden_act": "silu", "rms_norm_eps": 1e-5, "bos_token_id": 1, "eos_token_id": 2}
    if spec.default_seq_len != spec.max_seq_len:  # Llama 3.1 style long-context scaling
        d["rope_scaling"] = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                             "high_freq_factor": 4.0, "original_max_position_embeddings": spec.default_seq_len}
        d["rope_theta"] = 500000.0
    return d


def meta_param_count(config_dir) -> int:
    torch = pytest.importorskip("torch")
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg = AutoConfig.from_pretrained(str(config_dir), local_files_only=True)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(cfg)
    return sum(p.numel() for p in model.parameters())  # parameters() yields a tied weight once


def write_config(tmp_path, d: dict):
    (tmp_path / "config.json").write_text(json.dumps(d))
    return tmp_path


@pytest.mark.parametrize("name", [n for n, m in PRESETS.items() if not m.is_moe])  # MoE: tests/test_moe_model.py
def test_preset_count_equals_transformers_on_meta(name, tmp_path):
    spec = PRESETS[name]
    d = write_config(tmp_path, hf_config_dict(spec))
    loaded = get_model(str(d))
    assert loaded.to_dict() | {"name": name} == spec.to_dict()  # config.json -> the same shape
    assert meta_param_count(d) == spec.params


@pytest.mark.parametrize("name,params", [
    # published counts (Hub model cards / safetensors metadata)
    ("gpt2", 124_439_808), ("gpt2-medium", 354_823_168), ("gpt2-large", 774_030_080),
    ("gpt2-xl", 1_557_611_200), ("llama-2-7b", 6_738_415_616), ("llama-2-13b", 13_015_864_320),
    ("llama-2-70b", 68_976_648_192), ("llama-3-8b", 8_030_261_248), ("llama-3-70b", 70_553_706_496),
    ("llama-3.1-405b", 405_853_388_800), ("llama-3.2-1b", 1_235_814_400), ("llama-3.2-3b", 3_212_749_824),
    ("mistral-7b", 7_241_732_096),
])
def test_published_parameter_counts(name, params):
    assert get_model(name).params == params


# Narayanan et al. 2021, Table 1: (billions of parameters, heads, hidden, layers)
MEGATRON_TABLE = [(1.7, 24, 2304, 24), (3.6, 32, 3072, 30), (7.5, 32, 4096, 36), (18.4, 48, 6144, 40),
                  (39.1, 64, 8192, 48), (76.1, 80, 10240, 60), (145.6, 96, 12288, 80),
                  (310.1, 128, 16384, 96), (529.6, 128, 20480, 105), (1008.0, 160, 25600, 128)]

MEGATRON_NAMES = {1.7: "megatron-gpt-1.7b", 3.6: "megatron-gpt-3.6b", 7.5: "megatron-gpt-7.5b", 18.4: "megatron-gpt-18b",
                  39.1: "megatron-gpt-39b", 76.1: "megatron-gpt-76b", 145.6: "megatron-gpt-145b",
                  310.1: "megatron-gpt-310b", 529.6: "megatron-gpt-530b", 1008.0: "megatron-gpt-1t"}


@pytest.mark.parametrize("billions,heads,hidden,layers", MEGATRON_TABLE)
def test_megatron_shapes_match_the_paper(billions, heads, hidden, layers):
    name = MEGATRON_NAMES[billions]
    m = get_model(name)
    assert (m.n_heads, m.hidden, m.n_layers, m.vocab, m.max_seq_len) == (heads, hidden, layers, 51200, 2048)
    # The paper's count: 12lh^2 (1 + 13/(12h) + (V+s)/(12lh)) = 12lh^2 + 13lh + (V+s)h; it leaves out
    # the final LayerNorm (2h) that the model has.
    V, s, l, h = 51200, 2048, layers, hidden
    assert m.params == 12 * l * h * h + 13 * l * h + (V + s) * h + 2 * h
    assert round(m.params / 1e9, 1) == pytest.approx(billions, abs=0.05)
    assert m.default_seq_len == 2048


def test_contract_presets_for_cpu_runs():
    tiny, demo = get_model("gpt2-tiny"), get_model("gpt2-demo")
    assert (tiny.arch, tiny.n_layers, tiny.hidden, tiny.n_heads, tiny.ffn_hidden, tiny.vocab, tiny.max_seq_len,
            tiny.tied_embeddings) == ("gpt2", 2, 64, 4, 256, 512, 64, True)
    assert (demo.arch, demo.n_layers, demo.hidden, demo.n_heads, demo.ffn_hidden, demo.vocab, demo.max_seq_len,
            demo.tied_embeddings) == ("gpt2", 4, 128, 4, 512, 2048, 128, True)


@pytest.mark.parametrize("name,seq", [("gpt2", 1024), ("llama-2-7b", 4096), ("llama-3-8b", 8192),
                                      ("llama-3.1-405b", 8192), ("mistral-7b", 8192), ("gpt2-tiny", 64),
                                      ("gpt2-demo", 128), ("llama-3.2-1b", 8192)])
def test_default_training_seq_len(name, seq):
    assert get_model(name).default_seq_len == seq


def test_llama_31_context_is_the_long_one():
    assert get_model("llama-3.1-8b").max_seq_len == 131072
    assert get_model("llama-3-8b").max_seq_len == 8192


@pytest.mark.parametrize("spelling,name", [("GPT2-XL", "gpt2-xl"), ("openai-community/gpt2", "gpt2"),
                                           ("meta-llama/Meta-Llama-3-8B", "llama-3-8b"),
                                           ("meta-llama/Llama-2-7b-hf", "llama-2-7b"),
                                           ("meta-llama/Llama-2-70b-chat-hf", "llama-2-70b"),
                                           ("meta-llama/Llama-3.1-8B-Instruct", "llama-3.1-8b"),
                                           ("mistralai/Mistral-7B-v0.1", "mistral-7b")])
def test_preset_spellings(spelling, name):
    assert get_model(spelling) == PRESETS[name]


@pytest.mark.parametrize("typo,suggestion", [("gpt2-xxl", "gpt2-xl"), ("lama-2-7b", "llama-2-7b"),
                                             ("llama3-8b", "llama-3-8b")])
def test_unknown_preset_suggests_close_names(typo, suggestion):
    with pytest.raises(ValueError, match="unknown model") as e:
        get_model(typo)
    msg = str(e.value)
    assert repr(typo) in msg and suggestion in msg and "config.json" in msg and "\n" not in msg


# ---- real-format config.json files
GPT2_HUB = {  # openai-community/gpt2 config.json, as published
    "activation_function": "gelu_new", "architectures": ["GPT2LMHeadModel"], "attn_pdrop": 0.1,
    "bos_token_id": 50256, "embd_pdrop": 0.1, "eos_token_id": 50256, "initializer_range": 0.02,
    "layer_norm_epsilon": 1e-05, "model_type": "gpt2", "n_ctx": 1024, "n_embd": 768, "n_head": 12,
    "n_layer": 12, "n_positions": 1024, "resid_pdrop": 0.1, "summary_activation": None,
    "summary_first_dropout": 0.1, "summary_proj_to_labels": True, "summary_type": "cls_index",
    "summary_use_proj": True, "task_specific_params": {"text-generation": {"do_sample": True, "max_length": 50}},
    "vocab_size": 50257}
LLAMA31_8B_HUB = {  # meta-llama/Llama-3.1-8B config.json, as published
    "architectures": ["LlamaForCausalLM"], "attention_bias": False, "attention_dropout": 0.0,
    "bos_token_id": 128000, "eos_token_id": 128001, "hidden_act": "silu", "hidden_size": 4096,
    "initializer_range": 0.02, "intermediate_size": 14336, "max_position_embeddings": 131072, "mlp_bias": False,
    "model_type": "llama", "num_attention_heads": 32, "num_hidden_layers": 32, "num_key_value_heads": 8,
    "pretraining_tp": 1, "rms_norm_eps": 1e-05,
    "rope_scaling": {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                     "original_max_position_embeddings": 8192, "rope_type": "llama3"},
    "rope_theta": 500000.0, "tie_word_embeddings": False, "torch_dtype": "bfloat16",
    "transformers_version": "4.43.0.dev0", "use_cache": True, "vocab_size": 128256}
QWEN2_05B_HUB = {  # Qwen/Qwen2-0.5B config.json, as published (q/k/v biases, tied embeddings)
    "architectures": ["Qwen2ForCausalLM"], "attention_dropout": 0.0, "bos_token_id": 151643,
    "eos_token_id": 151643, "hidden_act": "silu", "hidden_size": 896, "initializer_range": 0.02,
    "intermediate_size": 4864, "max_position_embeddings": 131072, "max_window_layers": 24, "model_type": "qwen2",
    "num_attention_heads": 14, "num_hidden_layers": 24, "num_key_value_heads": 2, "rms_norm_eps": 1e-06,
    "rope_theta": 1000000.0, "sliding_window": 131072, "tie_word_embeddings": True, "torch_dtype": "bfloat16",
    "transformers_version": "4.40.1", "use_cache": True, "use_sliding_window": False, "vocab_size": 151936}

QWEN3_06B_HUB = {  # Qwen/Qwen3-0.6B config.json, as published (head_dim 128 > hidden/heads, q/k norms, tied)
    "architectures": ["Qwen3ForCausalLM"], "attention_bias": False, "attention_dropout": 0.0, "bos_token_id": 151643,
    "eos_token_id": 151645, "head_dim": 128, "hidden_act": "silu", "hidden_size": 1024, "initializer_range": 0.02,
    "intermediate_size": 3072, "max_position_embeddings": 40960, "max_window_layers": 28, "model_type": "qwen3",
    "num_attention_heads": 16, "num_hidden_layers": 28, "num_key_value_heads": 8, "rms_norm_eps": 1e-06,
    "rope_scaling": None, "rope_theta": 1000000, "sliding_window": None, "tie_word_embeddings": True,
    "torch_dtype": "bfloat16", "transformers_version": "4.51.0", "use_cache": True, "use_sliding_window": False,
    "vocab_size": 151936}


def test_hub_gpt2_config(tmp_path):
    (tmp_path / "gpt2-copy").mkdir()
    d = write_config(tmp_path / "gpt2-copy", GPT2_HUB)
    m = get_model(str(d / "config.json"))
    assert m.name == "gpt2-copy" and m.params == 124_439_808 == meta_param_count(d)
    assert m.to_dict() | {"name": "gpt2"} == PRESETS["gpt2"].to_dict()


def test_hub_llama31_config(tmp_path):
    m = get_model(write_config(tmp_path, LLAMA31_8B_HUB))  # a Path works too
    assert m.to_dict() | {"name": "llama-3.1-8b"} == PRESETS["llama-3.1-8b"].to_dict()
    assert m.default_seq_len == 8192 and m.max_seq_len == 131072


def test_hub_qwen2_config_has_qkv_biases(tmp_path):
    d = write_config(tmp_path, QWEN2_05B_HUB)
    m = get_model(str(d))
    assert m.qkv_bias_only and m.tied_embeddings and m.n_kv_heads == 2
    assert m.params == meta_param_count(d) == 494_032_768


def test_hub_qwen3_config_has_qk_norms_and_wide_heads(tmp_path):
    d = write_config(tmp_path, QWEN3_06B_HUB)
    m = get_model(str(d))
    assert m.qk_norm and m.head_dim == 128 and m.n_heads * m.head_dim == 2048
    assert m.params == meta_param_count(d)
    assert round(m.non_embedding_params / 1e9, 2) == 0.44  # the model card: 0.6B, 0.44B non-embedding


@pytest.mark.parametrize("model_type", sorted(LLAMA_LIKE))
def test_every_supported_llama_like_type_counts_exactly(model_type, tmp_path):
    pytest.importorskip("torch")
    from transformers import AutoConfig

    for bias in (False, True):
        cfg = AutoConfig.for_model(model_type, num_hidden_layers=2, hidden_size=64, num_attention_heads=4,
                                   num_key_value_heads=2, intermediate_size=96, vocab_size=320,
                                   max_position_embeddings=128, head_dim=24, pad_token_id=None,
                                   bos_token_id=1, eos_token_id=2, attention_bias=bias, mlp_bias=bias)
        cfg.save_pretrained(str(tmp_path))
        m = get_model(str(tmp_path))
        assert m.params == meta_param_count(tmp_path), (model_type, bias)
        assert m.head_dim == 24


# ---- bad config.json: one line naming the file and the fix
@pytest.mark.parametrize("content,expect", [
    ('{"model_type": "gpt2", "n_layer": 12,', "not valid JSON"),
    ('[1, 2]', "not an object"),
    ('{"n_layer": 12}', "no \"model_type\""),
    ('{"model_type": "t5", "is_encoder_decoder": true}', "encoder-decoder"),
    ('{"model_type": "bart", "d_model": 768}', "'bart' is an encoder-decoder"),
    ('{"model_type": "bert", "hidden_size": 768}', "'bert' is not supported"),
    ('{"model_type": "olmo2", "hidden_size": 1024}', "'olmo2' is not supported"),
    ('{"model_type": "no-such-arch"}', "'no-such-arch' is not supported"),
    ('{"model_type": "gpt2", "n_layer": -3}', "n_layers(-3) must be a positive integer"),
    ('{"model_type": "llama", "hidden_size": 100, "num_attention_heads": 3, "num_key_value_heads": 3}',
     "hidden size (100) is not a multiple of the number of attention heads (3)"),
    ('{"model_type": "gpt2", "n_layer": "twelve"}', "Field 'n_layer' expected int, got str (value: 'twelve')"),
])
def test_bad_config_json(tmp_path, content, expect):
    f = tmp_path / "config.json"
    f.write_text(content)
    with pytest.raises(ValueError) as e:
        get_model(str(f))
    msg = str(e.value)
    assert expect in msg and str(f) in msg and "\n" not in msg


def test_hub_cache_snapshot_is_named_after_the_model(tmp_path):
    snap = tmp_path / "models--Qwen--Qwen2-0.5B" / "snapshots" / "8f445e3628f3500ee69f24e1303c9f10f5342a39"
    snap.mkdir(parents=True)
    assert get_model(str(write_config(snap, QWEN2_05B_HUB))).name == "Qwen2-0.5B"


def test_missing_paths(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        get_model(str(tmp_path / "nope" / "config.json"))
    with pytest.raises(ValueError, match="has no config.json"):
        get_model(str(tmp_path))


# ---- overrides (the CLI's --layers --hidden --heads --kv-heads --ffn-hidden --vocab --seq-len)
def test_overrides_change_the_shape_and_the_name():
    m = get_model("gpt2", layers=48, hidden=1600, heads=25)
    assert (m.n_layers, m.hidden, m.n_heads, m.n_kv_heads, m.head_dim, m.ffn_hidden) == (48, 1600, 25, 25, 64, 6400)
    assert m.params == PRESETS["gpt2-xl"].params and m.name == "gpt2+layers=48+hidden=1600+heads=25"


def test_seq_len_override_moves_positions_and_default():
    m = get_model("gpt2", seq_len=2048, vocab=50304)
    assert m.max_seq_len == m.default_seq_len == 2048
    assert m.params - PRESETS["gpt2"].params == 1024 * 768 + 47 * 768


def test_none_overrides_are_ignored():
    assert get_model("llama-3-8b", layers=None, hidden=None) == PRESETS["llama-3-8b"]


def test_gqa_override_keeps_kv_heads_and_validates():
    m = get_model("llama-3-8b", heads=64, hidden=8192)
    assert (m.n_kv_heads, m.head_dim) == (8, 128)
    with pytest.raises(ValueError, match=r"n_kv_heads\(8\) must divide n_heads\(12\)"):
        get_model("llama-3-8b", heads=12, hidden=1536)


@pytest.mark.parametrize("overrides,expect", [({"layers": 0}, "layers(0) must be a positive integer"),
                                              ({"hidden": "big"}, "hidden('big')"),
                                              ({"depth": 3}, "unknown model override(s) depth")])
def test_bad_overrides(overrides, expect):
    with pytest.raises(ValueError) as e:
        apply_overrides(PRESETS["gpt2"], **overrides)
    assert expect in str(e.value)


def test_to_dict_round_trip():
    for spec in (PRESETS["gpt2"], PRESETS["llama-3.1-8b"],
                 ModelSpec("q", "llama", 2, 64, 4, 2, 96, 320, 128, True, head_dim=24, qkv_bias_only=True)):
        d = json.loads(json.dumps(spec.to_dict()))
        assert d["params"] == spec.params and ModelSpec.from_dict(d) == spec


def test_presets_do_not_import_transformers_or_torch():
    code = ("import sys; from shardplan.planner.presets import get_model; get_model('llama-3-70b', layers=2); "
            "bad = {'torch', 'transformers'} & set(sys.modules); assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)
