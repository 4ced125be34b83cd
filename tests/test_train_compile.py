"""The training program's speed options on CPU: torch.compile (inductor, built with gcc here) and torch's fused
AdamW through DeepSpeed, with the fallback where torch has no fused kernel; what render turns on per layout,
the GPU launch environment, and what the planner's time model makes of compile."""
import json
import re

import pytest

from shardplan.launch.train.config import load_run_config
from shardplan.launch.train.speed import fused_adamw_config, fused_devices
from shardplan.planner import get_model
from shardplan.planner.cluster import Cluster, gpu_from_name
from shardplan.planner.estimate import Training
from shardplan.planner.layout import Layout, compile_refusal
from shardplan.planner.timing import estimate_time
from launch_helpers import shardplan
from train_helpers import losses, make_run_dir, summary, train, train_single

FUSED = {"type": "AdamW", "params": {"lr": 3e-3, "betas": [0.9, 0.95], "eps": 1e-8, "weight_decay": 0.1,
                                     "torch_adam": True, "fused": True}}


# ---- fused AdamW: kept where torch has the kernel, foreach elsewhere ---------------------------------

def test_fused_adamw_falls_back_where_the_device_has_no_fused_kernel():
    cfg = {"optimizer": FUSED}
    kept, which = fused_adamw_config(cfg, "cpu", fused_devices())
    assert "cpu" in fused_devices() and kept["optimizer"]["params"]["fused"] is True and which == "torch AdamW (fused)"
    fallback, which = fused_adamw_config(cfg, "cpu", ("cuda",))
    assert "fused" not in fallback["optimizer"]["params"] and "foreach: no fused kernel for cpu" in which
    assert cfg["optimizer"]["params"]["fused"] is True            # the run's own config is left alone
    with pytest.raises(ValueError, match='"fused": true needs "torch_adam": true'):
        fused_adamw_config({"optimizer": {"type": "AdamW", "params": {"fused": True}}}, "cpu", ("cpu",))


def test_compile_refuses_zero3_only():
    assert "zero_stage(3) cannot be compiled" in compile_refusal(Layout(dp=2, zero_stage=3))
    assert "--no-compile" in compile_refusal(Layout(dp=2, zero_stage=3))
    for layout in (Layout(dp=2, zero_stage=2), Layout(dp=1, tp=2, pp=2, zero_stage=1), Layout(dp=1, pp=2),
                   Layout(dp=1, checkpointing="full")):
        assert compile_refusal(layout) is None


def test_program_refuses_compile_for_zero3_with_one_line(tmp_path):
    run_dir = make_run_dir(tmp_path, zero=3, prepared_data=False)
    out = train_single(run_dir, "--steps", "1", "--compile")
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert "error: --compile: zero_stage(3) cannot be compiled" in out.stderr


# ---- real runs: compiled + fused equals eager --------------------------------------------------------

def test_compiled_fused_run_matches_eager_one_process(tmp_path):
    eager = make_run_dir(tmp_path / "eager", zero=2)
    fast = make_run_dir(tmp_path / "fast", zero=2, ds_overrides={"optimizer": FUSED})
    for run_dir, args in ((eager, ()), (fast, ("--compile",))):
        out = train_single(run_dir, "--steps", "3", *args, timeout=300)
        assert out.returncode == 0, out.stderr[-3000:]
    assert losses(fast) == pytest.approx(losses(eager), rel=1e-4)
    s = summary(fast)
    assert s["compile"] is True and s["ranks"][0]["optimizer"] == "torch AdamW (fused)"
    assert summary(eager)["compile"] is False and summary(eager)["ranks"][0]["optimizer"] == "torch AdamW (foreach)"


def test_plan_json_turns_compile_on_and_no_compile_turns_it_off(tmp_path):
    run_dir = make_run_dir(tmp_path)
    plan = json.loads((run_dir / "plan.json").read_text())
    plan["best"]["training"]["compile"] = True
    (run_dir / "plan.json").write_text(json.dumps(plan))
    assert load_run_config(run_dir, 1).compile is True
    out = train_single(run_dir, "--steps", "1", "--no-compile")
    assert out.returncode == 0, out.stderr[-3000:]
    assert summary(run_dir)["compile"] is False


@pytest.mark.multiproc
def test_compiled_pipeline_two_processes_matches_eager(tmp_path):
    """pp=2: the pipeline engine compiles every stage layer (PipelineModule.compile); gloo, 2 processes."""
    eager = make_run_dir(tmp_path / "eager", pp=2, micro=2, accum=2)
    fast = make_run_dir(tmp_path / "fast", pp=2, micro=2, accum=2, ds_overrides={"optimizer": FUSED})
    for run_dir, args in ((eager, ()), (fast, ("--compile",))):
        out = train(run_dir, 2, "--steps", "3", *args, timeout=400)
        assert out.returncode == 0, out.stderr[-3000:]
    assert losses(fast) == pytest.approx(losses(eager), rel=1e-4)
    assert summary(fast)["compile"] is True
    assert {r["optimizer"] for r in summary(fast)["ranks"]} == {"torch AdamW (fused)"}


@pytest.mark.slow
@pytest.mark.multiproc
@pytest.mark.parametrize("layout", [dict(tp=2), dict(tp=2, pp=2, micro=1, accum=2), dict(dp=2, zero=1, micro=2)],
                         ids=["autotp", "3d", "zero1-dp2"])
