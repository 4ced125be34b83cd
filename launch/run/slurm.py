"""SLURM: submit the run's job.sbatch, read the job's state, follow it, cancel it.

State comes from `scontrol show job` while slurmctld remembers the job (MinJobAge, 300 s by default) and
from `sacct` after that — sacct needs accounting (slurmdbd); a cluster without it (like the test cluster)
answers "Slurm accounting storage is disabled", and then the state is UNKNOWN once slurmctld forgot it.
"""
from __future__ import annotations

import re
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from ..commands import Command, sbatch_command
from .jobs import FINAL_STATES

_TIMEOUT = 30  # seconds for one SLURM client call: a dead slurmctld must not hang `status`


class SlurmError(RuntimeError):
    """A SLURM client call failed; the message says which and what it printed."""


@dataclass(frozen=True)
class SlurmState:
    job_id: str
    state: str                 # PENDING RUNNING COMPLETED FAILED CANCELLED TIMEOUT NODE_FAIL ... or UNKNOWN
    exit_code: str = ""        # "0:0" = exit code:signal of the batch script
    reason: str = ""           # why pending / why it failed
    nodes: str = ""            # the node list it ran on
    source: str = ""           # scontrol | sacct | none: where the state came from

    @property
    def final(self) -> bool:
        return self.state in FINAL_STATES

    def to_dict(self) -> dict:
        return {"job_id": self.job_id, "state": self.state, "exit_code": self.exit_code,
                "reason": self.reason, "nodes": self.nodes, "source": self.source}


def _run(argv: list[str]) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=_TIMEOUT)
    except FileNotFoundError:
        raise SlurmError(f"{argv[0]} is not on PATH: install the SLURM client tools (Debian: slurm-client)") from None
    except subprocess.TimeoutExpired:
        raise SlurmError(f"`{' '.join(argv)}` did not answer in {_TIMEOUT} s: "
                         "is slurmctld up? (`scontrol ping`)") from None


def submit_command(run_dir: str, *, partition: str | None = None, extra_sbatch: tuple[str, ...] = (),
                   train_args: tuple[str, ...] = ()) -> Command:
    """sbatch --parsable [options] RUN_DIR/job.sbatch [training program arguments]."""
    base = sbatch_command(run_dir)
    opts = (("--partition", partition) if partition else ()) + tuple(extra_sbatch)
    return Command(base.argv[:-1] + opts + base.argv[-1:] + tuple(train_args), dict(base.env))


def submit(cmd: Command, env: dict[str, str]) -> str:
    """Run sbatch; return the job id it printed (--parsable: "<id>" or "<id>;<cluster>")."""
    out = subprocess.run(cmd.argv, capture_output=True, text=True, timeout=_TIMEOUT, env=env)
    if out.returncode != 0:
        said = (out.stderr or out.stdout).strip().splitlines()
        raise SlurmError(f"sbatch failed: {said[-1] if said else f'exit code {out.returncode}'}")
    job_id = out.stdout.strip().split(";")[0]
    if not job_id.isdigit():
        raise SlurmError(f"sbatch printed {out.stdout.strip()!r}, not a job id")
    return job_id


def _fields(text: str) -> dict[str, str]:
    # scontrol -o prints Key=Value pairs separated by spaces; values of interest contain none.
    return dict(m.groups() for m in re.finditer(r"(\w+)=(\S*)", text))


def query(job_id: str) -> SlurmState:
    """The job's state: scontrol while slurmctld knows the job, then sacct (needs accounting)."""
    out = _run(["scontrol", "show", "job", "-o", job_id])
    if out.returncode == 0 and out.stdout.strip():
        f = _fields(out.stdout.splitlines()[0])
        reason = f.get("Reason", "")
        return SlurmState(job_id, f.get("JobState", "UNKNOWN"), f.get("ExitCode", ""),
                          "" if reason == "None" else reason, f.get("NodeList", ""), "scontrol")
    acct = _run(["sacct", "-j", job_id, "-X", "-n", "-P", "-o", "State,ExitCode,NodeList"])
    if acct.returncode == 0 and acct.stdout.strip():
        state, code, nodes = (acct.stdout.splitlines()[0].split("|") + ["", "", ""])[:3]
        return SlurmState(job_id, state.split()[0], code, "", nodes, "sacct")
    why = (acct.stderr or out.stderr).strip().splitlines()
    return SlurmState(job_id, "UNKNOWN", reason=(why[0] if why else "slurmctld no longer knows the job"),
                      source="none")


def cancel(job_id: str) -> None:
    out = _run(["scancel", job_id])
    if out.returncode != 0:
        raise SlurmError(f"scancel {job_id} failed: {(out.stderr or out.stdout).strip()}")


def wait(job_id: str, *, poll: float = 1.0, on_poll=None, timeout: float | None = None) -> SlurmState:
    """Poll until the job reaches a final state; on_poll(state) runs after each poll (progress)."""
    start = time.monotonic()
    while True:
        state = query(job_id)
        if on_poll is not None:
            on_poll(state)
        if state.final or state.state == "UNKNOWN":
            return state
        if timeout is not None and time.monotonic() - start > timeout:
            return state
        time.sleep(poll)


def node_outputs(log_dir: Path, job_id: str) -> list[Path]:
    """The per-node output files job.sbatch's srun writes for this job (logs/slurm-<job>-node<n>.out)."""
    return sorted(p for p in log_dir.glob(f"*{job_id}*") if p.is_file())
