"""`shardplan plan | estimate | compare`: output contracts, --batch, and bad input (exit 2, one line, no traceback)."""
import json
import subprocess
import sys

import pytest
from click.testing import CliRunner

from shardplan.cli import main
from shardplan.planner import Layout, Training, evaluate, get_cluster, get_model

CONTRACT_KEYS = {"engine", "model", "cluster", "layout", "memory", "fits", "step_time_s", "tokens_per_s", "mfu"}
MEMORY_KEYS = {"params_bytes", "grads_bytes", "optimizer_bytes", "activations_bytes", "other_bytes", "peak_bytes",
               "capacity_bytes"}


def run(*args, input=None):
    return CliRunner().invoke(main, list(args), input=input)


def test_plan_json_follows_the_contract():
    r = run("plan", "--model", "gpt2-xl", "--cluster", "2x8xA100-80GB", "--global-batch", "512", "--json")
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert {"best", "candidates", "evaluated", "reasons"} <= set(out)
    assert CONTRACT_KEYS <= set(out["best"]) and MEMORY_KEYS <= set(out["best"]["memory"])
    assert set(out["best"]["layout"]) == {"dp", "tp", "pp", "zero_stage", "micro_batch", "grad_accum",
                                          "checkpointing", "offload", "sequence_parallel", "cp", "vpp", "pp_layers", "ep", "etp"}
    layout = out["best"]["layout"]
    assert out["best"]["engine"] == "deepspeed" and layout["pp_layers"] is None and layout["cp"] == 1
    assert layout["dp"] * layout["tp"] * layout["pp"] == 16
    assert layout["micro_batch"] * layout["grad_accum"] * layout["dp"] == 512
    assert out["best"]["fits"] and out["evaluated"] > 0 and out["reasons"]


def test_plan_prints_the_layout_first_then_alternatives_then_reasons():
    r = run("plan", "--model", "gpt2-xl", "--cluster", "2x8xA100-80GB", "--global-batch", "512")
    assert r.exit_code == 0, r.output
    text = r.stdout
    assert text.index("dp=") < text.index("peak per GPU") < text.index("tokens/s") < text.index("Why")
    for part in ("params", "grads", "optimizer", "activations", "other", "MFU", "step time"):
        assert part in text
    assert "layouts evaluated" in text


def test_estimate_json_is_exactly_evaluate():
    r = run("estimate", "--model", "gpt2-xl", "--cluster", "1xH200", "--zero", "2", "--micro-batch", "16",
            "--grad-accum", "1", "--checkpointing", "none", "--json")
    assert r.exit_code == 0, r.output
    expected = evaluate(get_model("gpt2-xl"), get_cluster("1xH200"),
                        Layout(dp=1, zero_stage=2, micro_batch=16, grad_accum=1), Training(seq_len=1024))
    assert json.loads(r.stdout) == json.loads(json.dumps(expected.to_dict()))


def test_estimate_derives_grad_accum_from_the_global_batch_tokens():
    r = run("estimate", "--model", "gpt2", "--cluster", "8xH100-80GB", "--micro-batch", "4", "--zero", "1",
            "--global-batch-tokens", "1M", "--json")
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert out["training"]["global_batch"] == 1024          # 2^20 tokens / 1024 per sequence
    assert out["layout"]["grad_accum"] == 1024 // (8 * 4)


def test_gpus_caps_the_cluster():
    r = run("plan", "--model", "gpt2", "--cluster", "4x8xH100-80GB", "--gpus", "16", "--json")
    assert r.exit_code == 0, r.output
    best = json.loads(r.stdout)["best"]
    assert best["cluster"]["nodes"] == 2 and best["cluster"]["world_size"] == 16
    r = run("plan", "--model", "gpt2", "--cluster", "4x8xH100-80GB", "--gpus", "12")
    assert r.exit_code == 2 and "multiple of 8" in r.stderr


def test_estimate_batch_scores_each_line_and_reports_bad_ones(tmp_path):
    lines = [
        {"model": "gpt2", "cluster": "1xH200", "layout": {"zero": 1, "micro_batch": 8}},
        {"model": "gpt2", "cluster": "1xH200", "layout": {"micro-batch": 4, "grad-accum": 2},
         "overrides": {"layers": 6}, "training": {"seq": 512, "precision": "fp16"}},
        "not json",
        {"model": "gpt2-xxl", "cluster": "1xH200"},
        {"model": "gpt2", "cluster": "2xH200", "layout": {"tp": 3}},
        {"cluster": "8xA100-80GB", "layout": {"zero_stage": 3, "micro_batch": 2}},
    ]
    path = tmp_path / "requests.jsonl"
    path.write_text("\n".join(json.dumps(l) if isinstance(l, dict) else l for l in lines) + "\n\n")
    r = run("estimate", "--batch", str(path), "--model", "gpt2-medium")
    assert r.exit_code == 2
    out = [json.loads(line) for line in r.stdout.splitlines()]
    assert len(out) == 6
    assert out[0]["layout"]["zero_stage"] == 1 and out[0]["layout"]["micro_batch"] == 8
    assert out[1]["model"]["n_layers"] == 6 and out[1]["training"]["seq_len"] == 512
    assert out[1]["training"]["precision"] == "fp16" and out[1]["layout"]["grad_accum"] == 2
    assert out[2]["line"] == 3 and "error" in out[2]
    assert out[3]["line"] == 4 and "gpt2-xxl" in out[3]["error"]
    assert out[4]["line"] == 5 and "tp(3)" in out[4]["error"]
    assert out[5]["model"]["name"] == "gpt2-medium" and out[5]["layout"]["dp"] == 8   # the flags fill the gaps
    assert "3 of 6 requests failed" in r.stderr and "Traceback" not in r.output