def test_compiled_layouts_match_eager(tmp_path, layout):
    nproc = layout.get("dp", 1) * layout.get("tp", 1) * layout.get("pp", 1)
    eager, fast = make_run_dir(tmp_path / "eager", **layout), make_run_dir(tmp_path / "fast", **layout)
    for run_dir, args in ((eager, ()), (fast, ("--compile",))):
        out = train(run_dir, nproc, "--steps", "3", *args, timeout=600)
        assert out.returncode == 0, out.stderr[-3000:]
    assert losses(fast) == pytest.approx(losses(eager), rel=1e-4)


# ---- render: per layout, and the GPU environment -----------------------------------------------------

def _render(out, cluster, *flags):
    res = shardplan("render", "--model", "gpt2", "--cluster", cluster, "--out", str(out), *flags)
    assert res.returncode == 0, res.stderr
    return json.loads((out / "plan.json").read_text()), json.loads((out / "ds_config.json").read_text())


def test_render_turns_speed_options_on_per_layout_and_sets_the_gpu_environment(tmp_path):
    plan, ds = _render(tmp_path / "z2", "1xH100-80GB", "--zero", "2")
    assert plan["best"]["training"]["compile"] is True and plan["best"]["training"]["fused_step"] is True
    assert ds["optimizer"]["params"]["fused"] is True and ds["bf16"] == {"enabled": True, "check_grad_overflow": False}
    plan3, ds3 = _render(tmp_path / "z3", "1xH100-80GB", "--zero", "3")
    assert plan3["best"]["training"]["compile"] is False and ds3["optimizer"]["params"]["fused"] is True
    # the prediction is for what runs: compiled ZeRO-2 is faster than the same layout eager
    assert plan["best"]["step_time_s"] < _eager_step(plan["best"])
    dry = shardplan("launch", str(tmp_path / "z2"), "--dry-run")
    assert "export TORCH_NCCL_ASYNC_ERROR_HANDLING=1" in dry.stdout
    assert "export OMP_NUM_THREADS=8" in dry.stdout and "CUDA_DEVICE_MAX_CONNECTIONS" not in dry.stdout
    cpu_plan, cpu_ds = _render(tmp_path / "cpu", "2xCPU", "--model", "gpt2-tiny", "--precision", "fp32")
    assert cpu_plan["best"]["training"]["compile"] is False and "fused" not in cpu_ds["optimizer"]["params"]
    script = (tmp_path / "cpu" / "launch.sh").read_text()
    assert "export DS_ACCELERATOR=cpu" in script and "export OMP_NUM_THREADS=1" in script
    assert "NCCL" not in script


def test_3d_gpu_scripts_ask_for_one_cuda_queue(tmp_path):
    _render(tmp_path / "3d", "8xH100-80GB", "--tp", "2", "--pp", "2", "--zero", "1")
    for script in ("launch.sh", "launch_torchrun.sh", "job.sbatch"):
        assert re.search(r"^export CUDA_DEVICE_MAX_CONNECTIONS=1$|CUDA_DEVICE_MAX_CONNECTIONS=1",
                         (tmp_path / "3d" / script).read_text(), re.M), script


def _eager_step(best):
    from shardplan.planner.model import ModelSpec
    model, cluster = ModelSpec.from_dict(best["model"]), Cluster.from_dict(best["cluster"])
    layout, t = Layout.from_dict(best["layout"]), best["training"]
    return estimate_time(model, cluster, layout, Training(seq_len=t["seq_len"], precision=t["precision"])).step_s


# ---- the time model: what compile changes ------------------------------------------------------------

# ../shared/calibration/h200_gpt2_compile_reference.jsonl: plain PyTorch + torch.compile + fused AdamW, one H200,
# micro-batch 16, seq 1024, vocab 50304 (step_s medians). Eager predictions were +11% and +52% off.
COMPILE_REFERENCE = {(48, 1600, 25): 0.33228, (12, 768, 12): 0.03363}


@pytest.mark.parametrize("shape", sorted(COMPILE_REFERENCE))
def test_compile_time_model_against_the_h200_reference(shape):
    L, h, a = shape
    model = get_model("gpt2").__class__(name="ref", arch="gpt2", n_layers=L, hidden=h, n_heads=a, n_kv_heads=a,
                                        ffn_hidden=4 * h, vocab=50304, max_seq_len=1024, tied_embeddings=True)
    cluster = Cluster(nodes=1, gpus_per_node=1, gpu=gpu_from_name("NVIDIA H200"))
    layout = Layout(dp=1, micro_batch=16)
    eager = estimate_time(model, cluster, layout, Training(seq_len=1024, engine="torch", zero_buckets="deepspeed"))
    compiled = estimate_time(model, cluster, layout, Training(seq_len=1024, engine="torch", zero_buckets="deepspeed",
                                                              compile=True))
    measured = COMPILE_REFERENCE[shape]
    assert compiled.step_s < eager.step_s
    assert abs(compiled.step_s / measured - 1) <= 0.15
    assert abs(compiled.step_s / measured - 1) < abs(eager.step_s / measured - 1)
    assert compiled.compute_s < eager.compute_s and compiled.overhead_s < eager.overhead_s


def test_compile_changes_nothing_where_the_layout_refuses_it_and_fused_step_shortens_zero2():
    model, cluster = get_model("gpt2-xl"), Cluster(nodes=1, gpus_per_node=8, gpu=gpu_from_name("NVIDIA H200"))
    z3 = Layout(dp=8, zero_stage=3, micro_batch=8)
    plain, comp = (estimate_time(model, cluster, z3, Training(compile=c)) for c in (False, True))
    assert plain == comp
    z2 = Layout(dp=8, zero_stage=2, micro_batch=8)
    slow, fast = (estimate_time(model, cluster, z2, Training(fused_step=f)) for f in (False, True))
    assert fast.step_s < slow.step_s and fast.compute_s == slow.compute_s

