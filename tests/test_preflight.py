"""Preflight: every reason a launch must not start is one clear line on stderr and exit code 2, with
nothing started and nothing written (no job.json). Real run directories from `shardplan render`, real
sockets and name resolution; no process is launched."""
from __future__ import annotations

import json
import shutil
import socket
from pathlib import Path

import pytest

from launch_helpers import copy_run, free_port, render, shardplan
from shardplan.launch.run import ranks
from shardplan.launch.run.preflight import merge_args, read_hostfile


@pytest.fixture(scope="module")
def rendered(tmp_path_factory):
    return render(tmp_path_factory.mktemp("rendered") / "gpt2-2proc", "2xCPU", steps=4)


def _refused(out, *fragments: str) -> str:
    err = out.stderr.strip()
    assert out.returncode == 2, f"exit {out.returncode}\n{out.stdout}\n{err}"
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    for fragment in fragments:
        assert fragment in err, err
    return err


def test_missing_run_dir_and_files(tmp_path, rendered):
    _refused(shardplan("launch", tmp_path / "nope", "--dry-run"), "does not exist", "shardplan render")
    run = copy_run(rendered, tmp_path / "run")
    (run / "ds_config.json").unlink()
    _refused(shardplan("launch", run, "--master-port", free_port()), "ds_config.json is missing", "--force")
    assert not (run / "job.json").exists()


def test_invalid_ds_config_names_the_key(tmp_path, rendered):
    run = copy_run(rendered, tmp_path / "run")
    cfg = json.loads((run / "ds_config.json").read_text())
    cfg["train_batch_size"] = cfg["train_batch_size"] + 1  # no longer micro · accum · dp
    (run / "ds_config.json").write_text(json.dumps(cfg))
    _refused(shardplan("launch", run, "--master-port", free_port()), "does not validate", "train_batch_size",
             "shardplan validate")
    assert not (run / "job.json").exists()
    assert not (run / "logs").exists() or not any((run / "logs").iterdir())


def test_more_processes_than_cores_is_a_warning(tmp_path):
    """CPU processes beyond the cores only share them (slower, not wrong): launch warns and goes on."""
    run = render(tmp_path / "big", "64xCPU", steps=2, global_batch=64)
    dry = shardplan("launch", run, "--dry-run", "--master-port", free_port())
    assert dry.returncode == 0 and "--num_gpus 64" in dry.stdout, dry.stderr
    assert "warning: the plan runs 64 CPU processes per node on" in dry.stderr and "core" in dry.stderr
    assert "preflight would refuse" not in dry.stderr


def test_busy_master_port(tmp_path, rendered):
    run = copy_run(rendered, tmp_path / "run")
    with socket.socket() as held:
        held.bind(("", 0))
        held.listen()
        port = held.getsockname()[1]
        _refused(shardplan("launch", run, "--master-port", port), f"master port {port} is in use", "--master-port")


def test_hostfile_host_that_does_not_resolve(tmp_path):
    run = render(tmp_path / "multi", "2x1xCPU", "--hosts", "localhost,no-such-host.invalid", steps=2)
    assert read_hostfile(run / "hostfile") == [("localhost", 1), ("no-such-host.invalid", 1)]
    port = free_port()
    _refused(shardplan("launch", run, "--scheduler", "deepspeed", "--master-port", port), "no-such-host.invalid",
             "does not resolve")
    _refused(shardplan("launch", run, "--master-port", port), "--scheduler local runs on this node only")
    good = render(tmp_path / "good", "2x1xCPU", "--hosts", "localhost,127.0.0.1", steps=2)
    if shutil.which("pdsh") is None:
        _refused(shardplan("launch", good, "--scheduler", "deepspeed", "--master-port", port), "pdsh", "--node-rank")


def test_resume_without_checkpoints(tmp_path, rendered):
    run = copy_run(rendered, tmp_path / "run")
    _refused(shardplan("launch", run, "--resume", "--master-port", free_port()), "nothing to resume")


