"""Which rank died first, and where its log is: per-rank log discovery and failure diagnosis.

When one rank dies, its peers fail right after it (gloo/NCCL see the closed connection), so "a rank that
failed" is easy and "the rank that failed first" is the question. Evidence, best first:
1. a local launch watches its ranks' processes (/proc: the RANK each launcher sets) and notes the first
   to vanish while the launcher still runs;
2. torchrun's failure report ("rank : R (local_rank: L)", "exitcode : -9 (pid: P) (SIGKILL)"), in the
   launcher output or the SLURM per-node output: a rank killed by a signal other than the teardown's
   SIGTERM, else torchrun's root cause;
3. per-rank logs: a rank whose log ends in an error that is not a peer's lost connection.
"""
from __future__ import annotations

import os
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path

TRAIN_MODULE = "shardplan.launch.train"

# Errors a rank raises because a peer died: it is a victim, not the cause.
_VICTIM = re.compile(r"Connection (closed|reset) by peer|Broken pipe|ECONNRESET|Socket Timeout|"
                     r"NCCL communicator was aborted|ProcessGroupGloo|gloo/transport|"
                     r"DistNetworkError|Received Signals\.SIGTERM|SignalException", re.I)
_ERROR = re.compile(r"Traceback \(most recent call last\)|^\w*(Error|Exception)\b|^error:", re.M)
_DS_EXIT = re.compile(r"exits with return code = (-?\d+)")  # deepspeed/launcher/launch.py sigkill_handler
_DS_RANK_LOG = re.compile(r"_rank(\d+)\.log$")


@dataclass(frozen=True)
class Failure:
    rank: int | None
    log: str | None       # the rank's log file, when one was found
    reason: str           # one line: exit code / signal / last error line


# ---------------------------------------------------------------- per-rank logs

def rank_logs(log_dir: Path, since: float = 0.0, procs_per_node: int = 1) -> dict[int, Path]:
    """Global rank -> its newest log file under log_dir modified after `since` (a resumed run adds files).

    deepspeed's launcher names them <timestamp>_rank<R>.log; torchrun (as launch/commands.py runs it)
    writes node<N>/<run id>_<random>/attempt_<k>/<local rank>/stdout.log: rank N·procs_per_node + local.
    """
    found: dict[int, Path] = {}
    if not log_dir.is_dir():
        return found
    files = [p for p in log_dir.rglob("*") if p.is_file() and p.stat().st_mtime >= since]
    for path in sorted(files, key=lambda p: p.stat().st_mtime):
        m = _DS_RANK_LOG.search(path.name)
        if m:
            found[int(m.group(1))] = path
        elif path.name == "stdout.log" and path.parent.name.isdigit():
            node = next((int(p.name[4:]) for p in path.parents if re.fullmatch(r"node\d+", p.name)), 0)
            found[node * procs_per_node + int(path.parent.name)] = path
    return found


