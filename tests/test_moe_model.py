"""Mixture-of-experts ModelSpecs: presets and local config.json of each family against transformers' model classes
built on the meta device (total parameters exact), active parameters and FLOPs per token, the estimate's JSON."""
import json

import pytest

from shardplan.planner.model import ModelSpec
from shardplan.planner.presets import PRESETS, get_model

from test_model import meta_param_count, write_config

# The config.json fields the Hub publishes for each preset (the shape fields; defaults left out).
HF_CONFIGS = {
    "mixtral-8x7b": dict(model_type="mixtral", hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                         num_attention_heads=32, num_key_value_heads=8, vocab_size=32000,
                         max_position_embeddings=32768, num_local_experts=8, num_experts_per_tok=2),
    "mixtral-8x22b": dict(model_type="mixtral", hidden_size=6144, intermediate_size=16384, num_hidden_layers=56,
                          num_attention_heads=48, num_key_value_heads=8, vocab_size=32768,
                          max_position_embeddings=65536, num_local_experts=8, num_experts_per_tok=2),
    "qwen3-30b-a3b": dict(model_type="qwen3_moe", hidden_size=2048, intermediate_size=6144, moe_intermediate_size=768,
                          num_hidden_layers=48, num_attention_heads=32, num_key_value_heads=4, head_dim=128,
                          vocab_size=151936, max_position_embeddings=40960, num_experts=128, num_experts_per_tok=8,
                          decoder_sparse_step=1, mlp_only_layers=[], tie_word_embeddings=False),
    "qwen3-235b-a22b": dict(model_type="qwen3_moe", hidden_size=4096, intermediate_size=12288,
                            moe_intermediate_size=1536, num_hidden_layers=94, num_attention_heads=64,
                            num_key_value_heads=4, head_dim=128, vocab_size=151936, max_position_embeddings=40960,
                            num_experts=128, num_experts_per_tok=8, decoder_sparse_step=1, mlp_only_layers=[],
                            tie_word_embeddings=False),
    "olmoe-1b-7b": dict(model_type="olmoe", hidden_size=2048, intermediate_size=1024, num_hidden_layers=16,
                        num_attention_heads=16, num_key_value_heads=16, vocab_size=50304,
                        max_position_embeddings=4096, num_experts=64, num_experts_per_tok=8),
    "deepseek-v2-lite": dict(model_type="deepseek_v2", hidden_size=2048, intermediate_size=10944,
                             moe_intermediate_size=1408, num_hidden_layers=27, num_attention_heads=16,
                             num_key_value_heads=16, n_routed_experts=64, n_shared_experts=2, num_experts_per_tok=6,
                             first_k_dense_replace=1, moe_layer_freq=1, q_lora_rank=None, kv_lora_rank=512,
                             qk_nope_head_dim=128, qk_rope_head_dim=64, v_head_dim=128, vocab_size=102400,
                             max_position_embeddings=163840),
    "deepseek-v3": dict(model_type="deepseek_v3", hidden_size=7168, intermediate_size=18432,
                        moe_intermediate_size=2048, num_hidden_layers=61, num_attention_heads=128,
                        num_key_value_heads=128, n_routed_experts=256, n_shared_experts=1, num_experts_per_tok=8,
                        first_k_dense_replace=3, q_lora_rank=1536, kv_lora_rank=512, qk_nope_head_dim=128,
                        qk_rope_head_dim=64, v_head_dim=128, vocab_size=129280, max_position_embeddings=163840,
                        n_group=8, topk_group=4),
}


def _shape(spec: ModelSpec) -> dict:
    return {k: v for k, v in spec.to_dict().items() if k not in ("name", "default_seq_len")}


@pytest.mark.parametrize("name", list(HF_CONFIGS))
def test_moe_preset_equals_config_json_and_transformers_on_meta(name, tmp_path):
    d = write_config(tmp_path, HF_CONFIGS[name])
    loaded = get_model(str(d))
    assert _shape(loaded) == _shape(PRESETS[name])
    assert meta_param_count(d) == PRESETS[name].params


def test_qwen3_moe_dense_positions_follow_the_modeling_rule(tmp_path):
    # Qwen3MoeDecoderLayer: layers in mlp_only_layers or with (i + 1) % decoder_sparse_step != 0 stay dense
    cfg = dict(HF_CONFIGS["qwen3-30b-a3b"], num_hidden_layers=6, decoder_sparse_step=2, mlp_only_layers=[3])
    d = write_config(tmp_path, cfg)
    spec = get_model(str(d))
    assert spec.dense_layers == (0, 2, 3, 4) and spec.moe_layers == (1, 5)
    assert meta_param_count(d) == spec.params


@pytest.mark.parametrize("name,total_b,active_b", [
    # published totals / activated parameters (model cards and papers), in billions, to 1%
    ("mixtral-8x7b", 46.7, 12.9), ("mixtral-8x22b", 141, 39), ("qwen3-30b-a3b", 30.5, 3.3),
    ("qwen3-235b-a22b", 235, 22), ("olmoe-1b-7b", 6.9, 1.3), ("deepseek-v3", 671, 37.5),
])
def test_published_total_and_active_counts(name, total_b, active_b):
    m = get_model(name)
    assert m.params / 1e9 == pytest.approx(total_b, rel=0.01)
    assert m.active_params / 1e9 == pytest.approx(active_b, rel=0.03)


def test_active_params_and_flops():
    tiny = get_model("gpt2-tiny-moe")
    # one MoE block of 4 experts, top-2: two experts' MLPs (2·64·256 + 256 + 64 each) are idle per token
    assert tiny.moe_layers == (1,) and tiny.params - tiny.active_params == 2 * (2 * 64 * 256 + 256 + 64)
    assert tiny.flops_per_token(64) == 6 * tiny.active_params + 12 * 2 * 64 * 64
    dense = get_model("gpt2")
    assert dense.active_params == dense.params and dense.experts == 0
    v3 = get_model("deepseek-v3")   # MLA: q/k heads of 192, v heads of 128
    assert v3.flops_per_token(4096) == 6 * v3.active_params + 6 * 61 * 128 * (192 + 128) * 4096


def test_to_dict_round_trip_and_dense_contract():
    for name in ("deepseek-v3", "gpt2-tiny-moe", "gpt2"):
        spec = get_model(name)
        assert ModelSpec.from_dict(json.loads(json.dumps(spec.to_dict()))) == spec
    d = get_model("gpt2").to_dict()
    assert (d["experts"], d["top_k"], d["active_params"]) == (0, None, d["params"])


@pytest.mark.parametrize("kw,msg", [
    (dict(experts=4, top_k=5), "top_k(5) must be between 1 and experts(4)"),
    (dict(experts=4, top_k=2, dense_layers=(7,)), "dense_layers [7]"),
    (dict(top_k=2), "need experts > 0"),
])
def test_bad_moe_shapes_name_the_value(kw, msg):
    with pytest.raises(ValueError, match=msg.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
        ModelSpec(name="x", arch="gpt2", n_layers=2, hidden=64, n_heads=4, n_kv_heads=4, ffn_hidden=256, vocab=512,
                  max_seq_len=64, tied_embeddings=True, **kw)
