"""The training program trains a local Hugging Face decoder (a tiny Llama-shaped config made here: 2 layers,
GQA 4 query / 2 key-value heads, untied head) on the DeepSpeed engine: dp=2 ZeRO-2 and ZeRO-3 and AutoTP
tp=2 reach the same losses as one process (fp32, gloo, same tolerance as test_train_parallel.py), resume is
exact, pipeline parallelism is refused with its reason, and `launch --model ./tiny-llama` runs end to end."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from shardplan.launch import rundir
from shardplan.launch.render.hf import hf_model_record
from shardplan.planner import get_model
from train_helpers import losses, make_run_dir, summary, train, train_single

STEPS = 3
RTOL = 1e-5


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory) -> Path:
    from transformers import LlamaConfig

    path = tmp_path_factory.mktemp("models") / "tiny-llama"
    LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=2, vocab_size=512, max_position_embeddings=64,
                tie_word_embeddings=False).save_pretrained(path)
    return path


def hf_run_dir(path: Path, model_dir: Path, **layout) -> Path:
    """A run directory as render writes it for --model <model_dir>: plan.json's model is the planner's reading
    of config.json, "hf_model" says where it came from, model/config.json is a copy."""
    run_dir = make_run_dir(path, **layout)
    plan = json.loads((run_dir / rundir.PLAN).read_text())
    plan["best"]["model"] = get_model(str(model_dir)).to_dict()
    plan["hf_model"] = hf_model_record(str(model_dir))
    (run_dir / rundir.PLAN).write_text(json.dumps(plan, indent=1))
    (run_dir / "model").mkdir()
    shutil.copy(model_dir / "config.json", run_dir / rundir.MODEL_CONFIG)
    if layout.get("tp", 1) > 1:
        ds = json.loads((run_dir / rundir.DS_CONFIG).read_text())
        ds["tensor_parallel"] = {"autotp_size": layout["tp"], "preset_model": "llama"}
        (run_dir / rundir.DS_CONFIG).write_text(json.dumps(ds, indent=1))
    return run_dir


def _ok(result):
    assert result.returncode == 0, result.stderr[-4000:]
    return result


@pytest.fixture(scope="module")
def reference(tiny_llama, tmp_path_factory):
    run_dir = hf_run_dir(tmp_path_factory.mktemp("single"), tiny_llama, micro=4)
    _ok(train_single(run_dir, "--steps", str(STEPS)))
    return losses(run_dir)


def test_single_process_trains_the_hf_model(reference, tiny_llama):
    assert len(reference) == STEPS and reference[-1] < reference[0]
    assert abs(reference[0] - __import__("math").log(512)) < 0.5   # random init: about ln(vocab) at step 1


LAYOUTS = {"dp2-zero2": dict(dp=2, micro=1, accum=2, zero=2), "dp2-zero3": dict(dp=2, micro=2, zero=3),
           "tp2": dict(tp=2, micro=4)}


@pytest.mark.multiproc
@pytest.mark.parametrize("name", LAYOUTS)
def test_layout_matches_single_process(name, reference, tiny_llama, tmp_path):
    run_dir = hf_run_dir(tmp_path, tiny_llama, **LAYOUTS[name])
    _ok(train(run_dir, 2, "--steps", str(STEPS)))
    got = losses(run_dir)
    worst = max(abs(a - b) / abs(b) for a, b in zip(got, reference))
    print(f"\nHF {name}: max relative loss difference {worst:.2e} over {STEPS} steps")
    assert len(got) == STEPS and worst <= RTOL, (got, reference)
    ranks = summary(run_dir)["ranks"]
    assert len(ranks) == 2 and all(r["blocks"] == 2 for r in ranks)
    planned = get_model(str(tiny_llama)).params
    if name == "dp2-zero3":   # ZeRO-3 holds half of every parameter on each rank
        assert all(r["params_held"] * 2 <= planned + 64 * 2 for r in ranks)
    if name == "tp2":         # AutoTP shards the projections: each rank holds less than the whole model
        assert sorted(r["tp_rank"] for r in ranks) == [0, 1]
        assert all(r["params_held"] < planned for r in ranks)


def test_resume_is_exact(tiny_llama, tmp_path):
    straight = hf_run_dir(tmp_path / "straight", tiny_llama, micro=2, accum=2)
    _ok(train_single(straight, "--steps", "4"))
    resumed = hf_run_dir(tmp_path / "resumed", tiny_llama, micro=2, accum=2)
    _ok(train_single(resumed, "--steps", "2"))
    _ok(train_single(resumed, "--steps", "4", "--resume"))
    assert summary(resumed)["resumed_from"] == 2
    assert losses(resumed) == losses(straight)   # bit for bit: weights, optimizer, LR schedule and data order


def test_sequence_parallel_is_refused_before_any_process_starts(tiny_llama, tmp_path):
    from shardplan.launch.train.config import RunConfigError, load_run_config
    run_dir = hf_run_dir(tmp_path, tiny_llama, tp=2, micro=2, sp=True, prepared_data=False)
    with pytest.raises(RunConfigError, match=r"sequence_parallel with a Hugging Face model \(llama\).*--no-sp"):
        load_run_config(run_dir, 2)


def test_pipeline_and_shape_mismatch_are_refused(tiny_llama, tmp_path):
    run_dir = hf_run_dir(tmp_path / "pp", tiny_llama, pp=2, micro=2)
    result = train_single(run_dir, "--steps", "1")
    assert result.returncode == 2 and "pipeline parallelism" in result.stderr and "--pp 1" in result.stderr
    run_dir = hf_run_dir(tmp_path / "shape", tiny_llama, micro=2)
    plan = json.loads((run_dir / rundir.PLAN).read_text())
    plan["best"]["model"]["n_layers"] = 3    # planned with --layers 3: not what config.json builds
    (run_dir / rundir.PLAN).write_text(json.dumps(plan))
    result = train_single(run_dir, "--steps", "1")
    assert result.returncode == 2 and "without shape overrides" in result.stderr, result.stderr[-2000:]


@pytest.mark.multiproc
@pytest.mark.slow
def test_launch_model_directory_end_to_end(tiny_llama, tmp_path):
    shutil.copytree(tiny_llama, tmp_path / "tiny-llama")
    env = dict(os.environ, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1")
    cmd = [str(Path(sys.executable).parent / "shardplan"), "launch", "--model", "./tiny-llama", "--cluster", "auto",
           "--out", "run", "--steps", "3"]
    result = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    run_dir = tmp_path / "run"
    plan = json.loads((run_dir / rundir.PLAN).read_text())
    assert plan["hf_model"]["source"] == str((tmp_path / "tiny-llama").resolve())
    assert (run_dir / rundir.HF_DS_CONFIG).is_file() and (run_dir / rundir.MODEL_CONFIG).is_file()
    assert len(losses(run_dir)) == 3 and summary(run_dir)["steps"] == 3
