"""`shardplan logs`: the files a job wrote under RUN_DIR/logs/, shown or followed.

Without --rank: the launcher's own output (local) or SLURM's per-node output, which carries every rank's
lines (torchrun --tee prefixes them with the local rank). With --rank N: that rank's own log.
"""
from __future__ import annotations

import time
from pathlib import Path

from . import jobs, ranks, slurm
from ..rundir import LOG_DIR
from .jobs import JobRecord
from .preflight import load_run_dir


def main_logs(run_dir: Path, job: JobRecord | None) -> list[Path]:
    log_dir = run_dir / LOG_DIR
    if job is not None and job.scheduler == "slurm" and job.job_id:
        found = slurm.node_outputs(log_dir, job.job_id)
        if found:
            return found
    launchers = sorted(log_dir.glob("launcher-*.log"), key=lambda p: p.stat().st_mtime)
    if launchers:
        return launchers[-1:]
    return sorted(p for p in log_dir.rglob("*") if p.is_file()) if log_dir.is_dir() else []


def rank_log(run_dir: Path, job: JobRecord | None, rank: int) -> Path:
    since = job.started - 1 if job is not None else 0.0
    try:
        per_node = load_run_dir(run_dir).procs_per_node
    except ValueError:
        per_node = 1
    log_dir = run_dir / LOG_DIR
    found = ranks.rank_logs(log_dir, since, per_node) or ranks.rank_logs(log_dir, 0.0, per_node)
    if rank not in found:
        have = ", ".join(str(r) for r in sorted(found)) or "none"
        raise FileNotFoundError(f"no log for rank {rank} under {log_dir} (ranks with logs: {have})")
    return found[rank]


def job_running(run_dir: Path) -> bool:
    job = jobs.read_job(run_dir)
    if job is None:
        return False
    if job.scheduler == "slurm":
        return not slurm.query(job.job_id).final and slurm.query(job.job_id).state != "UNKNOWN"
    return jobs.local_state(job) == jobs.RUNNING


def show(paths: list[Path], echo, lines: int = 40) -> None:
    for path in paths:
        if len(paths) > 1:
            echo(f"==> {path} <==")
        for line in ranks.tail(path, lines):
            echo(line)


def follow(paths_of, echo, still_running, poll: float = 0.5) -> None:
    """Print new lines as they are written (new files too) until still_running() is false."""
    offsets: dict[Path, int] = {}
    for path in paths_of():
        offsets[path] = path.stat().st_size if path.exists() else 0
    show(list(offsets), echo, lines=20)
    last: Path | None = None
    running = True
    while True:
        for path in paths_of():
            start = offsets.setdefault(path, 0)
            try:
                with path.open("rb") as f:
                    f.seek(start)
                    chunk = f.read()
            except OSError:
                continue
            text = chunk[: chunk.rfind(b"\n") + 1]
            if not text:
                continue
            offsets[path] = start + len(text)
            if path != last and len(offsets) > 1:
                echo(f"==> {path} <==")
                last = path
            for line in text.decode(errors="replace").splitlines():
                echo(line)
        if not running:
            return
        running = still_running()  # one more pass after the job ends picks up its last lines
        time.sleep(poll if running else 0)