def test_estimate_batch_reads_stdin():
    line = json.dumps({"model": "gpt2", "cluster": "1xH200"})
    r = run("estimate", "--batch", "-", input=line + "\n" + line + "\n")
    assert r.exit_code == 0, r.output
    assert [json.loads(l)["fits"] for l in r.stdout.splitlines()] == [True, True]


@pytest.mark.parametrize("args, fragment", [
    (["plan", "--model", "gpt2-xxl", "--cluster", "1xH200"], "gpt2-xxl"),
    (["plan", "--model", "gpt2", "--cluster", "8xH100x"], "8xH100x"),
    (["plan", "--model", "./missing/config.json", "--cluster", "1xH200"], "missing"),
    (["estimate", "--model", "gpt2-xl", "--cluster", "8xA100-80GB", "--tp", "2"], "tp(2) must divide n_heads(25)"),
    (["estimate", "--model", "gpt2", "--cluster", "8xA100-80GB", "--dp", "2"], "must equal the cluster's 8 GPUs"),
    (["estimate", "--model", "gpt2", "--cluster", "2x4xA100-80GB", "--pp", "2", "--zero", "2"], "use --zero 1"),
    (["plan", "--model", "llama-3.1-405b", "--cluster", "1xA100-40GB", "--offload", "none",
      "--seq", "4096"], "CPU offload makes it fit"),
    (["plan", "--model", "gpt2", "--cluster", "1xH200", "--headroom", "150%"], "headroom"),
    (["plan", "--model", "gpt2", "--cluster", "1xH200", "--seq", "4096"], "--seq 1024"),
    (["compare", "--model", "gpt2", "--cluster", "1xH200", "--global-batch", "8", "--global-batch-tokens", "1M"],
     "not both"),
])
def test_bad_input_is_one_line_and_exit_2(args, fragment):
    r = run(*args)
    assert r.exit_code == 2, r.output
    assert "Traceback" not in r.output and r.stdout == ""
    assert fragment in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_nothing_fits_names_the_fewest_gpus_that_would():
    r = run("plan", "--model", "llama-2-70b", "--cluster", "1xA100-80GB", "--offload", "none")
    assert r.exit_code == 2
    assert "does not fit on 1xA100-80GB" in r.stderr and "GPUs fit (--cluster" in r.stderr


def test_compare_json_has_every_method_with_its_numbers():
    r = run("compare", "--model", "llama-2-7b", "--cluster", "8xA100-80GB", "--global-batch", "64", "--json")
    assert r.exit_code == 0, r.output
    rows = json.loads(r.stdout)
    names = [row["method"] for row in rows]
    assert names == ["data parallel", "ZeRO-1", "ZeRO-2", "ZeRO-3", "tensor parallel", "pipeline parallel", "hybrid",
                     "best on DeepSpeed", "best on Megatron-core"]
    by = {row["method"]: row for row in rows}
    assert by["best on DeepSpeed"]["engine"] == "deepspeed" and by["best on Megatron-core"]["engine"] == "megatron"
    assert by["best on Megatron-core"]["layout"]["sequence_parallel"] == (by["best on Megatron-core"]["layout"]["tp"] > 1)
    assert by["tensor parallel"]["layout"]["tp"] == 8 and by["pipeline parallel"]["layout"]["pp"] == 8
    assert by["ZeRO-3"]["memory"]["peak_bytes"] < by["data parallel"]["memory"]["peak_bytes"]
    for row in rows:
        assert {"fits", "step_time_s", "tokens_per_s", "mfu"} <= set(row)
        assert "comm_bytes" in row["time"] and "bubble_s" in row["time"]


def test_compare_table_marks_the_fastest():
    r = run("compare", "--model", "gpt2-xl", "--cluster", "1xH200", "--global-batch", "64")
    assert r.exit_code == 0, r.output
    assert "★" in r.stdout and "ZeRO-3" in r.stdout and "tensor parallel" not in r.stdout


def test_help_teaches_with_examples():
    for command in ("plan", "estimate", "compare"):
        r = run(command, "--help")
        assert r.exit_code == 0 and "Examples:" in r.stdout and "shardplan " + command in r.stdout


def test_plan_path_imports_no_torch():
    code = ("import sys; from shardplan.cli import main\n"
            "main(['plan', '--model', 'gpt2', '--cluster', '1xH200', '--json'], standalone_mode=False)\n"
            "heavy = [m for m in ('torch', 'deepspeed', 'transformers', 'jinja2') if m in sys.modules]\n"
            "assert not heavy, heavy")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr[-2000:]
