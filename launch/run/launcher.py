"""Execute a run directory's launch command: locally (deepspeed launcher or torchrun) or through SLURM.

The command itself comes from launch/commands.py (the same builders that rendered launch.sh and
job.sbatch); this module adds what happens around it: the job record (job.json), per-rank logs under
RUN_DIR/logs/, progress from metrics.jsonl, fail-fast diagnosis (which rank died first, and its log),
and cancellation. The exit code of a launch mirrors the job's: 0 when it completed, non-zero otherwise.
"""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from . import jobs, ranks, slurm
from .progress import Progress
from ..commands import SLURM_RENDEZVOUS_TIMEOUT_S, Command, command_for, deepspeed_command, torchrun_command
from ..rundir import CHECKPOINTS, LOG_DIR, METRICS, has_checkpoint
from ..runmetrics import read_metrics
from .jobs import CANCELLED, COMPLETED, FAILED, RUNNING, JobRecord
from .preflight import RunDir


class LaunchError(RuntimeError):
    """The job could not be started or followed (not a preflight problem); one line."""


def build_command(run: RunDir, scheduler: str, *, master_port: int | None, master_addr: str | None,
                  train_args: tuple[str, ...], partition: str | None = None, node_rank: int | None = None) -> Command:
    """The exact command `launch` runs (and `--dry-run` prints). node_rank: this node's part of a multi-node
    job started on every node (deepspeed --no_ssh, or torchrun), instead of pdsh from node 0."""
    if scheduler == "slurm":
        cmd = slurm.submit_command(str(run.path), partition=partition, train_args=train_args)
        # job.sbatch rendezvous at the job's first node on a port derived from the job id; these override.
        env = {**({"SHARDPLAN_MASTER_ADDR": master_addr} if master_addr else {}),
               **({"SHARDPLAN_MASTER_PORT": str(master_port)} if master_port else {})}
        return Command(cmd.argv, {**cmd.env, **env})
    spec = run.run_spec(master_addr=master_addr, master_port=master_port, python=sys.executable,
                        train_args=train_args)
    if node_rank is not None and scheduler == "deepspeed":
        return deepspeed_command(spec, node_rank=node_rank)
    if node_rank is not None and scheduler == "torchrun":
        return torchrun_command(spec, node_rank=node_rank)
    return command_for(spec, scheduler)


def describe(run: RunDir, scheduler: str, cmd: Command) -> dict:
    """What a dry run prints (and `--json` emits): the command, its environment, where logs go."""
    backend = "gloo (no GPU: DS_ACCELERATOR=cpu)" if run.cpu else "nccl"
    return {"scheduler": scheduler, "run_dir": str(run.path), "world_size": run.world_size,
            "nodes": run.nodes, "procs_per_node": run.procs_per_node, "backend": backend,
            "argv": list(cmd.argv), "env": dict(sorted(cmd.env.items())), "shell": cmd.shell(),
            "logs": str(run.path / LOG_DIR)}


def print_dry_run(info: dict, echo) -> None:
    echo(f"# dry run: nothing was started or written. {info['scheduler']}: world size {info['world_size']} "
         f"= {info['nodes']} node(s) x {info['procs_per_node']} process(es); backend {info['backend']}")
    if info["env"]:
        echo("# environment set on top of yours:")
        for key, value in info["env"].items():
            echo(f"export {Command(('true',), {key: value}).shell().split(' ', 1)[0]}")
    echo("# command:")
    echo(Command(tuple(info["argv"]), {}).shell())
    echo(f"# rank logs: {info['logs']}/  job record: {info['run_dir']}/job.json")


# ---------------------------------------------------------------- local: deepspeed launcher / torchrun

