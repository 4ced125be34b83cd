"""FP8 training as Transformer Engine runs it under Megatron-core (planner/precision.py): refusals, memory
(bf16/fp32 master state unchanged, cached FP8 weights, FP8-saved GEMM inputs), time (FP8 GEMMs, bf16 attention
and head, casts), MFU against the bf16 peak with model TFLOP/s per GPU, and the --batch / JSON contract."""
import json

import pytest
from click.testing import CliRunner

from shardplan.cli import main
from shardplan.planner import Layout, Training, evaluate, get_cluster, get_model
from shardplan.planner.megatron.memory import layer_activation_bytes
from shardplan.planner.precision import gemm_weight_params, layer_cast_bytes

LLAMA = get_model("llama-3-8b")
LAYOUT = Layout(dp=4, tp=2, sequence_parallel=True, zero_stage=1, micro_batch=1, grad_accum=8)


def mg(precision, **kw):
    return Training(seq_len=8192, global_batch=32, precision=precision, engine="megatron", **kw)


def test_fp8_is_refused_where_it_does_not_exist():
    h100 = get_cluster("8xH100-80GB")
    with pytest.raises(ValueError, match="DeepSpeed has no FP8 training path of its own.*--engine megatron"):
        evaluate(LLAMA, h100, Layout(dp=8), Training(seq_len=2048, global_batch=8, precision="fp8"))
    with pytest.raises(ValueError, match=r"A100-80GB: the card has no FP8 tensor cores; use --precision bf16"):
        evaluate(LLAMA, get_cluster("8xA100-80GB"), LAYOUT, mg("fp8"))
    with pytest.raises(ValueError, match=r"mxfp8.*needs Blackwell.*use --precision fp8"):
        evaluate(LLAMA, h100, LAYOUT, mg("mxfp8"))
    assert evaluate(LLAMA, get_cluster("8xB200"), LAYOUT, mg("mxfp8")).fits


def test_fp8_memory_keeps_the_master_state_and_adds_the_cached_fp8_weights():
    h100 = get_cluster("8xH100-80GB")
    bf16, fp8 = (evaluate(LLAMA, h100, LAYOUT, mg(p)).memory for p in ("bf16", "fp8"))
    assert (fp8.grads_bytes, fp8.optimizer_bytes) == (bf16.grads_bytes, bf16.optimizer_bytes)   # fp32 main grads, Adam
    # row-wise + column-wise FP8 copies of every layer GEMM weight on this tp rank (+ a few bytes of scales)
    extra = fp8.params_bytes - bf16.params_bytes
    assert 2 * 32 * gemm_weight_params(LLAMA, 2) <= extra < 2 * 32 * gemm_weight_params(LLAMA, 2) + 10_000
    # the FP8 GEMMs save their inputs in FP8: the norm outputs shrink, the attention and activation outputs get
    # an FP8 copy beside the bf16 tensors that flash attention and SwiGLU's backward keep
    tokens, h, q, f = 4096, LLAMA.hidden, LLAMA.n_heads * LLAMA.head_dim, LLAMA.ffn_hidden
    delta = layer_activation_bytes(LLAMA, tokens, 2, True, 2, 1.0) - layer_activation_bytes(LLAMA, tokens, 2, True, 2)
    assert delta == pytest.approx(tokens * (-2 * h / 2 + q / 2 - f / 2))


def test_fp8_time_runs_the_layer_gemms_at_the_fp8_rate_and_the_rest_in_bf16():
    h100 = get_cluster("8xH100-80GB")
    bf16, fp8 = (evaluate(LLAMA, h100, LAYOUT, mg(p)) for p in ("bf16", "fp8"))
    speedup = bf16.time.compute_s / fp8.time.compute_s
    assert 1.2 < speedup < 1.8        # GEMMs at 2x, attention, norms, head and casts not: well short of 2x
    assert layer_cast_bytes(LLAMA, 4096, 2, "fp8") > layer_cast_bytes(LLAMA, 4096, 2, "mxfp8") > 0   # no amax pass
    assert fp8.time.tp_comm_s < bf16.time.tp_comm_s     # SP all-gathers carry FP8 inputs
    assert fp8.time.dp_comm_s == bf16.time.dp_comm_s    # gradients still reduce in fp32


def test_mfu_stays_against_the_bf16_peak_and_model_tflops_per_gpu_is_reported():
    e = evaluate(LLAMA, get_cluster("8xH100-80GB"), LAYOUT, mg("fp8"))
    assert e.mfu_peak == "bf16"
    assert e.mfu == pytest.approx(e.model_tflops_per_gpu / 989.0)
    asked = evaluate(LLAMA, get_cluster("8xH100-80GB"), LAYOUT, mg("fp8", mfu_peak="fp8"))
    assert asked.mfu == pytest.approx(e.model_tflops_per_gpu / 1979.0)
    d = e.to_dict()
    assert d["model_tflops_per_gpu"] == pytest.approx(e.tokens_per_s / 8 * LLAMA.flops_per_token(8192) / 1e12)
    assert d["mfu_peak"] == "bf16" and d["training"]["precision"] == "fp8"
    assert d["cluster"]["nvlink_domain"] == 8


def test_batch_requests_take_fp8_and_the_json_carries_the_contract():
    lines = [{"model": "llama-3-70b", "cluster": "18x4xGB200", "engine": "megatron",
              "layout": {"tp": 8, "sequence_parallel": True, "zero_stage": 1, "micro_batch": 1},
              "training": {"seq": 8192, "global_batch": 72, "precision": "fp8"}},
             {"model": "llama-3-70b", "cluster": "8x8xH100-80GB", "engine": "megatron",
              "layout": {"tp": 8, "sequence_parallel": True, "zero_stage": 1, "pp": 2, "micro_batch": 1},
              "training": {"seq": 8192, "global_batch": 64, "precision": "mxfp8"}}]
    out = CliRunner().invoke(main, ["estimate", "--batch", "-"], input="\n".join(json.dumps(x) for x in lines))
    first, second = (json.loads(line) for line in out.stdout.splitlines())
    assert first["training"]["precision"] == "fp8" and first["cluster"]["nvlink_domain"] == 72
    assert first["model_tflops_per_gpu"] > 0 and first["mfu_peak"] == "bf16"
    assert "mxfp8" in second["error"] and "Blackwell" in second["error"]


def test_tp_across_nvl72_trays_is_searched_and_costed_at_nvlink_speed():
    model = get_model("llama-3-70b")
    t = Training(seq_len=8192, global_batch=72, precision="fp8", engine="megatron")
    lay = Layout(dp=9, tp=8, sequence_parallel=True, zero_stage=1, micro_batch=1, grad_accum=8)
    rack = evaluate(model, get_cluster("18x4xGB200"), lay, t)
    split = evaluate(model, get_cluster("18x4xGB200", nvlink_domain=4), lay, t)   # as if each tray stood alone
    assert rack.time.tp_comm_s * 5 < split.time.tp_comm_s
