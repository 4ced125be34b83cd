"""Which Estimate `render` writes: the planner's best, or a plan.json's, with the command line's layout flags
fixed and re-evaluated. Pure planner work (no torch); errors are ValueErrors naming the value and the fix."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from shardplan.launch.plan_inputs import (CLUSTER_OVERRIDES, MODEL_OVERRIDES, build_layout, build_training,
                                          inputs_from_options, load_cluster, load_model, parse_headroom)

# Layout flags the planner's search can hold fixed (name in plan()); dp and grad_accum follow from the rest.
SEARCH_CONSTRAINTS = {"tp": "tp", "pp": "pp", "zero": "zero_stage", "micro_batch": "micro_batch",
                      "checkpointing": "checkpointing", "offload": "offload"}
# Changing any of these changes dp or the micro-batch, so the plan's dp / grad_accum are derived again.
RESHAPING = ("dp", "tp", "pp", "micro_batch")


def read_plan(path) -> dict:
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"--from {path}: not a readable plan.json ({e})") from None
    best = data.get("best") if isinstance(data, dict) else None
    missing = [k for k in ("model", "cluster", "layout", "training") if not isinstance(best, dict) or k not in best]
    if missing:
        raise ValueError(f"--from {path}: best.{', best.'.join(missing)} missing; give the plan.json that "
                         "`shardplan plan --json` or `shardplan render` wrote")
    return data


def cluster_from_dict(d: dict, overrides: dict):
    """Rebuild a plan.json cluster: the catalog GPU, with the plan's memory, bandwidths and hosts."""
    spec = (f"{d['nodes']}x" if d["nodes"] > 1 else "") + f"{d['gpus_per_node']}x{d['gpu']}"
    cluster = load_cluster(spec, overrides)
    gpu = cluster.gpu
    if overrides.get("gpu_memory") is None and d.get("gpu_memory_bytes"):
        gpu = dataclasses.replace(gpu, memory_bytes=int(d["gpu_memory_bytes"]))
    if overrides.get("intra_node_bw") is None and d.get("intra_node_gbps"):
        gpu = dataclasses.replace(gpu, nvlink_gbps=float(d["intra_node_gbps"]))
    changes = {"gpu": gpu, "hosts": tuple(d.get("hosts") or ()), "source": d.get("source", cluster.source)}
    if overrides.get("inter_node_bw") is None and d.get("inter_node_gbps"):
        changes["inter_node_gbps"] = float(d["inter_node_gbps"])
    return dataclasses.replace(cluster, **changes)


def _layout_flags(layout) -> dict:
    d = layout.to_dict()
    d["zero"] = d.pop("zero_stage")
    return d


def _override_note(before, after, fixed) -> str:
    flags = " ".join(f"--{k.replace('_', '-')} {v}" for k, v in fixed.items())
    changed = [f"{k} {after[k]} (plan: {before[k]})" for k in after if after[k] != before.get(k)]
    return f"Layout fixed on the command line ({flags}): " + (", ".join(changed) or "same as the plan") + "."


def choose_estimate(opts: dict, fixed_flags: dict, *, from_plan=None, given: frozenset = frozenset()):
    """(plan dict without "best", Estimate to render). opts: the common planner options; fixed_flags: layout
    flags (None = not given); given: names of options given on the command line (to tell them from defaults)."""
    from shardplan.planner import evaluate, plan

    fixed = {k: v for k, v in fixed_flags.items() if v is not None}
    if from_plan is None:
        model, cluster, training, headroom = inputs_from_options(opts)
        constraints = {SEARCH_CONSTRAINTS[k]: v for k, v in fixed.items() if k in SEARCH_CONSTRAINTS}
        chosen = plan(model, cluster, training, headroom, **constraints)
        plan_dict = chosen.to_dict()
        est = chosen.best
        if "dp" in fixed or "grad_accum" in fixed:
            est = _refix(est, fixed, model, cluster, training, headroom, evaluate)
            plan_dict["reasons"] = [_override_note(_layout_flags(chosen.best.layout), _layout_flags(est.layout), fixed)] \
                + plan_dict["reasons"]
        return plan_dict, est

    data = read_plan(from_plan)
    best = data["best"]
    model = load_model(best["model"], {k: opts.get(k) for k in MODEL_OVERRIDES})
    cluster_over = {k: opts.get(k) for k in CLUSTER_OVERRIDES}
    cluster = (load_cluster(opts["cluster"], cluster_over) if "cluster" in given
               else cluster_from_dict(best["cluster"], cluster_over))
    t = best["training"]
    training = build_training(model, opts.get("seq") or t["seq_len"],
                              opts.get("global_batch") or (None if opts.get("global_batch_tokens") else t["global_batch"]),
                              opts.get("global_batch_tokens"),
                              opts["precision"] if "precision" in given else t.get("precision", "bf16"))
    headroom = parse_headroom(opts.get("headroom", "10%"))
    before = {k: v for k, v in best["layout"].items()}
    before["zero"] = before.pop("zero_stage", 0)
    merged = {**before, **fixed}
    if any(k in fixed for k in RESHAPING) or "cluster" in given or training.global_batch != t["global_batch"]:
        for k in ("dp", "grad_accum"):
            if k not in fixed:
                merged.pop(k, None)
    est = evaluate(model, cluster, build_layout(cluster, training, merged), training, headroom)
    plan_dict = {k: v for k, v in data.items() if k not in ("best", "command", "shardplan_version")}
    plan_dict["reasons"] = [_override_note(before, _layout_flags(est.layout), fixed)] + list(data.get("reasons", []))
    return plan_dict, est


def _refix(est, fixed, model, cluster, training, headroom, evaluate):
    merged = {**_layout_flags(est.layout), **fixed}
    if "dp" in fixed and "grad_accum" not in fixed:
        del merged["grad_accum"]  # derived again from the global batch
    return evaluate(model, cluster, build_layout(cluster, training, merged), training, headroom)
