"""`shardplan launch` on this node: the deepspeed launcher and torchrun, real processes on CPU (gloo).

Each scheduler: a rank is SIGKILLed mid-training (found by its RANK in /proc, as an OOM killer or a
failing node would do it), the job ends at once, `launch` exits non-zero naming rank 1 and its log, and
`launch --resume` finishes from the last checkpoint with no step lost or repeated. Plus cancel, dry-run
and the one-shot plan + render + launch.
"""
from __future__ import annotations

import json
import re
import time

import pytest

from launch_helpers import (check_resumed_curve, copy_run, free_port, kill_rank_at_step, metrics, no_training_left,
                            render, shardplan, start_shardplan)

pytestmark = pytest.mark.multiproc


@pytest.fixture(scope="module")
def rendered(tmp_path_factory):
    """One node, two CPU processes (dp=2). Local launches rebuild their command from plan.json's "launch"
    with the directory they find themselves in, so copies of it run where they are."""
    return render(tmp_path_factory.mktemp("rendered") / "gpt2-2proc", "2xCPU", steps=8)


def test_dry_run_prints_the_command_and_changes_nothing(rendered, tmp_path):
    run = copy_run(rendered, tmp_path / "run")
    before = sorted(p.name for p in run.rglob("*"))
    port = free_port()
    out = shardplan("launch", run, "--dry-run", "--master-port", port, "--steps", "3")
    assert out.returncode == 0, out.stderr
    assert "export DS_ACCELERATOR=cpu" in out.stdout and "gloo" in out.stdout
    assert re.search(rf"deepspeed\.launcher\.runner --num_gpus 2 --master_addr 127\.0\.0\.1 --master_port {port} "
                     rf".*--module shardplan\.launch\.train --run-dir {re.escape(str(run))} --steps 3$",
                     out.stdout, re.M)
    info = json.loads(shardplan("launch", run, "--dry-run", "--json", "--scheduler", "torchrun",
                                "--master-port", port).stdout)
    assert info["argv"][2:4] == ["-m", "torch.distributed.run"] and "--max-restarts" in info["argv"]
    assert info["env"]["DS_ACCELERATOR"] == "cpu" and info["world_size"] == 2
    assert sorted(p.name for p in run.rglob("*")) == before  # nothing written


@pytest.mark.parametrize("scheduler", ["local", "torchrun"])
def test_killed_rank_ends_the_job_and_resume_finishes_it(rendered, tmp_path, scheduler):
    run = copy_run(rendered, tmp_path / "run")
    port = free_port()
    proc = start_shardplan("launch", run, "--scheduler", scheduler, "--master-port", port, "--steps", "30",
                           "--", "--checkpoint-every", "2")
    killed_at, seen = kill_rank_at_step(run, rank=1, step=3, proc=proc)
    output, _ = proc.communicate(timeout=120)
    took = time.monotonic() - killed_at
    print(output, f"\n{scheduler}: killed rank 1 at step {seen}; launch returned {took:.1f}s later")
    assert proc.returncode != 0
    assert re.search(r"FAILED after .*rank 1 failed \(.*killed by SIGKILL\); log: (\S+)", output), output
    log = re.search(r"; log: (\S+)", output).group(1)
    assert ("_rank1.log" in log) if scheduler == "local" else log.endswith("/attempt_0/1/stdout.log"), log
    assert took < 60, f"{took:.0f}s from a dead rank to the end of the job: not failing fast"
    assert no_training_left(run), "ranks outlived the launcher"
    status = json.loads(shardplan("status", run, "--json").stdout)
    assert status["state"] == "FAILED" and status["failed_rank"] == 1 and status["failed_log"] == log
    assert shardplan("logs", run, "--rank", "1").returncode == 0

    out = shardplan("launch", run, "--scheduler", scheduler, "--master-port", port, "--resume", timeout=300)
    print(out.stdout, out.stderr)
    assert out.returncode == 0, out.stdout + out.stderr
    facts = check_resumed_curve(run, total_steps=30)
    print(f"resumed from step {facts['resumed_from']} (killed after step {facts['killed_after']})")
    steps = [r for r in metrics(run) if "step" in r]
    assert steps[-1]["loss"] < steps[0]["loss"] and steps[-1]["world_size"] == 2
    assert json.loads(shardplan("status", run, "--json").stdout)["state"] == "COMPLETED"


def test_cancel_stops_the_whole_process_group(rendered, tmp_path):
    run = copy_run(rendered, tmp_path / "run")
    proc = start_shardplan("launch", run, "--master-port", free_port(), "--steps", "500")
    deadline = time.monotonic() + 240
    while not metrics(run):
        assert proc.poll() is None and time.monotonic() < deadline, "the job never trained a step"
        time.sleep(0.2)
    assert json.loads(shardplan("status", run, "--json").stdout)["state"] == "RUNNING"
    second = shardplan("launch", run, "--master-port", free_port())  # would write the same checkpoints
    assert second.returncode == 2 and "already has a RUNNING job" in second.stderr, second.stderr
    out = shardplan("cancel", run)
    assert out.returncode == 0 and "cancelled" in out.stdout, out.stdout + out.stderr
    output, _ = proc.communicate(timeout=60)
    assert proc.returncode != 0 and "CANCELLED" in output, output
    assert no_training_left(run)
    assert json.loads(shardplan("status", run, "--json").stdout)["state"] == "CANCELLED"


def test_one_shot_plans_renders_and_trains(tmp_path):
    out_dir = tmp_path / "demo"
    out = shardplan("launch", "--model", "gpt2-tiny", "--cluster", "auto", "--out", out_dir, "--force",
                    "--steps", "3", "--master-port", free_port(), timeout=300)
    print(out.stdout, out.stderr)
    assert out.returncode == 0, out.stdout + out.stderr
    assert (out_dir / "plan.json").is_file() and (out_dir / "ds_config.json").is_file()
    assert [r["step"] for r in metrics(out_dir) if "step" in r] == [1, 2, 3]
    assert f"metrics: {out_dir.resolve() / 'metrics.jsonl'}" in out.stdout


def test_two_nodes_launched_by_hand_with_no_ssh(tmp_path):
    """Plain hosts without pdsh: `--scheduler deepspeed --node-rank N` on each node (deepspeed --no_ssh).
    Both "nodes" are this machine under two names; the run directory is shared, as on a cluster's NFS."""
    run = render(tmp_path / "run", "2x1xCPU", "--hosts", "localhost,127.0.0.1", steps=4)
    port = free_port()
    other = start_shardplan("launch", run, "--scheduler", "deepspeed", "--node-rank", "1", "--master-port", port)
    first = shardplan("launch", run, "--scheduler", "deepspeed", "--node-rank", "0", "--master-port", port)
    rest, _ = other.communicate(timeout=120)
    print(first.stdout, first.stderr, rest)
    assert first.returncode == 0 and other.returncode == 0, first.stdout + first.stderr + rest
    assert [r["world_size"] for r in metrics(run) if "step" in r] == [2, 2, 2, 2]
    assert json.loads((run / "job-node1.json").read_text())["state"] == "COMPLETED"
    assert json.loads(shardplan("status", run, "--json").stdout)["state"] == "COMPLETED"
    assert sorted(p.name.split("_", 1)[1] for p in (run / "logs").glob("*_rank*.log")) == ["rank0.log", "rank1.log"]
