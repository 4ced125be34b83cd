"""`shardplan launch --scheduler slurm` against a real SLURM controller: two fake nodes on 127.0.0.1.

A rendered 2-node CPU GPT-2 job (gloo, one process per node: world size 2) is submitted with the run's own
job.sbatch; node names (node1, node2) do not resolve, so the rendezvous is 127.0.0.1 (--master-addr,
which job.sbatch reads as SHARDPLAN_MASTER_ADDR). The test cluster has no slurmdbd: state comes from
`scontrol show job`.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import time

import pytest

from launch_helpers import (check_resumed_curve, kill_rank_at_step, metrics, no_training_left,
                            render, shardplan, start_shardplan)

pytestmark = [pytest.mark.slurm, pytest.mark.multiproc]


@pytest.fixture
def two_node_run(tmp_path):
    # Rendered per test: job.sbatch holds the run directory's absolute path.
    return render(tmp_path / "run", "2x1xCPU", steps=8)


def _scontrol(job_id: str, env: dict) -> dict:
    out = subprocess.run(["scontrol", "show", "job", "-o", job_id], capture_output=True, text=True,
                         env={**os.environ, **env}, timeout=30)
    return dict(re.findall(r"(\w+)=(\S*)", out.stdout))


def test_two_node_job_completes(slurm_cluster, two_node_run, tmp_path):
    run = two_node_run
    out = shardplan("launch", run, "--scheduler", "slurm", "--follow", "--master-addr", "127.0.0.1",
                    env=slurm_cluster, timeout=300)
    print(out.stdout, out.stderr)
    assert out.returncode == 0, out.stdout + out.stderr
    job = json.loads((run / "job.json").read_text())
    assert re.search(rf"submitted SLURM job {job['job_id']}\b", out.stdout)

    status = shardplan("status", run, "--json", env=slurm_cluster)
    info = json.loads(status.stdout)
    print(shardplan("status", run, env=slurm_cluster).stdout)
    assert info["state"] == "COMPLETED" and info["source"] == "scontrol" and info["exit_code"] == "0:0"
    assert info["nodes"] == "node[1-2]"

    steps = [r for r in metrics(run) if "step" in r]
    assert [r["step"] for r in steps] == list(range(1, 9))
    assert steps[-1]["loss"] < steps[0]["loss"], "the loss did not fall"
    assert all(r["world_size"] == 2 for r in steps)
    # Both nodes took part: SLURM's per-node output and torchrun's per-node rank logs.
    for node in (0, 1):
        node_out = run / "logs" / f"slurm-{job['job_id']}-node{node}.out"
        assert node_out.is_file() and node_out.stat().st_size > 0, node_out
        assert list((run / "logs" / f"node{node}").rglob("stdout.log")), f"no rank log from node{node}"
    batch = (run / "logs" / f"slurm-{job['job_id']}.out").read_text()
    assert "node[1-2]" in batch and "127.0.0.1" in batch
    logs = shardplan("logs", run, "--rank", "1", env=slurm_cluster)
    assert logs.returncode == 0 and logs.stdout.strip()


def test_killed_rank_fails_fast_then_resume_finishes(slurm_cluster, two_node_run, tmp_path):
    run = two_node_run
    proc = start_shardplan("launch", run, "--scheduler", "slurm", "--follow", "--master-addr", "127.0.0.1",
                           "--steps", "30", "--", "--checkpoint-every", "2", env=slurm_cluster)
    killed_at, seen = kill_rank_at_step(run, rank=1, step=3, proc=proc)
    output, _ = proc.communicate(timeout=120)
    follow_exit = time.monotonic() - killed_at
    print(output, f"\nkilled rank 1 at step {seen}; `launch --follow` returned {follow_exit:.1f}s later")
    assert proc.returncode != 0
    assert re.search(r"FAILED.*rank 1 failed.*killed by SIGKILL.*log: \S*node1\S*", output), output
    job = json.loads((run / "job.json").read_text())
    state = _scontrol(job["job_id"], slurm_cluster)
    assert state["JobState"] == "FAILED", state
    assert follow_exit < 60, f"the job took {follow_exit:.0f}s to end after a rank died (fail fast)"
    status = json.loads(shardplan("status", run, "--json", env=slurm_cluster).stdout)
    assert status["state"] == "FAILED" and status["failed_rank"] == 1
    assert no_training_left(run)

    out = shardplan("launch", run, "--scheduler", "slurm", "--follow", "--master-addr", "127.0.0.1", "--resume",
                    env=slurm_cluster, timeout=300)
    print(out.stdout, out.stderr)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "--steps 30 --checkpoint-every 2" in out.stderr  # the last launch's arguments carried over
    facts = check_resumed_curve(run, total_steps=30)
    print(f"resumed from step {facts['resumed_from']} (killed after step {facts['killed_after']})")
    assert json.loads(shardplan("status", run, "--json", env=slurm_cluster).stdout)["state"] == "COMPLETED"


def test_cancel_and_preflight_against_the_partition(slurm_cluster, two_node_run, tmp_path):
    run = two_node_run
    out = shardplan("launch", run, "--scheduler", "slurm", "--master-addr", "127.0.0.1", "--steps", "500",
                    env=slurm_cluster)
    assert out.returncode == 0 and "submitted SLURM job" in out.stdout, out.stdout + out.stderr
    deadline = time.monotonic() + 60
    while json.loads(shardplan("status", run, "--json", env=slurm_cluster).stdout)["state"] != "RUNNING":
        assert time.monotonic() < deadline, "the job never started"
        time.sleep(0.5)
    cancelled = shardplan("cancel", run, env=slurm_cluster)
    assert cancelled.returncode == 0 and "scancel" in cancelled.stdout
    deadline = time.monotonic() + 60
    while (state := json.loads(shardplan("status", run, "--json", env=slurm_cluster).stdout)["state"]) != "CANCELLED":
        assert time.monotonic() < deadline, f"still {state} after scancel"
        time.sleep(0.5)

    # A plan for 4 nodes cannot run on this 2-node partition: preflight says so (exit 2), nothing submitted.
    four = render(tmp_path / "four", "4x1xCPU", steps=2)
    out = shardplan("launch", four, "--scheduler", "slurm", env=slurm_cluster)
    assert out.returncode == 2 and not (four / "job.json").exists()
    assert "nodes(4)" in out.stderr and "node1=" in out.stderr, out.stderr


def test_unresolvable_rendezvous_host_fails_fast_naming_the_fix(slurm_cluster, two_node_run):
    """The test cluster's node names (node1, node2) do not resolve: without SHARDPLAN_MASTER_ADDR the job
    must end at once with the host and the variable named, not sit in torchrun's rendezvous for minutes."""
    run = two_node_run
    started = time.monotonic()
    out = shardplan("launch", run, "--scheduler", "slurm", "--follow", env=slurm_cluster, timeout=180)
    took = time.monotonic() - started
    print(out.stdout, out.stderr)
    assert out.returncode != 0 and "FAILED" in out.stdout, out.stdout + out.stderr
    job = json.loads((run / "job.json").read_text())
    batch = (run / "logs" / f"slurm-{job['job_id']}.out").read_text()
    assert "rendezvous host node1 does not resolve" in batch and "SHARDPLAN_MASTER_ADDR" in batch, batch
    assert took < 60, f"{took:.0f} s to report an unresolvable rendezvous host"
    assert not (run / "metrics.jsonl").exists()