def test_slurm_without_a_controller(tmp_path, rendered):
    # A SLURM_CONF that points nowhere (or no SLURM client tools at all): refused before any sbatch.
    out = shardplan("launch", rendered, "--scheduler", "slurm", env={"SLURM_CONF": str(tmp_path / "none.conf")})
    _refused(out)
    assert "none.conf does not exist" in out.stderr or "sbatch is not on PATH" in out.stderr, out.stderr


def test_moved_run_dir_refuses_its_absolute_sbatch(tmp_path, rendered):
    run = copy_run(rendered, tmp_path / "moved")
    _refused(shardplan("launch", run, "--scheduler", "slurm"), "job.sbatch was rendered for", "re-render")


def test_status_logs_cancel_before_any_launch(rendered):
    for command in ("status", "cancel"):
        out = shardplan(command, rendered)
        assert out.returncode == 1, out.stderr
        assert ("never launched" if command == "status" else "nothing to cancel") in out.stderr, out.stderr
    assert shardplan("logs", rendered).returncode == 1


def test_merge_args_caller_wins():
    assert merge_args(("--steps", "8", "--data", "x"), ("--steps", "3")) == ("--data", "x", "--steps", "3")
    assert merge_args(("--steps", "8"), ("--resume",)) == ("--steps", "8", "--resume")


REPORT = """\
torch.distributed.elastic.multiprocessing.errors.ChildFailedError:
======================================================
shardplan.launch.train FAILED
------------------------------------------------------
Failures:
  <NO_OTHER_FAILURES>
------------------------------------------------------
Root Cause (first observed failure):
[0]:
  time      : 2026-11-28_06:48:03
  host      : localhost
  rank      : 1 (local_rank: 0)
  exitcode  : -9 (pid: 17727)  (SIGKILL)
  error_file: <N/A>
  traceback : Signal 9 (SIGKILL) received by PID 17727
======================================================
"""


def test_torchrun_report_names_the_killed_rank(tmp_path):
    # The report as torch 2.13's torchrun printed it on the SLURM test cluster (rank 1 SIGKILLed).
    (found,) = ranks.torchrun_failures(REPORT, "node1.out")
    assert (found.rank, found.exitcode, found.signal, found.root_cause) == (1, -9, "SIGKILL", True)
    assert found.log == "node1.out"  # no error file for a signal: the output the report was found in
    failure = ranks.diagnose(Path(tmp_path), 0.0, exit_code=1, reports=[("node1.out", REPORT)])
    assert failure.rank == 1 and "killed by SIGKILL" in failure.reason and failure.log == "node1.out"


def test_resume_is_suggested_only_when_a_checkpoint_exists(tmp_path):
    """A launch that fails before any checkpoint (e.g. the program refuses the model) must not say --resume."""
    from shardplan.launch.run.jobs import FAILED, JobRecord
    from shardplan.launch.run.launcher import report_outcome

    job = JobRecord("local", ("deepspeed",), started=1.0, finished=2.0, exit_code=2, state=FAILED,
                    reason="rank 0 exited with code 2")
    said: list[str] = []
    report_outcome(job, said.append, tmp_path)
    assert said and not any("--resume" in line for line in said), said
    (tmp_path / "checkpoints" / "step2").mkdir(parents=True)
    said.clear()
    report_outcome(job, said.append, tmp_path)
    assert f"continue from the last checkpoint: shardplan launch {tmp_path} --resume" in said


def test_follow_says_what_a_quiet_job_waits_for(tmp_path):
    """`launch --follow` on a running job with no step yet names the rendezvous it is joining, or says the
    batch script has not reached torchrun."""
    from shardplan.launch.run.launcher import waiting_for

    (tmp_path / "logs").mkdir()
    assert "has not reached torchrun yet" in waiting_for(tmp_path, "42")
    (tmp_path / "logs" / "slurm-42.out").write_text(
        "shardplan: job 42 on node[1-2], rendezvous node1:20042\n")
    said = waiting_for(tmp_path, "42")
    assert "rendezvous at node1:20042" in said and "SHARDPLAN_MASTER_ADDR" in said and "cancel" in said