def run_local(run: RunDir, scheduler: str, cmd: Command, *, resume: bool, echo, verbose: bool = False,
              train_args: tuple[str, ...] = (), node_rank: int | None = None) -> int:
    """Start the launcher in its own process group, wait, diagnose; returns the shell exit code."""
    log_dir = run.path / LOG_DIR
    log_dir.mkdir(exist_ok=True)
    started = time.time()
    node = f"node{node_rank}-" if node_rank is not None else ""
    launcher_log = log_dir / f"launcher-{node}{time.strftime('%Y%m%d-%H%M%S')}.log"
    env = {**os.environ, **cmd.env}
    with launcher_log.open("w") as out:
        out.write(f"# {cmd.shell()}\n")
        out.flush()
        # Its own session: `cancel` and Ctrl-C signal the whole job (launcher and ranks) at once.
        proc = subprocess.Popen(cmd.argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                start_new_session=True, text=True, errors="replace")
        job = JobRecord(scheduler, cmd.argv, cmd.env, started, os.uname().nodename, pid=proc.pid, resume=resume,
                        train_args=train_args, node_rank=node_rank)
        jobs.write_job(run.path, job)
        echo(f"started {scheduler} launcher (pid {proc.pid}, world size {run.world_size}); "
             f"logs: {log_dir}/  (follow: shardplan logs {run.path} --follow)")
        watcher = ranks.RankWatcher(proc.pid)
        watcher.start()
        pump = threading.Thread(target=_pump, args=(proc.stdout, out, echo if verbose else None), daemon=True)
        pump.start()
        progress = Progress(run.path, echo)
        interrupted = _forward_signals(proc)
        try:
            while proc.poll() is None:
                progress.poll()
                time.sleep(0.2)
        finally:
            watcher.stop()
            pump.join(timeout=5)
            interrupted.restore()
        progress.poll(force=True)
    rc = proc.returncode
    recorded = jobs.read_job(run.path, node_rank)
    if rc == 0:
        job = job.finish(finished=time.time(), exit_code=0, state=COMPLETED)
    elif interrupted.signalled or (recorded is not None and recorded.state == CANCELLED):
        job = job.finish(finished=time.time(), exit_code=rc, state=CANCELLED, reason="cancelled")
    else:
        failure = ranks.diagnose(log_dir, started, exit_code=rc, watched=watcher.first_vanished(),
                                 statuses=watcher.status,
                                 reports=[(None, launcher_log.read_text(errors="replace"))],
                                 procs_per_node=run.procs_per_node)
        job = job.finish(finished=time.time(), exit_code=rc, state=FAILED, failed_rank=failure.rank,
                         failed_log=failure.log, reason=failure.reason)
    jobs.write_job(run.path, job)
    report_outcome(job, echo, run.path, launcher_log)
    return _shell_code(rc)


def _pump(stream, out, echo) -> None:
    for line in stream:
        out.write(line)
        out.flush()
        if echo is not None:
            echo(line.rstrip("\n"))


class _Forwarder:
    def __init__(self, proc: subprocess.Popen) -> None:
        self.proc, self.signalled, self.saved = proc, False, {}

    def __call__(self, signum, frame) -> None:
        self.signalled = True
        terminate_group(self.proc.pid)

    def restore(self) -> None:
        for sig, handler in self.saved.items():
            signal.signal(sig, handler)


def _forward_signals(proc: subprocess.Popen) -> _Forwarder:
    fwd = _Forwarder(proc)
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            fwd.saved[sig] = signal.signal(sig, fwd)
    return fwd


def terminate_group(pgid: int, grace: float = 10.0, *, wait: bool = False) -> None:
    """SIGTERM the job's process group (launchers pass it to the ranks), then SIGKILL what is left after grace
    seconds: in the background, or before returning when wait is set."""
    try:
        os.killpg(pgid, signal.SIGTERM)
    except ProcessLookupError:
        return
    if wait:
        _wait_group_gone(pgid, grace)
    else:
        threading.Thread(target=_wait_group_gone, args=(pgid, grace), daemon=True).start()


def _shell_code(rc: int) -> int:
    return 128 - rc if rc < 0 else rc


def report_outcome(job: JobRecord, echo, run_dir: Path, launcher_log: Path | None = None) -> None:
    took = f"{jobs.elapsed(job):.0f}s"
    if job.state == COMPLETED:
        echo(f"COMPLETED in {took}. metrics: {run_dir / METRICS}  checkpoints: {run_dir / CHECKPOINTS}")
        return
    where = (f"; log: {job.failed_log}" if job.failed_log
             else f"; launcher log: {launcher_log}" if launcher_log else "")
    echo(f"{job.state} after {took}: {job.reason or 'no reason recorded'}{where}")
    if job.state == FAILED and job.failed_log:
        for line in ranks.tail(Path(job.failed_log), 5):
            echo(f"  | {line}")
    if job.state == FAILED and has_checkpoint(run_dir):
        echo(f"continue from the last checkpoint: shardplan launch {run_dir} --resume")


