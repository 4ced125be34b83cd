"""The training program as users run it (one process): run-dir checks, bad input, checkpoints, metrics."""
import json

import pytest

from shardplan.launch.train.config import RunConfigError, load_run_config
from shardplan.planner.layout import Layout
from train_helpers import TINY_MODEL, losses, make_run_dir, summary, train_single


def _fails_cleanly(result, *fragments):
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    for fragment in fragments:
        assert fragment in result.stderr, result.stderr[-3000:]


# ---- run directory checks (no processes) ---------------------------------------------------------

def test_ds_config_disagreeing_with_plan_names_both_values(tmp_path):
    run_dir = make_run_dir(tmp_path, micro=4, prepared_data=False,
                           ds_overrides={"train_micro_batch_size_per_gpu": 2, "train_batch_size": 2})
    with pytest.raises(RunConfigError, match=r"train_micro_batch_size_per_gpu \(2\) disagrees with plan.json \(4\)"):
        load_run_config(run_dir, 1)
    tp_dir = make_run_dir(tmp_path / "tp", tp=2, prepared_data=False,
                          ds_overrides={"tensor_parallel": {"autotp_size": 4}})
    with pytest.raises(RunConfigError, match=r"autotp_size \(4\) disagrees with plan.json \(2\)"):
        load_run_config(tp_dir, 2)
    zero_dir = make_run_dir(tmp_path / "z", dp=2, micro=2, prepared_data=False,
                            ds_overrides={"zero_optimization": {"stage": 3}})
    with pytest.raises(RunConfigError, match=r"zero_optimization.stage \(3\) disagrees with plan.json \(0\)"):
        load_run_config(zero_dir, 2)


def test_world_size_model_and_files_are_checked(tmp_path):
    with pytest.raises(RunConfigError, match=r"launched with 1 processes but .* dp\*tp\*pp = 2\*1\*1 = 2"):
        load_run_config(make_run_dir(tmp_path / "a", dp=2, micro=2, prepared_data=False), 1)
    with pytest.raises(ValueError, match="builds GPT-2 only"):
        load_run_config(make_run_dir(tmp_path / "b", model=dict(TINY_MODEL, arch="llama"), prepared_data=False), 1)
    with pytest.raises(RunConfigError, match="plan.json: missing"):
        load_run_config(tmp_path / "nothing", 1)
    cfg = load_run_config(make_run_dir(tmp_path / "c", tp=2, prepared_data=False), 2)
    assert cfg.engine_config()["tensor_parallel"]["partition_config"]["layer_specs"]
    cfg3d = load_run_config(make_run_dir(tmp_path / "d", tp=2, pp=2, micro=1, accum=2, prepared_data=False), 4)
    assert "tensor_parallel" not in cfg3d.engine_config()   # 3D: Megatron layers, not AutoTP
    assert cfg3d.layout == Layout(dp=1, tp=2, pp=2, micro_batch=1, grad_accum=2) and cfg3d.method == "pipeline"


def test_invalid_layout_is_refused_with_the_planners_reason(tmp_path):
    """plan.json's layout goes through the planner's Layout: its rules (and messages) apply to the program."""
    run_dir = make_run_dir(tmp_path / "zero2-pp2", pp=2, zero=2, micro=1, accum=2, prepared_data=False)
    with pytest.raises(RunConfigError, match=r"plan.json: best.layout is not a valid layout: zero_stage\(2\) "
                                             r"with pp\(2\): .* use --zero 1 or --pp 1; re-plan"):
        load_run_config(run_dir, 2)
    plan = json.loads((run_dir / "plan.json").read_text())
    del plan["best"]["layout"]["dp"]
    (run_dir / "plan.json").write_text(json.dumps(plan))
    with pytest.raises(RunConfigError, match=r"best.layout is not a valid layout: .*'dp'"):
        load_run_config(run_dir, 2)


# ---- the program end to end (one process each) ---------------------------------------------------

def test_bad_input_exits_2_with_one_clear_message(tmp_path):
    bad = make_run_dir(tmp_path / "bad", micro=4, prepared_data=False, ds_overrides={"gradient_accumulation_steps": 2})
    _fails_cleanly(train_single(bad, "--steps", "1"), "gradient_accumulation_steps (2) disagrees with plan.json (1)")
    llama = make_run_dir(tmp_path / "llama", model=dict(TINY_MODEL, arch="llama"), prepared_data=False)
    _fails_cleanly(train_single(llama, "--steps", "1"), "builds GPT-2 only")
    ok = make_run_dir(tmp_path / "ok", prepared_data=False)
    _fails_cleanly(train_single(ok, "--steps", "1", "--data", str(tmp_path / "missing.txt")), "no such file")
    (tmp_path / "empty.txt").write_text("")
    _fails_cleanly(train_single(ok, "--steps", "1", "--data", str(tmp_path / "empty.txt")), "empty")
    _fails_cleanly(train_single(ok, "--steps", "1", "--resume"), "no complete checkpoint")
    assert not (ok / "checkpoints").exists()


def test_tokenizer_larger_than_model_vocab(tmp_path):
    small = dict(TINY_MODEL, vocab=300)
    donor = make_run_dir(tmp_path / "donor")   # its data/tokenizer/tokenizer.json has 512 entries
    run_dir = make_run_dir(tmp_path / "run", model=small, prepared_data=False)
    _fails_cleanly(train_single(run_dir, "--steps", "1", "--tokenizer", str(donor / "data" / "tokenizer")),
                   "tokenizer vocabulary (512) is larger than the model's vocab (300)")


