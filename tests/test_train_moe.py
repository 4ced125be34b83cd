"""The mixture-of-experts program (launch/train/moe.py): DeepSpeed's MoE layer, experts split over ep ranks.

gpt2-tiny-moe (4 experts, top-2, block 1 MoE) in fp32 on CPU with gloo, global batch 4 × 32 tokens. The
router's aux loss is a per-micro-batch statistic, so every layout here trains on micro-batches of the same 2
sequences: one process with micro 2 × accum 2, dp 2 (ep 1) and dp 2 × ep 2 with micro 2. Same seed, same
data: the losses agree to 1e-5 relative (measured: identical to the bit over 3 steps).
"""
import json
import re

import pytest

from shardplan.launch.train.config import RunConfigError, load_run_config

from shardplan.planner.model import FLOPS_FORMULA
from shardplan.planner.presets import PRESETS
from train_helpers import losses, make_run_dir, summary, train

pytestmark = pytest.mark.multiproc

MOE = PRESETS["gpt2-tiny-moe"]
MODEL = MOE.to_dict()
STEPS = 3
RTOL = 1e-5
EXPERT_PARAMS = 4 * (64 * 256 + 256 + 256 * 64 + 64)   # one MoE layer's 4 experts (c_fc, c_proj with biases)
SGD_CLIPPED = {"optimizer": {"type": "SGD", "params": {"lr": 0.5}}, "gradient_clipping": 0.05}


def _train_ok(run_dir, nproc, *args):
    result = train(run_dir, nproc, *args)
    assert result.returncode == 0, result.stderr[-4000:]
    return result


def _assert_same(got, expected, name):
    assert len(got) == len(expected) == STEPS
    worst = max(abs(a - b) / abs(b) for a, b in zip(got, expected))
    print(f"\nmoe equivalence {name}: max relative loss difference {worst:.2e} over {STEPS} steps")
    for step, (a, b) in enumerate(zip(got, expected), start=1):
        assert abs(a - b) <= RTOL * abs(b), f"step {step}: {a} vs {b}"
    assert expected[-1] < expected[0]


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    run_dir = make_run_dir(tmp_path_factory.mktemp("moe-single"), micro=2, accum=2, model=MODEL)
    _train_ok(run_dir, 1, "--steps", str(STEPS))
    return run_dir


def test_ep2_dp2_matches_one_process_and_each_rank_holds_half_the_experts(single, tmp_path):
    run_dir = make_run_dir(tmp_path, dp=2, micro=2, ep=2, model=MODEL)
    _train_ok(run_dir, 2, "--steps", str(STEPS))
    _assert_same(losses(run_dir), losses(single), "ep2-dp2 vs one process")
    ranks = summary(run_dir)["ranks"]
    assert sorted(r["ep_rank"] for r in ranks) == [0, 1]
    for r in ranks:
        assert r["experts_held"] == [2] and r["expert_params_held"] == EXPERT_PARAMS // 2
        assert r["params_held"] == MOE.params - EXPERT_PARAMS // 2
        assert r["blocks"] == 2
    one = summary(single)["ranks"][0]
    assert one["experts_held"] == [4] and one["params_held"] == MOE.params


def test_metrics_report_flops_on_active_parameters(single):
    rows = [json.loads(line) for line in (single / "metrics.jsonl").read_text().splitlines()]
    step = rows[0]
    assert step["flops_formula"] == FLOPS_FORMULA and "active parameters" in step["flops_formula"]
    assert step["flops_per_token"] == MOE.flops_per_token(32) == 6 * MOE.active_params + 12 * 2 * 64 * 32
    assert MOE.active_params < MOE.params


@pytest.mark.slow   # ~20 s
def test_ep1_dp2_matches_one_process(single, tmp_path):
    run_dir = make_run_dir(tmp_path, dp=2, micro=2, model=MODEL)
    _train_ok(run_dir, 2, "--steps", str(STEPS))
    _assert_same(losses(run_dir), losses(single), "ep1-dp2 vs one process")
    assert all(r["experts_held"] == [4] for r in summary(run_dir)["ranks"])


@pytest.mark.slow   # ~40 s
def test_gradient_clipping_counts_every_expert_once(tmp_path):
    """SGD with the clip always active: DeepSpeed's fp32 path averages per-rank norms over dp, which with ep > 1
    is not the norm of the whole gradient; moe.fp32_clip_with_experts makes ep 2 clip like ep 1."""
    ep1 = make_run_dir(tmp_path / "ep1", micro=2, accum=2, model=MODEL, ds_overrides=SGD_CLIPPED)
    ep2 = make_run_dir(tmp_path / "ep2", dp=2, micro=2, ep=2, model=MODEL, ds_overrides=SGD_CLIPPED)
    _train_ok(ep1, 1, "--steps", str(STEPS))
    _train_ok(ep2, 2, "--steps", str(STEPS))
    _assert_same(losses(ep2), losses(ep1), "ep2 sgd-clipped")


@pytest.mark.slow   # ~45 s: three runs
@pytest.mark.parametrize("zero", [0, 1])
def test_resume_with_expert_shards_is_exact(zero, tmp_path):
    straight = make_run_dir(tmp_path / "a", dp=2, micro=2, ep=2, zero=zero, model=MODEL)
    split = make_run_dir(tmp_path / "b", dp=2, micro=2, ep=2, zero=zero, model=MODEL)
    _train_ok(straight, 2, "--steps", "4")
    _train_ok(split, 2, "--steps", "2")
    assert list((split / "checkpoints" / "step_2").glob("*expert*")), "no expert shards saved"
    _train_ok(split, 2, "--steps", "4", "--resume")
    assert losses(split) == losses(straight)


@pytest.mark.parametrize("layout, message", [
    (dict(dp=2, micro=2, ep=2, zero=3), "zero_stage (3): DeepSpeed-MoE does not run with ZeRO-3; plan --zero 2"),
    (dict(dp=2, micro=2, ep=4), "ep (4) must divide dp (2)"),
    (dict(tp=2, micro=2, ep=1), "tp (2) / pp (1): the program's MoE GPT-2 runs data and expert parallel only"),
])
def test_moe_layouts_the_program_cannot_run_are_refused(layout, message, tmp_path):
    run_dir = make_run_dir(tmp_path, model=MODEL, prepared_data=False, **layout)
    with pytest.raises(RunConfigError, match=re.escape(message)):
        load_run_config(run_dir, 2)


def test_ep_without_experts_is_refused(tmp_path):
    with pytest.raises(RunConfigError, match=re.escape("ep (2) > 1 but gpt2-tiny has no experts")):
        load_run_config(make_run_dir(tmp_path, dp=2, micro=2, ep=2, prepared_data=False), 2)


@pytest.mark.slow   # ~35 s: render, then the deepspeed launcher with 2 ranks
def test_render_and_launch_gpt2_tiny_moe_end_to_end(tmp_path):
    from launch_helpers import shardplan
    from shardplan.launch.run.preflight import free_port
    out = tmp_path / "moe"
    shardplan("render", "--model", "gpt2-tiny-moe", "--cluster", "2xCPU", "--dp", "2", "--ep", "2",
              "--out", out, check=True, timeout=180)
    plan = json.loads((out / "plan.json").read_text())["best"]
    assert plan["layout"]["ep"] == 2 and plan["model"]["experts"] == 4
    shardplan("launch", out, "--steps", "2", "--master-port", free_port(), check=True, timeout=300)
    ranks = summary(out)["ranks"]
    assert sorted(r["ep_rank"] for r in ranks) == [0, 1] and all(r["experts_held"] == [2] for r in ranks)
    assert len(losses(out)) == 2
