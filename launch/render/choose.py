"""Which Estimate `render` writes: the planner's best, or a plan.json's, with the command line's layout flags
fixed and re-evaluated. No torch; errors are ValueErrors naming the value and the fix."""
from __future__ import annotations

import dataclasses

from shardplan.planner import evaluate, plan
from shardplan.planner.cluster import Cluster
from shardplan.planner.layout import field_name
from shardplan.planner.search import SEARCHED_FIELDS

from .. import rundir
from ..inputs import (CLUSTER_OVERRIDES, MODEL_OVERRIDES, build_layout, build_training, cluster_overrides,
                      inputs_from_options, load_cluster, load_model, parse_headroom, parse_pp_layers)

# Changing any of these changes dp or the micro-batch, so the plan's dp / grad_accum are derived again.
RESHAPING = ("dp", "tp", "pp", "micro_batch")


def read_plan(path) -> dict:
    try:
        return rundir.read_plan(path)
    except rundir.RunDirError as e:
        raise ValueError(f"--from {path}: {e}") from None


def _override_note(before, after, fixed) -> str:
    flags = " ".join(f"--{k.replace('_', '-')} {v}" for k, v in fixed.items())
    changed = [f"{k} {after[k]} (plan: {before[k]})" for k in after if after[k] != before.get(k)]
    return f"Layout fixed on the command line ({flags}): " + (", ".join(changed) or "same as the plan") + "."


def choose_estimate(opts: dict, fixed_flags: dict, *, from_plan=None, given: frozenset = frozenset()):
    """(plan dict without "best", Estimate to render). opts: the common planner options; fixed_flags: layout
    flags (None = not given); given: names of options given on the command line (to tell them from defaults)."""
    fixed = {k: v for k, v in fixed_flags.items() if v is not None}
    if "pp_layers" in fixed:                  # "7,8,8,7" on the command line: the planner wants the counts
        fixed["pp_layers"] = parse_pp_layers(fixed["pp_layers"])
    if from_plan is None:
        model, cluster, training, headroom = inputs_from_options(opts)
        constraints = {field_name(k): v for k, v in fixed.items() if field_name(k) in SEARCHED_FIELDS}
        chosen = plan(model, cluster, training, headroom, **constraints)
        plan_dict = chosen.to_dict()
        est = chosen.best
        from .hf import hf_model_record
        if hf_model_record(opts.get("model")):   # a local HF model: the training program rebuilds it from there
            plan_dict["hf_model"] = hf_model_record(opts.get("model"))
        if "dp" in fixed or "grad_accum" in fixed:
            est = _refix(est, fixed, model, cluster, training, headroom)
            plan_dict["reasons"] = [_override_note(chosen.best.layout.to_flags(), est.layout.to_flags(), fixed)] \
                + plan_dict["reasons"]
        return plan_dict, est

    data = read_plan(from_plan)
    best = data["best"]
    model = load_model(best["model"], {k: opts.get(k) for k in MODEL_OVERRIDES})
    cluster_over = {k: opts.get(k) for k in CLUSTER_OVERRIDES}
    cluster = (load_cluster(opts["cluster"], cluster_over) if "cluster" in given
               else Cluster.from_dict(best["cluster"]).with_overrides(**cluster_overrides(cluster_over)))
    t = best["training"]
    training = build_training(model, opts.get("seq") or t["seq_len"],
                              opts.get("global_batch") or (None if opts.get("global_batch_tokens") else t["global_batch"]),
                              opts.get("global_batch_tokens"),
                              opts["precision"] if "precision" in given else t.get("precision", "bf16"),
                              opts["engine"] if "engine" in given else best.get("engine", "deepspeed"))
    # the plan's engine options unless the command line says otherwise
    cp_comm = opts["cp_comm_type"] if "cp_comm_type" in given else t.get("cp_comm_type", "p2p")
    training = dataclasses.replace(training, cp_comm_type=cp_comm)
    headroom = parse_headroom(opts.get("headroom", "10%"))
    before = rundir.plan_layout(data, from_plan).to_flags()
    merged = {**before, **fixed}
    if any(k in fixed for k in RESHAPING) or "cluster" in given or training.global_batch != t["global_batch"]:
        for k in ("dp", "grad_accum"):
            if k not in fixed:
                merged.pop(k, None)
    est = evaluate(model, cluster, build_layout(cluster, training, merged), training, headroom)
    plan_dict = {k: v for k, v in data.items() if k not in ("best", "command", "shardplan_version")}
    plan_dict["reasons"] = [_override_note(before, est.layout.to_flags(), fixed)] + list(data.get("reasons", []))
    return plan_dict, est


def _refix(est, fixed, model, cluster, training, headroom):
    merged = {**est.layout.to_flags(), **fixed}
    if "dp" in fixed and "grad_accum" not in fixed:
        del merged["grad_accum"]  # derived again from the global batch
    return evaluate(model, cluster, build_layout(cluster, training, merged), training, headroom)
