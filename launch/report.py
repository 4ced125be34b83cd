"""`shardplan report`'s numbers: a run directory's prediction (plan.json) against what it measured
(metrics.jsonl): peak memory, steady step time, tokens/s and MFU with signed relative errors
(measured / predicted - 1), the loss curve's ends, the job's state, and anything odd.
"""
from __future__ import annotations

import math
import os
from pathlib import Path

from .rundir import read_plan
from .run import jobs
from .runmetrics import median, read_metrics

SLOW_STEP = 3.0          # a steady step this many times the median is a stall worth naming
RANK_IMBALANCE = 1.25    # a rank whose peak is this many times the median rank's
GROWTH = 1.05            # peak memory growing by more than this from the first to the last third of the steady steps
BIG_ERROR = 0.25         # a step-time error past this suggests `shardplan calibrate`


def _error(measured, predicted):
    return measured / predicted - 1 if measured is not None and predicted else None


def job_state(run_dir: Path) -> tuple[str, jobs.JobRecord | None]:
    job = jobs.read_job(run_dir)
    if job is None:
        return "NOT LAUNCHED (no job.json)", None
    if job.scheduler == "slurm":
        from .run.launcher import status    # asks the scheduler; only for SLURM jobs
        try:
            return status(run_dir)["state"], job
        except (OSError, ValueError):
            return job.state or "UNKNOWN", job
    return jobs.local_state(job), job


def planned_steps(job: jobs.JobRecord | None) -> int | None:
    args = list(job.train_args) if job else []
    for i, a in enumerate(args):
        if a == "--steps" and i + 1 < len(args) and args[i + 1].isdigit():
            return int(args[i + 1])
        if a.startswith("--steps=") and a[8:].isdigit():
            return int(a[8:])
    return None


def build_report(run_dir: str | os.PathLike) -> dict:
    """Everything `report` prints; RunDirError (a ValueError) when plan.json is missing or unreadable."""
    run_dir = Path(run_dir)
    plan = read_plan(run_dir)
    best = plan["best"]
    metrics = read_metrics(run_dir)
    state, job = job_state(run_dir)
    steps, warm = metrics.steps, metrics.warmup()
    steady = metrics.steady()
    tokens_per_step = best["training"]["global_batch"] * best["training"]["seq_len"]
    step_s = median([r.get("step_time_s") for r in steady])
    per_rank = _per_rank_peaks(steps)
    peak = max(per_rank) if per_rank else None
    mfus = [r.get("mfu") for r in steady if r.get("mfu") is not None]
    predicted = {"peak_bytes": best["memory"]["peak_bytes"], "step_time_s": best["step_time_s"],
                 "tokens_per_s": best["tokens_per_s"], "mfu": best["mfu"]}
    measured = {"peak_bytes": peak, "step_time_s": step_s,
                "tokens_per_s": tokens_per_step / step_s if step_s else None,
                "mfu": median(mfus), "peak_bytes_per_rank": per_rank}
    error = {k: _error(measured[k], predicted[k]) for k in ("peak_bytes", "step_time_s", "tokens_per_s")}
    losses = [r.get("loss") for r in steps]
    total = planned_steps(job)
    report = {"run_dir": str(run_dir), "state": state, "steps": len(steps), "planned_steps": total,
              "warmup_steps": len(steps) - len(steady), "steady_steps": len(steady),
              "model": best["model"]["name"], "cluster": best["cluster"], "layout": best["layout"],
              "predicted": predicted, "measured": measured, "error": error,
              "loss": {"first": losses[0] if losses else None, "last": losses[-1] if losses else None,
                       "min": min((x for x in losses if _finite(x)), default=None)},
              "stopped": _stopped(state, job, steps, total, metrics.torn),
              "oddities": _oddities(steps, steady, per_rank, error, best["layout"], str(run_dir)),
              "notes": _notes(steps, best),
              "predicted_memory": best["memory"], "headroom": _headroom(best),
              "series": {"step": [r.get("step") for r in steps], "loss": losses,
                         "step_time_s": [r.get("step_time_s") for r in steps],
                         "warmup_steps": [steps[i].get("step") for i in sorted(warm)]}}
    return report


def _finite(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


def _headroom(best: dict) -> float:
    """The headroom the plan kept: 1 - usable/capacity is not in plan.json, so take the usual 10%."""
    return float(best.get("headroom", 0.1))


def _per_rank_peaks(steps) -> list[int]:
    out: list[int] = []
    for r in steps:
        ranks = r.get("peak_allocated_bytes_per_rank") or ([r["peak_allocated_bytes"]] if r.get("peak_allocated_bytes") else [])
        out = [max(a, b) for a, b in zip(out, ranks)] + list(ranks[len(out):]) if out else list(ranks)
    return out


def _stopped(state: str, job, steps, total, torn: bool) -> str | None:
    """Where a run that did not finish stopped (None for a completed run)."""
    last = steps[-1].get("step") if steps else None
    of = f" of {total}" if total else ""
    if state.startswith("RUNNING"):
        return f"still running: step {last}{of} so far" if last else "still running: no step recorded yet"
    if state == jobs.COMPLETED:
        return None
    where = f"after step {last}{of}" if last else "before its first step"
    why = f" ({job.reason})" if job and job.reason else ""
    rank = f"; rank {job.failed_rank} failed first, log {job.failed_log}" if job and job.failed_rank is not None else ""
    return f"{state.split(' ')[0].lower()} {where}{why}{rank}" + ("; the last line of metrics.jsonl is cut off" if torn else "")


def _oddities(steps, steady, per_rank, error, layout, run_dir: str) -> list[str]:
    out = []
    for r in steps:
        if not _finite(r.get("loss")):
            out.append(f"loss is {r.get('loss')} at step {r.get('step')}")
            break
    times = [r.get("step_time_s") for r in steady if r.get("step_time_s")]
    mid = median(times)
    for r in steady:
        t = r.get("step_time_s")
        if mid and t and t > SLOW_STEP * mid:
            out.append(f"step {r['step']} took {t:.3g} s, {t / mid:.1f}× the median (a stall: I/O, a straggler, "
                       "a checkpoint save)")
    if len(per_rank) > 1:
        typical = median(per_rank)
        for rank, p in enumerate(per_rank):
            if typical and p > RANK_IMBALANCE * typical:
                why = " (expected with pp>1: the first stage holds more micro-batches)" if layout.get("pp", 1) > 1 else ""
                out.append(f"rank {rank}'s peak memory is {p / typical:.2f}× the median rank's{why}")
    peaks = [r.get("peak_allocated_bytes") for r in steady if r.get("peak_allocated_bytes")]
    if len(peaks) >= 3:
        third = max(1, len(peaks) // 3)
        first, last = median(peaks[:third]), median(peaks[-third:])
        if last > GROWTH * first and peaks[-1] == max(peaks):
            out.append(f"peak memory grew from {first / 2**20:,.0f} MiB to {last / 2**20:,.0f} MiB over the steady "
                       "steps (something keeps tensors alive step over step)")
    if error["step_time_s"] is not None and abs(error["step_time_s"]) > BIG_ERROR:
        out.append(f"step time is {error['step_time_s']:+.0%} off the prediction; teach the planner this machine: "
                   f"shardplan calibrate {run_dir} --out profile.json")
    return out


def _notes(steps, best) -> list[str]:
    notes = []
    if best["cluster"].get("gpu") == "CPU" or (steps and steps[-1].get("mfu") is None):
        notes.append("CPU processes: the measured peak is the process's max RSS (the interpreter, torch and "
                     "DeepSpeed included), not the allocator's; MFU has no peak to divide by")
    return notes
