"""Calibration profiles on disk: read measurements (a JSONL of `estimate --batch` requests with "measured",
and run directories: plan.json + metrics.jsonl), write the profile `calibrate` fits, and read it back as the
planner's Calibration value for `plan/estimate/compare --calibration`.

A measurement line: {"model": "gpt2", "cluster": "1xH200", "layout": {...}, "overrides": {...},
"training": {...}, "measured": {"peak_bytes": 3225812992, "step_time_s": 0.0702}} (step_time_s may be null:
memory only). A profile: {"kind", "shardplan_version", "created", "parameters", "constants": {GPU: {...}},
"fits": [...], "data": [...]}.
"""
from __future__ import annotations

import datetime
import json
import os
from pathlib import Path

from shardplan import __version__
from shardplan.planner.calibration import PARAMETERS, Calibration, GpuFit, Measurement
from shardplan.planner.cluster import Cluster
from shardplan.planner.estimate import Training
from shardplan.planner.model import ModelSpec

from .inputs import resolve_request
from .rundir import RunDirError, plan_layout, read_plan
from .runmetrics import read_metrics, steady_step_time

KIND = "shardplan calibration profile"


def read_measurements(path: str | os.PathLike) -> list[Measurement]:
    """The measurement lines of a JSONL file; ValueError naming the file, the line and the fix."""
    path = Path(path)
    try:
        lines = path.read_text().splitlines()
    except OSError as e:
        raise ValueError(f"--measurements {path}: cannot read it ({e.strerror}); give a JSONL file") from None
    out, cache = [], {}
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            request = json.loads(line)
            measured = request.pop("measured")
            request.pop("note", None)             # free text: where the line came from
            model, cluster, training, _, layout = resolve_request(request, {}, {}, cache)
        except (ValueError, TypeError, KeyError, AttributeError) as e:
            raise ValueError(f"{where}: not a measurement line ({type(e).__name__}: {str(e).splitlines()[0]}); "
                             'each line is an estimate --batch request plus "measured": {"peak_bytes": int, '
                             '"step_time_s": float}') from None
        out.append(_measurement(model, cluster, layout, training, measured, where))
    if not out:
        raise ValueError(f"--measurements {path} holds no measurement lines")
    return out


def _measurement(model, cluster, layout, training, measured, where: str) -> Measurement:
    peak, step = (measured or {}).get("peak_bytes"), (measured or {}).get("step_time_s")
    if peak is not None and (isinstance(peak, bool) or not isinstance(peak, int) or peak <= 0):
        raise ValueError(f"{where}: measured.peak_bytes({peak!r}) must be a positive integer")
    if step is not None and (isinstance(step, bool) or not isinstance(step, (int, float)) or step <= 0):
        raise ValueError(f"{where}: measured.step_time_s({step!r}) must be positive seconds")
    if peak is None and step is None:
        raise ValueError(f"{where}: measured needs peak_bytes or step_time_s")
    return Measurement(model, cluster, layout, training, peak, step, where)


def run_measurement(run_dir: str | os.PathLike) -> Measurement:
    """A run directory as a measurement: plan.json's inputs, metrics.jsonl's steady median step and peak."""
    plan = read_plan(run_dir)
    best = plan["best"]
    try:
        model, cluster = ModelSpec.from_dict(best["model"]), Cluster.from_dict(best["cluster"])
        t = best["training"]
        training = Training(seq_len=int(t["seq_len"]), global_batch=int(t.get("global_batch", 0)),
                            precision=t.get("precision", "bf16"))
    except (ValueError, TypeError, KeyError) as e:
        raise RunDirError(f"{run_dir}/plan.json: cannot rebuild the plan's inputs ({e}); re-render it") from None
    metrics = read_metrics(run_dir)
    step, steady, _ = steady_step_time(run_dir)
    if not metrics.steps:
        raise RunDirError(f"{run_dir}: no steps in metrics.jsonl yet; launch it (shardplan launch {run_dir}) first")
    peak = max(int(r.get("peak_allocated_bytes") or 0) for r in metrics.steps) or None
    return _measurement(model, cluster, plan_layout(plan, run_dir), training,
                        {"peak_bytes": peak, "step_time_s": step if steady else None}, str(run_dir))


def write_profile(path: str | os.PathLike, calibration: Calibration, fits: list[GpuFit],
                  points: list[Measurement], sources: list[str]) -> dict:
    data = []
    for m in points:
        row = {"source": m.source, "gpu": m.cluster.gpu.name, "model": m.model.name, "layout": m.layout.to_dict(),
               "engine": m.training.engine, "measured": {"peak_bytes": m.peak_bytes, "step_time_s": m.step_time_s}}
        data.append(row)
    profile = {"kind": KIND, "shardplan_version": __version__,
               "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
               "sources": sources,
               "parameters": {p.name: {"low": p.low, "high": p.high, "doc": p.doc} for p in PARAMETERS},
               "constants": calibration.values(), "fits": [f.to_dict() for f in fits], "data": data}
    Path(path).write_text(json.dumps(profile, indent=1) + "\n")
    return profile


def read_profile(path: str | os.PathLike) -> Calibration:
    """--calibration PROFILE.json -> the planner's Calibration; ValueError naming the file and the fix."""
    path = Path(path)
    try:
        profile = json.loads(path.read_text())
    except OSError as e:
        raise ValueError(f"--calibration {path}: cannot read it ({e.strerror}); write one with "
                         "`shardplan calibrate ... --out PROFILE.json`") from None
    except ValueError as e:
        raise ValueError(f"--calibration {path} is not JSON ({e}); write it with shardplan calibrate") from None
    if not isinstance(profile, dict) or profile.get("kind") != KIND or not isinstance(profile.get("constants"), dict):
        raise ValueError(f"--calibration {path} is not a calibration profile (no \"kind\": \"{KIND}\" and "
                         "\"constants\"); write one with `shardplan calibrate ... --out PROFILE.json`")
    try:
        return Calibration.from_values(profile["constants"])
    except (ValueError, TypeError, AttributeError) as e:
        raise ValueError(f"--calibration {path}: {e}; re-run shardplan calibrate") from None
