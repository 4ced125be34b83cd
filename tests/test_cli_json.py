"""Every command with --json prints exactly one JSON document on stdout (logs and notices go to stderr), so
`shardplan ... --json | jq` works. Run as real processes: DeepSpeed's import-time log line is what broke it."""
import json
import os
import subprocess
import sys
import time

import pytest

from shardplan.launch.run import jobs
from shardplan.launch.run.preflight import free_port

CLI = [sys.executable, "-c", "import sys; from shardplan.cli import main; sys.exit(main())"]


def shardplan(*args, cwd=None) -> subprocess.CompletedProcess:
    # As a user runs it: without DS_ACCELERATOR (conftest sets it), DeepSpeed logs its accelerator choice at import.
    env = {k: v for k, v in os.environ.items() if k != "DS_ACCELERATOR"}
    return subprocess.run(CLI + [str(a) for a in args], capture_output=True, text=True, timeout=300, cwd=cwd, env=env)


def one_document(out: subprocess.CompletedProcess):
    assert out.stdout.strip(), f"nothing on stdout; stderr: {out.stderr}"
    return json.loads(out.stdout)  # raises on a log line before or after the document


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    run = tmp_path_factory.mktemp("json") / "run"
    out = shardplan("render", "--model", "gpt2-demo", "--cluster", "2xCPU", "--steps", "2", "--out", run, "--json")
    assert out.returncode == 0, out.stderr
    assert one_document(out)["run_dir"] == str(run)
    return run


@pytest.mark.parametrize("command", [
    ("plan", "--model", "gpt2", "--cluster", "1xH200"),
    ("estimate", "--model", "gpt2", "--cluster", "1xH200", "--zero", "2", "--micro-batch", "4"),
    ("compare", "--model", "gpt2", "--cluster", "2xH200", "--global-batch", "64"),
])
def test_planner_commands(command):
    out = shardplan(*command, "--json")
    assert out.returncode == 0, out.stderr
    assert isinstance(one_document(out), (dict, list))


def test_validate_launch_dry_run_and_status(run_dir):
    validated = shardplan("validate", run_dir, "--json")  # DeepSpeed's own parser runs: it logs at import
    assert validated.returncode == 0, validated.stderr
    assert one_document(validated)[0]["deepspeed_checked"] is True

    dry = shardplan("launch", run_dir, "--dry-run", "--json", "--master-port", free_port())
    assert dry.returncode == 0, dry.stderr
    assert "argv" in json.dumps(one_document(dry))

    jobs.write_job(run_dir, jobs.JobRecord("local", ("true",), started=time.time() - 5, pid=None,
                                           finished=time.time(), exit_code=0, state=jobs.COMPLETED))
    status = shardplan("status", run_dir, "--json")
    assert status.returncode == 0, status.stderr
    assert one_document(status)["state"] == "COMPLETED"


def test_estimate_batch_prints_one_document_per_line():
    lines = [json.dumps({"model": "gpt2", "cluster": "1xH200", "layout": {"zero": z}}) for z in (0, 3)]
    env = {k: v for k, v in os.environ.items() if k != "DS_ACCELERATOR"}
    out = subprocess.run(CLI + ["estimate", "--batch", "-"], input="\n".join(lines), capture_output=True,
                         text=True, timeout=120, env=env)
    assert out.returncode == 0, out.stderr
    assert [json.loads(line)["layout"]["zero_stage"] for line in out.stdout.splitlines()] == [0, 3]
