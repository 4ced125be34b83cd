"""Shared by the launch tests: run the real `shardplan` CLI, render small CPU run directories, find and
kill a rank's process, and read metrics.jsonl back."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from shardplan.launch.run.preflight import free_port  # noqa: F401  (tests import it from here)

CLI = [sys.executable, "-c", "import sys; from shardplan.cli import main; sys.exit(main())"]
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
    """The killed run and its resumption form one timeline: every step 1..total exactly once (none lost,
    none repeated), a resume event right after the checkpoint's step, and the steps the killed run had
    computed past the checkpoint (cut from the file, their losses kept in the event) recomputed with the
    same loss."""
    rows = metrics(run_dir)
    summary = rows[-1]
    assert summary.get("event") == "summary", summary
    resumed_from = summary["resumed_from"]
    assert resumed_from >= 2, f"no checkpoint before the kill: resumed_from={resumed_from}"
    steps = [r["step"] for r in rows if "step" in r]
    assert steps == list(range(1, total_steps + 1)), steps
    resumes = [i for i, r in enumerate(rows) if r.get("event") == "resume"]
    assert len(resumes) == 1, [rows[i] for i in resumes]
    at = resumes[0]
    event = rows[at]
    assert event["from_step"] == resumed_from, event
    around = rows[at - 1:at + 2]
    assert around[0].get("step") == resumed_from and around[2].get("step") == resumed_from + 1, around
    discarded = event["discarded_steps"]
    killed_after = resumed_from + len(discarded)
    assert [d["step"] for d in discarded] == list(range(resumed_from + 1, killed_after + 1)), event
    loss = {r["step"]: r["loss"] for r in rows if "step" in r}
    for first in discarded:   # recomputed from the checkpoint: the identical curve
        assert abs(first["loss"] - loss[first["step"]]) <= 1e-4 * abs(first["loss"]), (first, loss[first["step"]])
    return {"resumed_from": resumed_from, "killed_after": killed_after, "summary": summary}


def no_training_left(run_dir: Path) -> bool:
    return not rank_pids(run_dir, 0) and not rank_pids(run_dir, 1)
