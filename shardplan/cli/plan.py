"""`shardplan plan | estimate | compare`: the planner on the command line.

Start-up stays light (the plan of a 1T model on 3072 GPUs must finish in under a second including the
interpreter): json and rich are imported only by the paths that print with them.
"""
from __future__ import annotations

import click

from shardplan.cli.options import ESTIMATE_DEFAULTS, PlanError, common_options, inputs_from_options, layout_options
from shardplan.launch.inputs import build_layout, resolve_request
from shardplan.planner.layout import LAYOUT_FLAGS, field_name, flag_name
from shardplan.planner.search import SEARCHED_FIELDS

SEARCHABLE = tuple(flag_name(f) for f in SEARCHED_FIELDS)  # the layout flags `plan` accepts


def _emit_json(obj) -> None:
    import json

    click.echo(json.dumps(obj, indent=2))


def _console():
    from rich.console import Console

    console = Console(highlight=False)
    if not console.is_terminal:      # piped or captured: wide enough for the tables, no wrapping mid-row
        console = Console(highlight=False, width=120)
    return console


@click.command()
@common_options
@layout_options(SEARCHABLE, notes={"checkpointing": " (searched: none, full)",
                                   "offload": " (default: only when nothing fits without it)"})
@click.option("--top", type=click.IntRange(0, 100), default=5, show_default=True,
              help="How many next-best alternatives (one per distinct zero/tp/pp/ckpt/offload family).")
def plan(top, **opts):
    """Search every layout of MODEL on CLUSTER, rank what fits by predicted tokens/s, explain the winner.

    \b
    Examples:
      shardplan plan --model gpt2-xl --cluster 2x8xA100-80GB --global-batch 512
      shardplan plan --model ./my-model/config.json --cluster auto
      shardplan plan --model llama-3-70b --cluster 8x8xH100-80GB --global-batch-tokens 4M --json
      shardplan plan --model gpt2-xl --cluster 1xH200 --zero 2 --headroom 5%

    \b
    The search: dp·tp·pp uses every GPU; tp divides the GPUs of a node and the (kv) heads; pp divides
    the layers; ZeRO 0-3 (0-1 with pp>1); micro-batch divides the per-replica batch; checkpointing
    none/full; CPU offload only when nothing fits without it. A layout fits when its peak memory is at
    most capacity·(1-headroom). Default global batch: world·2^k sequences, the smallest with >= 0.5M tokens
    (8 sequences per process on CPU processes).
    Exit code 2 when nothing fits, with what would (more GPUs, offload, a larger card).
    """
    from shardplan.planner.plan import plan as search_plan

    fixed = {field_name(k): opts.pop(k) for k in SEARCHABLE}
    model, cluster, training, headroom = inputs_from_options(opts)
    with PlanError.boundary():
        result = search_plan(model, cluster, training, headroom=headroom, top=top, **fixed)
    if opts["as_json"]:
        _emit_json(result.to_dict())
    else:
        from shardplan.cli.plan_print import print_plan

        print_plan(result, _console())


@click.command()
@common_options
@layout_options(defaults=ESTIMATE_DEFAULTS)
@click.option("--batch", "batch_file", type=click.File("r"),
              help="JSON lines of requests ('-' = stdin); prints one result object per line.")
def estimate(batch_file, **opts):
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
    A bad line prints {"error": ..., "line": N}; the exit code is then 2, after every line.
    """
    layout_opts = {k: opts.pop(k) for k in LAYOUT_FLAGS}
    if batch_file is not None:
        return _estimate_batch(batch_file, opts, layout_opts)
    from shardplan.planner.evaluate import evaluate

    model, cluster, training, headroom = inputs_from_options(opts)
    with PlanError.boundary():
        layout = build_layout(cluster, training, layout_opts)
        result = evaluate(model, cluster, layout, training, headroom=headroom)
    if opts["as_json"]:
        _emit_json(result.to_dict())
    else:
        from shardplan.cli.plan_print import estimate_summary

        estimate_summary(result, _console(), title="Estimate")


def _estimate_batch(stream, opts: dict, layout_opts: dict) -> None:
    import json

    from shardplan.planner.evaluate import evaluate

    failed, cache, total = 0, {}, 0
    for number, line in enumerate(stream, 1):
        if not line.strip():
            continue
        total += 1
        try:
            request = json.loads(line)
            model, cluster, training, headroom, layout = resolve_request(request, opts, layout_opts, cache)
            out = evaluate(model, cluster, layout, training, headroom=headroom).to_dict()
        except (ValueError, TypeError) as err:  # json's decode error is a ValueError
            failed += 1
            out = {"error": str(err).splitlines()[0], "line": number}
        click.echo(json.dumps(out))
    if failed:
        raise PlanError(f"{failed} of {total} requests failed; see the objects with \"error\" (their \"line\")")


@click.command()
@common_options
def compare(**opts):
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
    """
    from shardplan.planner.compare import compare as compare_methods

    model, cluster, training, headroom = inputs_from_options(opts)
    with PlanError.boundary():
        rows = compare_methods(model, cluster, training, headroom=headroom)
    if not rows:
        raise PlanError(f"no method has a layout for global batch {training.global_batch} on {cluster.spec}; "
                        "use a multiple of the GPU count")
    if opts["as_json"]:
        _emit_json([{"method": name, **e.to_dict()} for name, e in rows])
    else:
        from shardplan.cli.plan_print import print_compare

        print_compare(rows, _console())

