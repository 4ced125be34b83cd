"""`shardplan render`: plan (or read a plan.json), then write a run directory of runnable artifacts."""
from __future__ import annotations

import json
import shlex
from pathlib import Path

import click

from shardplan.cli.options import PlanError, common_options, layout_options
from shardplan.planner.cluster import GiB
from shardplan.planner.layout import LAYOUT_FLAGS


def _command_line(ctx: click.Context) -> str:
    """The command that produced the render, for plan.json and the scripts' headers: the process's own
    argv when it is this command, else (called in-process) rebuilt from the options given, in declaration order."""
    import sys

    from click.core import ParameterSource

    if len(sys.argv) > 1 and sys.argv[1] == ctx.info_name:
        return shlex.join(["shardplan"] + sys.argv[1:])
    words = ["shardplan", "render"]
    for param in ctx.command.params:
        if not isinstance(param, click.Option) or ctx.get_parameter_source(param.name) != ParameterSource.COMMANDLINE:
            continue
        value = ctx.params[param.name]
        if param.is_flag:
            words += [param.opts[0]] if value else []
        else:
            words += [param.opts[0], str(getattr(value, "name", value))]
    return shlex.join(words)


def _read_hostfile(path) -> tuple[str, ...]:
    from shardplan.launch.inventory import read_hostfile  # the same parser --cluster auto and launch use

    try:
        return tuple(host for host, _ in read_hostfile(path))
    except ValueError as e:
        raise PlanError(f"--hostfile: {e}") from None


@click.command()
@click.option("--from", "from_plan", type=click.Path(exists=True, dir_okay=False),
              help="Start from this plan.json (of `plan --json` or a run directory) instead of planning.")
@common_options
@layout_options()
@click.option("--out", "-o", required=True, type=click.Path(file_okay=False), help="Run directory to write.")
@click.option("--force", is_flag=True, help="Replace a non-empty run directory.")
@click.option("--hosts", help="Comma-separated host names, one per node (hostfile, multi-node launchers).")
@click.option("--hostfile", type=click.Path(exists=True, dir_okay=False), help="Read the hosts from a DeepSpeed/MPI hostfile.")
@click.option("--partition", default="", help="SLURM partition.")
@click.option("--time", "time_limit", default="01:00:00", show_default=True, help="SLURM time limit.")
@click.option("--account", default="", help="SLURM account.")
@click.option("--cpus-per-task", type=click.IntRange(1), help="SLURM CPUs per node task (default: 8 per GPU, 1 per CPU process).")
@click.option("--steps", type=click.IntRange(1), default=1000, show_default=True, help="Optimizer steps (LR schedule length).")
@click.option("--lr", type=float, default=6e-4, show_default=True, help="Peak learning rate.")
@click.option("--data", type=click.Path(exists=True), help="Training text for the training program (default: its built-in corpus).")
@click.option("--tokenizer", type=click.Path(exists=True), help="Tokenizer directory for the training program.")
@click.option("--master-port", type=click.IntRange(1, 65535), default=29500, show_default=True, help="Rendezvous port.")
@click.pass_context
def render(ctx, from_plan, out, force, hosts, hostfile, partition, time_limit, account, cpus_per_task, steps, lr,
           data, tokenizer, master_port, as_json, **opts):
    """Write a run directory: plan.json, ds_config.json, launch scripts, job.sbatch, Megatron arguments, README.

    \b
    Examples:
      shardplan render --model gpt2-xl --cluster 2x8xA100-80GB --global-batch 512 --out runs/gpt2xl
      shardplan render --from runs/gpt2xl/plan.json --zero 1 --out runs/gpt2xl-z1   # override the plan
      shardplan render --model gpt2-demo --cluster auto --steps 200 --out runs/demo --force
      shardplan render --model llama-3-8b --cluster 4x8xH100-80GB --hosts n1,n2,n3,n4 --partition gpu --out runs/l8

    Layout flags (--dp --tp --pp --zero --micro-batch --grad-accum --checkpointing --offload) fix that
    choice and re-evaluate. Every file is rendered from templates/, the ds_config is validated (schema,
    cross-field rules, DeepSpeed's parser) before anything is written, and the directory appears atomically.
    """
    from shardplan.launch.render import RenderOptions, Schedule

    layout_flags = {k: opts.pop(k) for k in LAYOUT_FLAGS}
    if hosts and hostfile:
        raise PlanError("give --hosts or --hostfile, not both")
    host_list = tuple(h.strip() for h in hosts.split(",") if h.strip()) if hosts else ()
    if hostfile:
        host_list = _read_hostfile(Path(hostfile))
    given = frozenset(name for name in ctx.params if ctx.get_parameter_source(name).name == "COMMANDLINE")
    with PlanError.boundary():
        options = RenderOptions(out=Path(out), force=force, schedule=Schedule(steps=steps, lr=lr), hosts=host_list,
                                master_port=master_port, partition=partition, time=time_limit, account=account,
                                cpus_per_task=cpus_per_task or 0, data=data or "", tokenizer=tokenizer or "",
                                command=_command_line(ctx))
    result, est = render_run_dir(opts, layout_flags, options, from_plan=from_plan, given=given)
    print_rendered(result, est, as_json)


def render_run_dir(opts: dict, layout_flags: dict, options, *, from_plan=None, given: frozenset = frozenset()):
    """Plan (or read a plan.json, with the layout flags fixed) and write the run directory.

    What `render` and `launch --model` both do. opts: the common options' values (what is missing takes
    its default); layout_flags: flag -> value, None = not fixed. Returns (RenderResult, Estimate); PlanError
    (exit 2) on bad input. Warns on stderr when the chosen layout is predicted not to fit."""
    from shardplan.launch.render import RenderError, render
    from shardplan.launch.render.choose import choose_estimate

    with PlanError.boundary():
        plan_dict, est = choose_estimate(opts, layout_flags, from_plan=from_plan, given=given)
        try:
            result = render(plan_dict, est, options)
        except RenderError as e:
            raise PlanError(str(e)) from None
    if not est.fits:
        click.echo(f"warning: the chosen layout is predicted not to fit: {est.memory.peak_bytes / GiB:.1f} GiB "
                   f"peak of {est.memory.capacity_bytes / GiB:.1f} GiB per GPU", err=True)
    return result, est


def print_rendered(result, est, as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps({"run_dir": str(result.run_dir), "files": list(result.files),
                               "layout": est.layout.to_dict(), "fits": est.fits}, indent=2))
        return
    lay = est.layout
    click.echo(f"{result.run_dir}: {est.model.name} on {est.cluster.spec}, dp {lay.dp} × tp {lay.tp} × pp {lay.pp}, "
               f"ZeRO-{int(lay.zero_stage)}, micro-batch {lay.micro_batch} × grad-accum {lay.grad_accum}")
    click.echo("  wrote " + ", ".join(result.files))
    if est.training.engine == "megatron":
        run = shlex.quote(str(result.run_dir))
        click.echo(f"  next: shardplan validate {run} --megatron-lm <Megatron-LM checkout>; then "
                   f"MEGATRON_LM=<checkout> bash {run}/launch_megatron.sh --data-path ... (or sbatch "
                   f"{run}/job_megatron.sbatch)")
        return
    click.echo(f"  next: shardplan launch {shlex.quote(str(result.run_dir))} --dry-run")