def tail(path: Path, lines: int = 5) -> list[str]:
    try:
        with path.open("rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 16384))
            return f.read().decode(errors="replace").splitlines()[-lines:]
    except OSError:
        return []


def last_error_line(path: Path) -> str | None:
    """The last line that looks like an error (the exception line after a traceback), if any."""
    for line in reversed(tail(path, 60)):
        s = line.strip()
        if re.match(r"^(\[\w+\]:)?\s*[\w.]*(Error|Exception|Interrupt)\b", s) or s.lower().startswith("error:"):
            return s
    return None


# ---------------------------------------------------------------- torchrun failure reports

@dataclass(frozen=True)
class ReportedFailure:
    rank: int
    exitcode: int
    signal: str | None
    host: str
    root_cause: bool
    log: str | None      # stdout.log next to the error_file torchrun names (its per-rank log directory)


def torchrun_failures(text: str, source: str | None = None) -> list[ReportedFailure]:
    """Every failure entry of torchrun's ChildFailedError report (torch/distributed/elastic/.../errors).

    The rank's log is the stdout.log beside its error file when torchrun names one, else `source` (the
    output the report was found in: with --tee it carries that node's rank lines too)."""
    found = []
    root_at = text.rfind("Root Cause (first observed failure)")
    pattern = re.compile(r"host\s*:\s*(\S+)\s*\n[^\n]*?rank\s*:\s*(\d+) \(local_rank: \d+\)\s*\n[^\n]*?"
                         r"exitcode\s*:\s*(-?\d+) \(pid: \d+\)(?:\s*\((SIG\w+)\))?[^\n]*\n[^\n]*?"
                         r"error_file\s*:\s*(\S*)")
    for m in pattern.finditer(text):
        log = None
        if m.group(5) and m.group(5) != "<N/A>":
            stdout = Path(m.group(5)).parent / "stdout.log"
            log = str(stdout) if stdout.is_file() else None
        found.append(ReportedFailure(rank=int(m.group(2)), exitcode=int(m.group(3)), signal=m.group(4),
                                     host=m.group(1), root_cause=root_at >= 0 and m.start() > root_at,
                                     log=log or source))
    return found


def pick_reported(failures: list[ReportedFailure]) -> ReportedFailure | None:
    """A rank killed by a signal (not the teardown's SIGTERM) caused it; else torchrun's root cause."""
    killed = [f for f in failures if f.signal and f.signal != "SIGTERM"]
    if killed:
        return killed[0]
    roots = [f for f in failures if f.root_cause]
    return (roots or failures or [None])[0]


# ---------------------------------------------------------------- watching local ranks

class RankWatcher(threading.Thread):
    """Polls the launcher's descendants; remembers each rank's pid, the order in which ranks vanished, and
    how each ended when its zombie was still there to read (until the launcher reaps it).

    Polling every 0.1 s is enough: a killed rank's peers need at least a collective's round trip to fail.
    """

    def __init__(self, launcher_pid: int, interval: float = 0.1) -> None:
        super().__init__(daemon=True, name="rank-watcher")
        self.launcher_pid, self.interval = launcher_pid, interval
        self.pids: dict[int, int] = {}              # rank -> pid
        self.vanished: list[tuple[float, int]] = []  # (time, rank), in the order seen
        self.status: dict[int, int] = {}            # rank -> wait status (exit code << 8 | signal)
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.is_set():
            for rank, pid in _train_ranks_under(self.launcher_pid).items():
                self.pids.setdefault(rank, pid)
            now, seen_gone = time.time(), {r for _, r in self.vanished}
            gone = []
            for rank, pid in sorted(self.pids.items()):
                if rank in seen_gone:
                    continue
                state, status = _process_state(pid)
                if state in (None, "Z", "X"):  # reaped, or a zombie waiting for the launcher to reap it
                    gone.append(rank)
                    if status is not None:
                        self.status[rank] = status
            self.vanished += [(now, r) for r in gone]
            self._halt.wait(self.interval)

    def stop(self) -> None:
        self._halt.set()
        self.join(timeout=2)

    def first_vanished(self) -> list[int]:
        """The ranks seen gone in the first poll that saw any gone (ties are possible)."""
        if not self.vanished:
            return []
        t0 = self.vanished[0][0]
        return [r for t, r in self.vanished if t == t0]


def _process_state(pid: int) -> tuple[str | None, int | None]:
    """(state letter or None when gone, wait status when a zombie): /proc/PID/stat, whose last field is
    the exit_code a zombie leaves for its parent (proc(5), Linux 3.5+)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None, None
    zombie = fields[0] == "Z" and len(fields) >= 50 and fields[-1].isdigit()
    return fields[0], int(fields[-1]) if zombie else None


def describe_status(status: int) -> str:
    return f"killed by {_signal_name(status & 0x7F)}" if status & 0x7F else f"exit code {status >> 8}"


def _train_ranks_under(root: int) -> dict[int, int]:
    """rank -> pid of the training processes below `root` (Linux /proc; empty elsewhere)."""
    children: dict[int, list[int]] = {}
    try:
        entries = os.listdir("/proc")
    except OSError:
        return {}
    for name in entries:
        if not name.isdigit():
            continue
        try:
            stat = Path(f"/proc/{name}/stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if fields[0] == "Z":
            continue
        children.setdefault(int(fields[1]), []).append(int(name))
    ranks, todo = {}, list(children.get(root, []))
    while todo:
        pid = todo.pop()
        try:
            is_rank = TRAIN_MODULE.encode() in Path(f"/proc/{pid}/cmdline").read_bytes()
            env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0") if is_rank else []
        except OSError:
            is_rank, env = False, []
        rank = next((int(item[5:]) for item in env if item.startswith(b"RANK=") and item[5:].isdigit()), None)
        if rank is None:
            todo += children.get(pid, [])
        else:
            # The topmost training process is the rank; below it are its own helpers (forks share its
            # command line and environment until they exec).
            ranks.setdefault(rank, pid)
    return ranks


# ---------------------------------------------------------------- the verdict

def _signal_name(number: int) -> str:
    import signal

    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def is_victim(path: Path) -> bool:
    text = "\n".join(tail(path, 80))
    return bool(_VICTIM.search(text))


def diagnose(log_dir: Path, since: float, *, exit_code: int | None, watched: list[int] = (),
             statuses: dict[int, int] | None = None, reports: list[tuple[str | None, str]] = (),
             procs_per_node: int = 1) -> Failure:
    """The first failing rank and its log, from the evidence at hand (see the module docstring)."""
    logs = rank_logs(log_dir, since, procs_per_node)
    statuses = statuses or {}
    reported = pick_reported([f for source, text in reports for f in torchrun_failures(text, source)])
    candidates = list(watched)
    if len(candidates) > 1:  # several vanished in one poll: the one that is not a casualty of the others
        def innocence(rank: int) -> int:
            status = statuses.get(rank)
            if reported is not None and rank == reported.rank and reported.signal != "SIGTERM":
                return 0  # torchrun saw this one die, not of the teardown's SIGTERM
            if status is not None and status & 0x7F and status & 0x7F != 15:
                return 1  # a signal, not the launcher's SIGTERM
            if rank in logs and is_victim(logs[rank]) or status is not None and status & 0x7F == 15:
                return 4  # lost its peer, or was terminated by the launcher
            return 2 if status is not None and status else 3
        candidates.sort(key=innocence)
    rank, why = None, None
    if candidates:
        rank = candidates[0]
        why = "its process ended first"
    elif reported is not None:
        rank = reported.rank
        why = (f"killed by {reported.signal}" if reported.signal else f"exit code {reported.exitcode}") \
            + f" on {reported.host}"
    else:
        errors = [r for r, p in sorted(logs.items()) if _ERROR.search("\n".join(tail(p, 80)))]
        rank = next((r for r in errors if not is_victim(logs[r])), errors[0] if errors else None)
        why = "its log ends in an error" if rank is not None else None
    log = logs.get(rank) if rank is not None else None
    if reported is not None and rank == reported.rank and reported.log and log is None:
        log = Path(reported.log)
    status = statuses.get(rank) if candidates else None
    if status is not None and status & 0x7F:
        detail = describe_status(status)
    elif reported is not None and rank == reported.rank and reported.signal:
        detail = None if not candidates else f"killed by {reported.signal}"  # `why` says it otherwise
    else:
        detail = last_error_line(log) if log else None
        ds_exit = _DS_EXIT.search("\n".join(text for _, text in reports))
        if detail is None and status is not None:
            detail = describe_status(status)
        elif detail is None and ds_exit and int(ds_exit.group(1)) < 0:
            detail = f"killed by {_signal_name(-int(ds_exit.group(1)))}"
    code = f"exit code {exit_code}" if exit_code is not None else "failed"
    if rank is None:
        return Failure(None, None, f"the job {code}; no rank log names the cause: see {log_dir}")
    return Failure(rank, str(log) if log else None,
                   f"rank {rank} failed ({why}{'; ' + detail if detail else ''})")
