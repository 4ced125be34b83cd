"""Shared by the launch tests: run the real `shardplan` CLI, render small CPU run directories, find and
kill a rank's process, and read metrics.jsonl back."""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

CLI = [sys.executable, "-c", "import sys; from shardplan.launch.cli import main; sys.exit(main())"]
TRAIN_MODULE = b"shardplan.launch.train"


def shardplan(*args, env: dict | None = None, timeout: float = 300, check: bool = False) -> subprocess.CompletedProcess:
    """Run `shardplan ARGS` in a fresh process (the real console entry point's code)."""
    out = subprocess.run(CLI + [str(a) for a in args], capture_output=True, text=True, timeout=timeout,
                         env={**os.environ, **(env or {})})
    if check and out.returncode != 0:
        command = " ".join(map(str, args))
        raise AssertionError(f"shardplan {command} exited {out.returncode}:\n{out.stdout}\n{out.stderr}")
    return out


def start_shardplan(*args, env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen(CLI + [str(a) for a in args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env={**os.environ, **(env or {})})


def render(out: Path, cluster: str, *extra: str, steps: int = 8, global_batch: int = 4) -> Path:
    """A tiny fp32 GPT-2 on CPU processes, data parallel (gloo), small batch: seconds per run."""
    shardplan("render", "--model", "gpt2-tiny", "--cluster", cluster, "--precision", "fp32",
              "--global-batch", str(global_batch), "--tp", "1", "--pp", "1", "--zero", "0", "--steps", str(steps),
              "--out", out, "--force", *extra, check=True, timeout=180)
    return out


def copy_run(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def metrics(run_dir: Path) -> list[dict]:
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except ValueError:  # a line being written
            pass
    return rows


def last_step(run_dir: Path) -> int:
    return max([r["step"] for r in metrics(run_dir) if "step" in r] or [0])


def rank_pids(run_dir: Path, rank: int) -> list[int]:
    """Training processes of this run directory whose environment says RANK=rank (any launcher)."""
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            cmd = Path(f"/proc/{name}/cmdline").read_bytes()
            env = Path(f"/proc/{name}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if TRAIN_MODULE in cmd and str(run_dir).encode() in cmd and f"RANK={rank}".encode() in env:
            found.append(int(name))
    return found


def kill_rank_at_step(run_dir: Path, rank: int, step: int, proc: subprocess.Popen | None = None,
                      timeout: float = 240) -> tuple[float, int]:
    """SIGKILL the rank's process once metrics.jsonl reaches `step`; returns (when, the step seen)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"the job ended before step {step}:\n{proc.stdout.read()}")
        seen = last_step(run_dir)
        if seen >= step:
            pids = rank_pids(run_dir, rank)
            if pids:
                for pid in pids:
                    os.kill(pid, signal.SIGKILL)
                return time.monotonic(), seen
        time.sleep(0.05)
    raise AssertionError(f"rank {rank} of {run_dir} never reached step {step} within {timeout}s")


def check_resumed_curve(run_dir: Path, total_steps: int) -> dict:
    """The killed run and its resumption form one run: no step lost, none repeated past the checkpoint,
    and the steps both computed (after the checkpoint, before the kill) have the same loss.

    metrics.jsonl holds the killed run's steps 1..k, then the resumed run's c+1..total (c = the checkpoint
    it resumed from, in its summary); steps c+1..k appear twice, from the two runs."""
    rows = metrics(run_dir)
    summary = rows[-1]
    assert summary.get("event") == "summary", summary
    resumed_from = summary["resumed_from"]
    steps = [r for r in rows if "step" in r]
    cut = len(steps) - (total_steps - resumed_from)
    first, second = steps[:cut], steps[cut:]
    assert resumed_from >= 2, f"no checkpoint before the kill: resumed_from={resumed_from}"
    assert [r["step"] for r in first] == list(range(1, len(first) + 1)) and len(first) >= resumed_from, first
    assert [r["step"] for r in second] == list(range(resumed_from + 1, total_steps + 1)), (resumed_from, second)
    loss1 = {r["step"]: r["loss"] for r in first}
    for row in second:
        if row["step"] in loss1:  # recomputed from the checkpoint: the identical curve
            assert abs(row["loss"] - loss1[row["step"]]) <= 1e-4 * abs(loss1[row["step"]]), (row, loss1)
    return {"resumed_from": resumed_from, "killed_after": len(first), "summary": summary}


def no_training_left(run_dir: Path) -> bool:
    return not rank_pids(run_dir, 0) and not rank_pids(run_dir, 1)
