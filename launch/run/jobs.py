"""The record of a launched job, kept in RUN_DIR/job.json, and the state `shardplan status` derives from it.

A local launch records the launcher's pid (it leads its own process group, so `cancel` can signal the
whole job) and, when it ends, its exit code and the failing rank. A SLURM launch records the job id;
its state comes from the scheduler (see slurm.py). Written atomically: a reader never sees half a file.
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from ..rundir import JOB_FILE

SCHEDULERS = ("local", "deepspeed", "torchrun", "slurm")

# States shared by local and SLURM jobs (SLURM's own names, so `status` reads the same for both).
RUNNING, COMPLETED, FAILED, CANCELLED, PENDING = "RUNNING", "COMPLETED", "FAILED", "CANCELLED", "PENDING"
FINAL_STATES = {COMPLETED, FAILED, CANCELLED, "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "PREEMPTED",
                "BOOT_FAIL", "DEADLINE"}


@dataclass(frozen=True)
class JobRecord:
    """One launch of a run directory."""

    scheduler: str                      # local | deepspeed | torchrun | slurm
    argv: tuple[str, ...]               # what was started (sbatch ... for slurm)
    env: dict[str, str] = field(default_factory=dict)  # set on top of the caller's environment
    started: float = 0.0                # time.time() at start
    host: str = ""                      # the machine that launched it (a pid means nothing elsewhere)
    pid: int | None = None              # local: the launcher's pid = its process group id
    job_id: str | None = None           # slurm: the job id sbatch printed
    resume: bool = False
    train_args: tuple[str, ...] = ()    # the training program's extra arguments (reused by --resume)
    node_rank: int | None = None        # set when each node was launched by hand (--node-rank)
    finished: float | None = None       # local: when the launcher ended
    exit_code: int | None = None        # local: the launcher's exit code (negative: killed by that signal)
    state: str | None = None            # final state when known (COMPLETED, FAILED, CANCELLED)
    failed_rank: int | None = None      # the first rank that died, when one did
    failed_log: str | None = None       # that rank's log file
    reason: str | None = None           # one line: why it failed

    def __post_init__(self) -> None:
        if self.scheduler not in SCHEDULERS:
            raise ValueError(f"scheduler({self.scheduler!r}) must be one of {', '.join(SCHEDULERS)}")
        object.__setattr__(self, "argv", tuple(self.argv))
        object.__setattr__(self, "train_args", tuple(self.train_args))

    def finish(self, **changes) -> "JobRecord":
        return replace(self, **changes)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["argv"] = list(self.argv)
        d["train_args"] = list(self.train_args)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "JobRecord":
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in d.items() if k in known})


def job_path(run_dir: Path, node_rank: int | None = None) -> Path:
    """job.json; a node launched by hand with --node-rank N > 0 keeps its own job-node<N>.json beside it
    (the run directory is shared by the nodes; node 0's launcher carries the job's outcome)."""
    return Path(run_dir) / (f"job-node{node_rank}.json" if node_rank else JOB_FILE)


def write_job(run_dir: Path, job: JobRecord) -> None:
    path = job_path(run_dir, job.node_rank)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(job.to_dict(), indent=2) + "\n")
    os.replace(tmp, path)


def read_job(run_dir: Path, node_rank: int | None = None) -> JobRecord | None:
    path = job_path(run_dir, node_rank)
    if not path.is_file():
        return None
    try:
        return JobRecord.from_dict(json.loads(path.read_text()))
    except (ValueError, TypeError) as e:
        raise ValueError(f"{path} is not a job record ({e}); delete it and launch again") from e


def process_alive(pid: int) -> bool:
    """True while pid names a live process (a zombie counts as ended)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # Linux: a zombie has ended, only its parent has not reaped it yet
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def local_state(job: JobRecord) -> str:
    """RUNNING while the launcher lives; otherwise what it recorded when it ended."""
    if job.state:
        return job.state
    if job.pid is not None and job.host == os.uname().nodename and process_alive(job.pid):
        return RUNNING
    if job.host and job.host != os.uname().nodename:
        return f"UNKNOWN (launched on {job.host}; run status there)"
    return "UNKNOWN (the launcher ended without recording an outcome)"


def elapsed(job: JobRecord) -> float:
    return (job.finished or time.time()) - job.started
