"""`shardplan plan | estimate | compare`: the planner on the command line.

Start-up stays light (the plan of a 1T model on 3072 GPUs must finish in under a second including the
interpreter): json and rich are imported only by the paths that print with them.
"""
from __future__ import annotations

import click

from shardplan.cli.options import (ESTIMATE_DEFAULTS, PlanError, budget_options, calibrated, calibration_option,
                                   common_options, inputs_from_options, layout_options, plot_option)
from shardplan.launch.inputs import build_layout, resolve_request
from shardplan.planner.layout import LAYOUT_FLAGS, field_name, flag_name
from shardplan.planner.search import SEARCHED_FIELDS

SEARCHABLE = tuple(flag_name(f) for f in SEARCHED_FIELDS)  # the layout flags `plan` accepts


def _emit_json(obj) -> None:
    import json

    click.echo(json.dumps(obj, indent=2))


def _console(width: int = 120):
    from rich.console import Console

    console = Console(highlight=False)
    if not console.is_terminal:      # piped or captured: wide enough for the tables, no wrapping mid-row
        console = Console(highlight=False, width=width)
    return console


@click.command()
@common_options
@layout_options(SEARCHABLE, notes={"checkpointing": " (searched: none, full)",
                                   "offload": " (default: only when nothing fits without it)"})
@click.option("--prefer", type=click.Choice(["simple", "memory", "speed"]), default="simple", show_default=True,
              help="Among layouts within 1% of the fastest (the model's precision): the one with the least "
                   "machinery (lowest ZeRO stage, no offload or recompute, fewest model-parallel ranks), the one "
                   "using the least memory, or strictly the fastest.")
@click.option("--top", type=click.IntRange(0, 100), default=5, show_default=True,
              help="How many next-best alternatives (one per distinct zero/tp/pp/ckpt/offload family).")
@calibration_option
@budget_options
@click.option("--nodes", help="Sweep node counts of the cluster's card (1-64, or 1,2,4,8): which trains --tokens "
              "cheapest and which fastest, with the best layout of each.")
@click.option("--deadline", help="With --nodes: only node counts that finish --tokens within this (30d, 36h, 2w).")
@click.option("--objective", type=click.Choice(("throughput", "time", "cost")),
              help="With --nodes: what picks the node count: most tokens/s (throughput; time: the same, by days "
                   "to train), or fewest GPU-hours (cost). Default: cost with --deadline, else time.")
@plot_option
def plan(top, prefer, calibration, tokens, price, nodes, deadline, objective, plot, **opts):
    """Search every layout of MODEL on CLUSTER, rank what fits by predicted tokens/s, explain the winner.

    \b
    Examples:
      shardplan plan --model gpt2-xl --cluster 2x8xA100-80GB --global-batch 512
      shardplan plan --model ./my-model/config.json --cluster auto
      shardplan plan --model llama-3-70b --cluster 8x8xH100-80GB --global-batch-tokens 4M --json
      shardplan plan --model gpt2-xl --cluster 1xH200 --zero 2 --headroom 5%
      shardplan plan --model llama-3-8b --cluster 8xH100 --tokens 300B --price 2.49
      shardplan plan --model llama-3-8b --cluster 8xH100 --tokens 300B --price 2.49 --nodes 1-16 --deadline 7d
      shardplan plan --model gpt2-xl --cluster 8xH100 --plot plan.png --calibration h200.json

    \b
    The search: dp·tp·pp·cp uses every GPU; tp divides the GPUs of a node and the (kv) heads; pp divides
    the layers (--engine megatron: any pp, with uneven first/last stages); ZeRO 0-3 (0-1 with pp>1;
    Megatron: 0 or its distributed optimizer); sequence parallel with tp on Megatron; cp for sequences
    of 16K and more on Megatron; vpp 2/4 for pp>2 on Megatron; micro-batch divides the per-replica
    batch; checkpointing none/full; CPU offload only when nothing fits without it (DeepSpeed). A layout
    fits when its peak memory is at most capacity·(1-headroom). Ties within 1%: --prefer. Default global batch: world·2^k sequences, the smallest with >= 0.5M tokens
    (8 sequences per process on CPU processes).
    Exit code 2 when nothing fits, with what would (more GPUs, offload, a larger card).
    """
    from shardplan.planner.plan import plan as search_plan

    fixed = {field_name(k): opts.pop(k) for k in SEARCHABLE}
    model, cluster, training, headroom = inputs_from_options(opts)
    cluster = calibrated(cluster, calibration)
    with PlanError.boundary():
        budget = _budget(tokens, price)
        if nodes is not None:
            return _plan_sweep(model, cluster, training, headroom, fixed, top, tokens, price, nodes, deadline,
                               objective, opts["as_json"])
        if deadline or objective:
            raise ValueError("--deadline and --objective pick a node count: give --nodes too, e.g. --nodes 1-64")
        result = search_plan(model, cluster, training, headroom=headroom, top=top, prefer=prefer, **fixed)
        if plot:
            _plot_plan(result, model, cluster, training, headroom, fixed, plot)
    if opts["as_json"]:
        out = result.to_dict()
        if budget:
            for d, e in zip([out["best"], *out["candidates"]], [result.best, *result.candidates]):
                d.update(budget(e))
        _emit_json(out)
    else:
        from shardplan.cli.plan_print import print_plan

        print_plan(result, _console(), budget)
    if plot:
        click.echo(f"wrote {plot}", err=opts["as_json"])