# ---------------------------------------------------------------- SLURM

def run_slurm(run: RunDir, cmd: Command, *, resume: bool, follow: bool, echo,
              train_args: tuple[str, ...] = ()) -> int:
    started = time.time()
    (run.path / LOG_DIR).mkdir(exist_ok=True)
    job_id = slurm.submit(cmd, {**os.environ, **cmd.env})
    job = JobRecord("slurm", cmd.argv, cmd.env, started, os.uname().nodename, job_id=job_id, resume=resume,
                    train_args=train_args)
    jobs.write_job(run.path, job)
    echo(f"submitted SLURM job {job_id} ({run.nodes} node(s) x {run.procs_per_node}); recorded in "
         f"{jobs.job_path(run.path)}")
    if not follow:
        echo(f"follow it: shardplan status {run.path} | shardplan logs {run.path} --follow")
        return 0
    return follow_slurm(run.path, job, echo, run.procs_per_node)


# How long a running job may show no training step before --follow says what it is waiting for.
QUIET_S = 30.0


def follow_slurm(run_dir: Path, job: JobRecord, echo, procs_per_node: int = 1) -> int:
    progress = Progress(run_dir, echo)
    seen = {"state": None, "reason": None, "running_since": None, "told": False}

    def on_poll(state: slurm.SlurmState) -> None:
        progress.poll(force=state.final)
        if (state.state, state.reason) != (seen["state"], seen["reason"]):
            seen["state"], seen["reason"] = state.state, state.reason
            nodes = f" on {state.nodes}" if state.nodes and state.nodes != "(null)" else ""
            why = f" (waiting for: {state.reason})" if state.state == "PENDING" and state.reason else ""
            echo(f"job {state.job_id}: {state.state}{nodes}{why}")
        if state.state == RUNNING and seen["running_since"] is None:
            seen["running_since"] = time.monotonic()
        if (state.state == RUNNING and not seen["told"] and progress.tail.steps_seen == 0
                and time.monotonic() - seen["running_since"] >= QUIET_S):
            seen["told"] = True
            echo(f"job {state.job_id}: running {QUIET_S:.0f} s without a training step; "
                 + waiting_for(run_dir, state.job_id))

    try:
        final = slurm.wait(job.job_id, on_poll=on_poll)
    except KeyboardInterrupt:  # stop following; the job is SLURM's and keeps running
        echo(f"\nstopped following; SLURM job {job.job_id} goes on. shardplan status {run_dir} | "
             f"shardplan cancel {run_dir}")
        return 130
    progress.poll(force=True)
    done = job.finish(finished=time.time(), state=final.state)
    if final.state == COMPLETED:
        done = done.finish(exit_code=0)
    else:
        failure = slurm_failure(run_dir, job, final, procs_per_node)
        done = done.finish(exit_code=_slurm_code(final.exit_code), failed_rank=failure.rank,
                           failed_log=failure.log, reason=failure.reason)
    jobs.write_job(run_dir, done)
    report_outcome(done, echo, run_dir)
    return 0 if final.state == COMPLETED else (done.exit_code or 1)


def waiting_for(run_dir: Path, job_id: str) -> str:
    """What a running job without steps is doing, from its batch output: the rendezvous it waits at."""
    batch = run_dir / LOG_DIR / f"slurm-{job_id}.out"
    text = batch.read_text(errors="replace") if batch.is_file() else ""
    found = re.findall(r"rendezvous (\S+):(\d+)", text)
    if not found:
        return f"the batch script has not reached torchrun yet (see {batch})"
    host, port = found[-1]
    return (f"the ranks are joining the rendezvous at {host}:{port} (torchrun gives up after "
            f"{SLURM_RENDEZVOUS_TIMEOUT_S} s); if {host} is not reachable from every node, cancel "
            f"(`shardplan cancel {run_dir}`) and set SHARDPLAN_MASTER_ADDR; logs: {run_dir / LOG_DIR}/")