def test_checkpoints_metrics_and_refusals(tmp_path):
    run_dir = make_run_dir(tmp_path / "run", micro=4)
    result = train_single(run_dir, "--steps", "2", "--checkpoint-every", "1")
    assert result.returncode == 0, result.stderr[-3000:]
    ckpts = run_dir / "checkpoints"
    assert (ckpts / "latest").read_text() == "step_2"
    assert {"step_1", "step_2"} <= {p.name for p in ckpts.iterdir()}
    meta = json.loads((ckpts / "step_2" / "shardplan.json").read_text())
    assert meta["layout"]["micro_batch"] == 4 and meta["model"]["n_layers"] == 2 and meta["step"] == 2

    lines = [json.loads(l) for l in (run_dir / "metrics.jsonl").read_text().splitlines()]
    steps = [l for l in lines if "step" in l]
    assert [l["step"] for l in steps] == [1, 2]
    first = steps[0]
    for key in ("loss", "lr", "tokens_per_s", "mfu", "flops_formula", "peak_allocated_bytes",
                "peak_allocated_bytes_per_rank", "world_size", "time"):
        assert key in first
    assert first["mfu"] is None and "PaLM" in first["flops_formula"] and first["peak_allocated_bytes"] > 10**7
    assert lines[-1]["event"] == "summary" and lines[-1]["steps"] == 2

    # Fresh start into a run dir with checkpoints: refused, nothing touched.
    before = {p: p.stat().st_mtime_ns for p in ckpts.rglob("*")}
    _fails_cleanly(train_single(run_dir, "--steps", "2"), "--resume", "--overwrite-checkpoints")
    # Resume with another layout (micro 2 x accum 2): refused before loading or saving anything.
    make_run_dir(run_dir, micro=2, accum=2)
    _fails_cleanly(train_single(run_dir, "--steps", "4", "--resume"),
                   "layout.micro_batch: checkpoint 4 vs this run 2", "layout.grad_accum: checkpoint 1 vs this run 2")
    assert {p: p.stat().st_mtime_ns for p in ckpts.rglob("*")} == before

    # A crash in the middle of saving step 4 (after logging steps 3 and 4) leaves a partial tag and the
    # pointer on step 2: resume from there, and cut the crashed run's steps 3-4 from metrics.jsonl.
    make_run_dir(run_dir, micro=4)
    (ckpts / "step_4").mkdir()
    (ckpts / "step_4" / "mp_rank_00_model_states.pt").write_bytes(b"truncated")
    with open(run_dir / "metrics.jsonl", "a") as f:
        f.write(json.dumps({"step": 3, "loss": 99.0}) + "\n" + json.dumps({"step": 4, "loss": 98.0}) + "\n")
    result = train_single(run_dir, "--steps", "4", "--resume")
    assert result.returncode == 0, result.stderr[-3000:]
    assert summary(run_dir)["resumed_from"] == 2 and (ckpts / "latest").read_text() == "step_4"
    straight = make_run_dir(tmp_path / "straight", micro=4)
    assert train_single(straight, "--steps", "4").returncode == 0
    assert losses(run_dir) == losses(straight)      # steps 1-4, each once
    rows = [json.loads(l) for l in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r.get("step", r.get("event")) for r in rows] == [1, 2, "summary", "resume", 3, 4, "summary"]
    assert rows[3] == {**rows[3], "from_step": 2, "checkpoint": "step_2",
                       "discarded_steps": [{"step": 3, "loss": 99.0}, {"step": 4, "loss": 98.0}]}


def test_init_from_hugging_face_weights(tmp_path):
    """--init-from: the first step's loss is the transformers model's loss on the same batch."""
    transformers = pytest.importorskip("transformers")
    import numpy as np
    import torch
    from shardplan.launch.train.data import Sampler, open_tokens
    from shardplan.launch.train.model import GPT, GPTConfig, load_hf_state_dict

    hf_dir = tmp_path / "hf"
    config = transformers.GPT2Config(n_layer=2, n_embd=64, n_head=4, vocab_size=512, n_positions=64)
    torch.manual_seed(3)
    transformers.GPT2LMHeadModel(config).save_pretrained(hf_dir)
    run_dir = make_run_dir(tmp_path / "run", micro=4)
    result = train_single(run_dir, "--steps", "1", "--init-from", str(hf_dir))
    assert result.returncode == 0, result.stderr[-3000:]
    tokens = open_tokens(next((run_dir / "data").glob("tokens-*.bin")))
    x, y = Sampler(n_tokens=len(tokens), seq_len=32, micro_batch=4, grad_accum=1, dp=1, seed=0).batch(tokens, 0, 0, 0)
    model = GPT(GPTConfig(n_layers=2, hidden=64, n_heads=4, ffn_hidden=256, vocab=512, max_seq_len=64))
    model.load_state_dict(load_hf_state_dict(hf_dir))
    with torch.no_grad():
        expected = model(x, y).item()
    assert losses(run_dir)[0] == pytest.approx(expected, rel=1e-6)
    assert np.isfinite(expected)

    wrong = make_run_dir(tmp_path / "wrong", model=dict(TINY_MODEL, n_layers=4), prepared_data=False)
    _fails_cleanly(train_single(wrong, "--steps", "1", "--init-from", str(hf_dir)),
                   "n_layers: plan 4 vs checkpoint 2")


def test_run_dir_checks_import_no_torch():
    """render and launch import the checks and the tensor-parallel names without paying for torch."""
    import subprocess
    import sys
    code = ("import sys, shardplan.launch.train.config, shardplan.launch.train.checkpoint, "
            "shardplan.launch.train.spec; assert 'torch' not in sys.modules and 'numpy' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)