def _budget(tokens, price):
    """Estimate -> {time_to_train_s, gpu_hours, cost}, or None without --tokens; ValueError on bad values."""
    from shardplan.planner.budget import check_price, parse_amount, time_to_train

    check_price(price)
    if tokens is None:
        if price is not None:
            raise ValueError("--price needs --tokens (how many tokens to train on, e.g. --tokens 300B)")
        return None
    count = parse_amount(tokens)
    return lambda e: time_to_train(e, count, price)


def _plan_sweep(model, cluster, training, headroom, fixed, top, tokens, price, nodes, deadline, objective, as_json):
    from shardplan.planner import budget as b

    count = b.parse_amount(tokens) if tokens is not None else None
    deadline_s = b.parse_duration(deadline) if deadline else None
    objective = objective or ("cost" if deadline_s else "time")
    if (deadline_s or objective in ("time", "cost")) and count is None:
        raise ValueError(f"--nodes with objective {objective}{' and --deadline' if deadline_s else ''} needs --tokens "
                         "(e.g. --tokens 300B); or use --objective throughput")
    entries = b.sweep(model, cluster, training, b.parse_nodes(nodes), count, price, headroom, top=top, **fixed)
    chosen = b.choose(entries, objective, deadline_s)
    cheapest, fastest = b.cheapest(entries), b.fastest(entries)
    if as_json:
        _emit_json({**chosen.plan.to_dict(), "nodes": chosen.nodes, "objective": objective, "deadline_s": deadline_s,
                    "sweep": [x.to_dict() for x in entries], "chosen": chosen.to_dict(),
                    "cheapest": cheapest.to_dict() if cheapest else None, "fastest": fastest.to_dict()})
        return
    from shardplan.cli.plan_print import print_sweep

    print_sweep(entries, chosen, cheapest, fastest, _console())


def _plot_plan(result, model, cluster, training, headroom, fixed, path) -> None:
    from shardplan.launch.plots import plan_figure
    from shardplan.planner.search import check_constraints, run_search

    search = run_search(model, cluster, training, headroom, check_constraints(dict(fixed)))
    plan_figure(result, search, path)


@click.command()
@common_options
@layout_options(defaults=ESTIMATE_DEFAULTS)
@click.option("--batch", "batch_file", type=click.File("r"),
              help="JSON lines of requests ('-' = stdin); prints one result object per line.")
@calibration_option
def estimate(batch_file, calibration, **opts):
    """Memory per GPU and step time of one fixed layout (or of many: --batch).

    \b
    Examples:
      shardplan estimate --model gpt2-xl --cluster 1xH200 --zero 2 --micro-batch 16 --grad-accum 1
      shardplan estimate --model llama-2-70b --cluster 8x8xH100-80GB --tp 8 --pp 2 --zero 1 \\
          --micro-batch 1 --global-batch 256 --checkpointing full --json
      shardplan estimate --batch requests.jsonl > results.jsonl

    \b
    A --batch line: {"model": "gpt2-xl", "cluster": "1xH200",
      "layout": {"zero": 2, "micro_batch": 16, "grad_accum": 1},
      "overrides": {"layers": 24}, "training": {"seq": 1024, "precision": "bf16"}}
    Keys use the flags' names (dashes or underscores); what a line leaves out comes from the flags.
    For the Megatron engine "training" may also say how the Megatron-LM that ran attended and
    overlapped: "attention": "unfused", "overlap_grad_reduce": false, "tp_backward_overlap": false.
    A bad line prints {"error": ..., "line": N}; the exit code is then 2, after every line.
    """
    layout_opts = {k: opts.pop(k) for k in LAYOUT_FLAGS}
    if batch_file is not None:
        return _estimate_batch(batch_file, opts, layout_opts, calibration)
    from shardplan.planner.evaluate import evaluate

    model, cluster, training, headroom = inputs_from_options(opts)
    cluster = calibrated(cluster, calibration)
    with PlanError.boundary():
        layout = build_layout(cluster, training, layout_opts)
        result = evaluate(model, cluster, layout, training, headroom=headroom)
    if opts["as_json"]:
        _emit_json(result.to_dict())
    else:
        from shardplan.cli.plan_print import estimate_summary

        estimate_summary(result, _console(), title="Estimate")


def _estimate_batch(stream, opts: dict, layout_opts: dict, calibration=None) -> None:
    import json

    from shardplan.planner.evaluate import evaluate

    failed, cache, total = 0, {}, 0
    profile = None
    if calibration:
        from shardplan.launch.calibration import read_profile

        with PlanError.boundary():
            profile = read_profile(calibration)
    for number, line in enumerate(stream, 1):
        if not line.strip():
            continue
        total += 1
        try:
            request = json.loads(line)
            model, cluster, training, headroom, layout = resolve_request(request, opts, layout_opts, cache)
            cluster = profile.apply(cluster) if profile else cluster
            out = evaluate(model, cluster, layout, training, headroom=headroom).to_dict()
        except (ValueError, TypeError) as err:  # json's decode error is a ValueError
            failed += 1
            out = {"error": str(err).splitlines()[0], "line": number}
        click.echo(json.dumps(out))
    if failed:
        raise PlanError(f"{failed} of {total} requests failed; see the objects with \"error\" (their \"line\")")


@click.command()
@common_options
@calibration_option
@budget_options
@plot_option
def compare(calibration, tokens, price, plot, **opts):
    """The parallelization methods side by side for MODEL on CLUSTER.

    \b
    Rows: data parallel (ZeRO-0), ZeRO-1, ZeRO-2, ZeRO-3 (tp=pp=1), tensor parallel (the largest tp a
    node and the heads allow, dp over the rest), pipeline parallel (the largest pp the layers and the
    GPUs allow, dp over the rest), hybrid (the best layout using two or more of dp, tp, pp). Each at
    its best micro-batch and checkpointing, with memory per GPU, step time, tokens/s, MFU,
    communication per GPU per step and pipeline bubble. Methods that cannot exist (tp=1 only) are left out.

    \b
    Examples:
      shardplan compare --model llama-2-70b --cluster 8x8xH100-80GB
      shardplan compare --model gpt2-xl --cluster 1xH200 --global-batch 64 --json
      shardplan compare --model llama-3-8b --cluster 4x8xH100 --tokens 300B --price 2.49 --plot methods.svg
    """
    from shardplan.planner.compare import compare as compare_methods

    model, cluster, training, headroom = inputs_from_options(opts)
    cluster = calibrated(cluster, calibration)
    with PlanError.boundary():
        budget = _budget(tokens, price)
        rows = compare_methods(model, cluster, training, headroom=headroom)
        if rows and plot:
            from shardplan.launch.plots import compare_figure
            compare_figure(rows, plot)
    if not rows:
        raise PlanError(f"no method has a layout for global batch {training.global_batch} on {cluster.spec}; "
                        "use a multiple of the GPU count")
    if opts["as_json"]:
        _emit_json([{"method": name, **e.to_dict(), **(budget(e) if budget else {})} for name, e in rows])
    else:
        from shardplan.cli.plan_print import print_compare

        print_compare(rows, _console(150 if budget else 120), budget)
    if plot:
        click.echo(f"wrote {plot}", err=opts["as_json"])