def slurm_failure(run_dir: Path, job: JobRecord, state: slurm.SlurmState, procs_per_node: int) -> ranks.Failure:
    log_dir = run_dir / LOG_DIR
    outputs = slurm.node_outputs(log_dir, job.job_id)
    reports = [(str(p), p.read_text(errors="replace")) for p in outputs]
    failure = ranks.diagnose(log_dir, job.started, exit_code=None, reports=reports,
                             procs_per_node=procs_per_node)
    base = f"SLURM job {job.job_id} {state.state} (ExitCode {state.exit_code or '?'})"
    if failure.rank is None:
        out = ", ".join(str(p) for p in outputs) or str(log_dir)
        return ranks.Failure(None, None, f"{base}; see {out}")
    return ranks.Failure(failure.rank, failure.log or (str(outputs[0]) if outputs else None),
                         f"{base}: {failure.reason}")


def _slurm_code(exit_code: str) -> int:
    code, _, sig = exit_code.partition(":")
    try:
        return int(code) or (128 + int(sig) if sig and int(sig) else 1)
    except ValueError:
        return 1


# ---------------------------------------------------------------- status / cancel

def check_not_running(run_dir: Path, node_rank: int | None = None) -> None:
    """Two launches of one run directory would write the same checkpoints: refuse the second."""
    job = jobs.read_job(run_dir, node_rank)
    if job is None:
        return
    if job.scheduler == "slurm":
        state = slurm.query(job.job_id).state if job.job_id else "UNKNOWN"
        busy = state in ("PENDING", "RUNNING", "CONFIGURING", "COMPLETING", "REQUEUED", "RESIZING", "SUSPENDED")
    else:
        state = jobs.local_state(job)
        busy = state == RUNNING
    if busy:
        ident = f"SLURM job {job.job_id}" if job.scheduler == "slurm" else f"pid {job.pid}"
        raise LaunchError(f"{run_dir} already has a {state} job ({ident}); wait for it, or "
                          f"`shardplan cancel {run_dir}` first")


def status(run_dir: Path) -> dict:
    job = jobs.read_job(run_dir)
    if job is None:
        raise LaunchError(f"{run_dir} has no job record ({jobs.JOB_FILE}): it was never launched; "
                          f"start it with `shardplan launch {run_dir}`")
    info = {"run_dir": str(run_dir), "scheduler": job.scheduler, "started": job.started,
            "elapsed_s": round(jobs.elapsed(job), 1), "resume": job.resume}
    if job.scheduler == "slurm":
        state = slurm.query(job.job_id)
        info.update(job_id=job.job_id, state=state.state if state.source != "none" else (job.state or "UNKNOWN"),
                    exit_code=state.exit_code, reason=state.reason, nodes=state.nodes, source=state.source)
        if state.source == "none":
            info["note"] = (f"slurmctld no longer knows job {job.job_id} and sacct has no record "
                            f"({state.reason}); the state shown is the one `launch --follow` recorded")
    else:
        info.update(pid=job.pid, state=jobs.local_state(job), exit_code=job.exit_code, source="pid")
    rows = read_metrics(run_dir).steps
    if rows:
        info["last_step"] = rows[-1]["step"]
        info["last_loss"] = rows[-1].get("loss")
    for key in ("failed_rank", "failed_log"):
        if getattr(job, key) is not None:
            info[key] = getattr(job, key)
    if job.reason:
        info["failure" if job.state != CANCELLED else "reason"] = job.reason
    return info


def cancel(run_dir: Path) -> str:
    job = jobs.read_job(run_dir)
    if job is None:
        raise LaunchError(f"{run_dir} has no job record ({jobs.JOB_FILE}): nothing to cancel")
    if job.scheduler == "slurm":
        slurm.cancel(job.job_id)
        return f"cancelled SLURM job {job.job_id} (scancel)"
    if jobs.local_state(job) != RUNNING:
        return f"nothing to cancel: the {job.scheduler} job is {jobs.local_state(job)}"
    jobs.write_job(run_dir, job.finish(state=CANCELLED, reason="cancelled"))
    terminate_group(job.pid, wait=True)  # the launch process waiting on the group records the outcome
    return f"cancelled the {job.scheduler} job (process group {job.pid})"


def _wait_group_gone(pgid: int, timeout: float) -> None:
    """Wait for a process group to exit; SIGKILL what is left after timeout seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.2)
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass
