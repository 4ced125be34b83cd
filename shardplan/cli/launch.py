"""`shardplan launch`, `status`, `logs`, `cancel`. Heavy imports happen inside the commands."""
from __future__ import annotations

import json
import shlex
import sys
import time
from pathlib import Path

import click


SCHEDULERS = ("local", "deepspeed", "torchrun", "slurm")
# plan + render + launch without --steps: a demo that shows the loss falling in about a minute on 2 CPU cores.
ONE_SHOT_STEPS = 60


def _fail(message: str, code: int = 2) -> None:
    click.echo(f"error: {message}", err=True)
    sys.exit(code)


@click.command(context_settings={"ignore_unknown_options": False})
@click.argument("run_dir", required=False, type=click.Path(file_okay=False, path_type=Path))
@click.argument("train_extra", nargs=-1, type=click.UNPROCESSED)
@click.option("--scheduler", type=click.Choice(SCHEDULERS), default="local", show_default=True,
              help="local: deepspeed launcher on this node; deepspeed: multi-node with the hostfile; "
                   "torchrun: this node's torchrun; slurm: sbatch job.sbatch.")
@click.option("--dry-run", is_flag=True, help="Print exactly what would run (command and environment); start nothing.")
@click.option("--resume", is_flag=True, help="Continue from the last checkpoint in RUN_DIR/checkpoints.")
@click.option("--steps", type=click.IntRange(min=1),
              help=f"Optimizer steps for the training program (with --model: default {ONE_SHOT_STEPS}).")
@click.option("--follow", is_flag=True, help="slurm: wait for the job, show progress, exit with its result.")
@click.option("--master-port", type=click.IntRange(1, 65535),
              help="Rendezvous port; must be free (default 29500; slurm: derived from the job id).")
@click.option("--master-addr", help="Rendezvous host (default: 127.0.0.1, or the first host of the hostfile).")
@click.option("--node-rank", type=click.IntRange(min=0),
              help="deepspeed/torchrun on several nodes: run this on every node with its index "
                   "(deepspeed: --no_ssh, no pdsh needed).")
@click.option("--partition", "-p", help="slurm: the partition to submit to (default: the cluster's default).")
@click.option("--verbose", "-v", is_flag=True, help="Also print the launcher's own output.")
@click.option("--json", "as_json", is_flag=True, help="With --dry-run: the command as JSON.")
@click.option("--model", help="No RUN_DIR: plan + render + launch this model in one go (e.g. gpt2-demo).")
@click.option("--cluster", default="auto", show_default=True, help="With --model: the cluster to plan for.")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path),
              help="With --model: the run directory to render (default runs/<model>-<timestamp>).")
@click.option("--force", is_flag=True, help="With --model: replace a non-empty --out directory.")
def launch(run_dir, train_extra, scheduler, dry_run, resume, steps, follow, master_port, master_addr, node_rank,
           partition, verbose, as_json, model, cluster, out, force):
    """Start a rendered run directory's training job, locally or through SLURM.

    Preflight first (exit 2 with one clear message when the run directory, its ds_config, the inventory,
    the hostfile or the master port is wrong); then the job runs with per-rank logs under RUN_DIR/logs/,
    its record in RUN_DIR/job.json, and an exit code that mirrors its outcome. When a rank dies the job
    ends at once and the message names the rank and its log.

    \b
    Examples:
      shardplan launch runs/gpt2xl --dry-run                 # what would run, nothing started
      shardplan launch runs/gpt2xl                           # deepspeed launcher on this node
      shardplan launch runs/gpt2xl --scheduler torchrun
      shardplan launch runs/2node --scheduler deepspeed                  # pdsh to the hostfile's hosts
      shardplan launch runs/2node --scheduler deepspeed --node-rank 1    # on node 1 itself (no ssh)
      shardplan launch runs/gpt2xl --scheduler slurm --follow
      shardplan launch runs/gpt2xl --resume                  # continue from the last checkpoint
      shardplan launch runs/gpt2xl -- --checkpoint-every 50  # after --: for the training program
      shardplan launch --model gpt2-demo --cluster auto --out runs/demo --force --steps 40
    """
    from shardplan.launch.run import preflight as pf
    from shardplan.launch.run import launcher as runner
    from shardplan.launch.run.slurm import SlurmError

    if run_dir is None:
        if not model:
            _fail("give a RUN_DIR (rendered by `shardplan render`), or --model NAME to plan + render + launch")
        run_dir = _render_one_shot(model, cluster, out, force, steps, dry_run)
    elif model or out:
        _fail("--model/--out render a new run directory: give them without RUN_DIR, or drop them")
    if follow and scheduler != "slurm":
        click.echo("note: --follow only matters for --scheduler slurm; local launches always wait", err=True)
    train_args = (("--steps", str(steps)) if steps else ()) + tuple(train_extra)
    if resume and not train_args:
        train_args = _last_train_args(run_dir)
    train_args += ("--resume",) if resume else ()
    try:
        if node_rank is not None and scheduler not in ("deepspeed", "torchrun"):
            raise ValueError(f"--node-rank is for --scheduler deepspeed or torchrun, not {scheduler}")
        refused = None
        try:
            run = pf.preflight(run_dir, scheduler, master_port=master_port, master_addr=master_addr,
                               partition=partition, resume=resume, node_rank=node_rank,
                               warn=lambda message: click.echo(f"warning: {message}", err=True))
        except pf.PreflightError as e:
            if not dry_run:
                raise
            # A dry run still shows the command (e.g. on a login node without the GPUs), then the refusal.
            refused, run = e, pf.load_run_dir(run_dir)
        cmd = runner.build_command(run, scheduler, master_port=master_port, master_addr=master_addr,
                                   train_args=train_args, partition=partition, node_rank=node_rank)
    except ValueError as e:  # PreflightError, and bad values the command builders reject
        _fail(str(e))
    if not dry_run:
        try:
            runner.check_not_running(run.path, node_rank)
        except (runner.LaunchError, SlurmError) as e:
            _fail(str(e))
    if dry_run:
        info = runner.describe(run, scheduler, cmd)
        if refused is not None:
            info["preflight"] = str(refused)
        if as_json:
            click.echo(json.dumps(info, indent=2))
        else:
            runner.print_dry_run(info, click.echo)
        if refused is not None:
            _fail(f"preflight would refuse it here: {refused}")
        return
    if scheduler in ("deepspeed", "torchrun") and run.nodes > 1 and node_rank is None:
        if scheduler == "torchrun":
            click.echo(f"note: torchrun starts node 0 here; run `shardplan launch {run.path} --scheduler torchrun "
                       f"--node-rank N` on the other {run.nodes - 1} node(s)", err=True)
    try:
        if scheduler == "slurm":
            code = runner.run_slurm(run, cmd, resume=resume, follow=follow, echo=click.echo, train_args=train_args)
        else:
            code = runner.run_local(run, scheduler, cmd, resume=resume, echo=click.echo, verbose=verbose,
                                    train_args=train_args, node_rank=node_rank)
    except (SlurmError, runner.LaunchError, OSError) as e:
        _fail(str(e), 1)
    sys.exit(code)


def _last_train_args(run_dir: Path) -> tuple[str, ...]:
    """--resume without new arguments continues with the last launch's (its --steps, --checkpoint-every)."""
    from shardplan.launch.run import jobs

    try:
        last = jobs.read_job(run_dir)
    except ValueError:
        return ()
    args = tuple(a for a in (last.train_args if last else ()) if a != "--resume")
    if args:
        click.echo(f"resuming with the last launch's training arguments: {' '.join(args)}", err=True)
    return args


def _render_one_shot(model: str, cluster: str, out: Path | None, force: bool, steps: int | None,
                     dry_run: bool) -> Path:
    """plan + render as `shardplan render --model M --cluster C --out O --steps N` does (same function)."""
    from shardplan.launch import rundir

    out = out or Path("runs") / f"{model}-{time.strftime('%Y%m%d-%H%M%S')}"
    if dry_run and not (out.is_dir() and (out / rundir.PLAN).is_file()):
        _fail(f"--dry-run with --model would have to render {out} first; render it "
              f"(`shardplan render --model {model} --cluster {cluster} --out {out}`) and dry-run that")
    if dry_run:
        return out
    from shardplan.cli.render import print_rendered, render_run_dir
    from shardplan.launch.render import RenderOptions, Schedule

    steps = steps or ONE_SHOT_STEPS  # the LR schedule's length too
    args = ["render", "--model", model, "--cluster", cluster, "--out", str(out)] + (["--force"] if force else [])
    args += ["--steps", str(steps)]
    click.echo(f"$ shardplan {' '.join(args)}")
    options = RenderOptions(out=out, force=force, schedule=Schedule(steps=steps), command=shlex.join(["shardplan", *args]))
    try:
        result, est = render_run_dir({"model": model, "cluster": cluster}, {}, options)
    except click.ClickException as e:
        e.show()
        sys.exit(2)
    print_rendered(result, est, as_json=False)
    return out


@click.command()
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Machine-readable state.")
def status(run_dir, as_json):
    """The state of a run directory's last launch: RUNNING, COMPLETED, FAILED, CANCELLED, ...

    SLURM jobs: `scontrol show job` while slurmctld remembers the job, then `sacct` (needs accounting);
    local jobs: the launcher's process (its pid in RUN_DIR/job.json) and the outcome it recorded.
    Exit code 0 when the state is known.

    \b
    Examples:
      shardplan status runs/gpt2xl
      shardplan status runs/gpt2xl --json | jq .state
    """
    from shardplan.launch.run import launcher as runner
    from shardplan.launch.run.slurm import SlurmError

    try:
        info = runner.status(run_dir.resolve())
    except (runner.LaunchError, SlurmError, ValueError) as e:
        _fail(str(e), 1)
    if as_json:
        click.echo(json.dumps(info, indent=2))
        return
    ident = f"job {info['job_id']}" if info.get("job_id") else f"pid {info.get('pid')}"
    click.echo(f"{info['state']}  ({info['scheduler']} {ident}, {info['elapsed_s']:.0f}s, state from {info['source']})")
    for key in ("exit_code", "nodes", "last_step", "last_loss", "failed_rank", "failed_log", "failure", "reason",
                "note"):
        if info.get(key) not in (None, ""):
            click.echo(f"  {key}: {info[key]}")


@click.command()
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--rank", type=click.IntRange(min=0), help="This rank's own log (default: the launcher / SLURM output).")
@click.option("--follow", "-f", is_flag=True, help="Keep printing new lines until the job ends.")
@click.option("--lines", "-n", type=click.IntRange(min=1), default=40, show_default=True)
def logs(run_dir, rank, follow, lines):
    """Show (or follow) a run's logs from RUN_DIR/logs/.

    \b
    Examples:
      shardplan logs runs/gpt2xl                 # the launcher's output (SLURM: every node's output)
      shardplan logs runs/gpt2xl --rank 1        # rank 1's own log
      shardplan logs runs/gpt2xl --follow
    """
    from shardplan.launch.run import jobs
    from shardplan.launch.run import logs as logview

    run_dir = run_dir.resolve()
    job = jobs.read_job(run_dir)

    def paths() -> list[Path]:
        if rank is None:
            return logview.main_logs(run_dir, job)
        try:
            return [logview.rank_log(run_dir, job, rank)]
        except FileNotFoundError:
            return []

    found = paths()
    if not found and not (follow and logview.job_running(run_dir)):
        if rank is not None:
            try:
                logview.rank_log(run_dir, job, rank)
            except FileNotFoundError as e:
                _fail(str(e), 1)
        _fail(f"no logs under {run_dir / 'logs'} yet; launch the run first", 1)
    if follow:
        logview.follow(paths, click.echo, lambda: logview.job_running(run_dir))
    else:
        logview.show(found, click.echo, lines)


@click.command()
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
def cancel(run_dir):
    """Stop a run's job: scancel for SLURM, SIGTERM to the local launcher's process group (then SIGKILL).

    \b
    Example:
      shardplan cancel runs/gpt2xl
    """
    from shardplan.launch.run import launcher as runner
    from shardplan.launch.run.slurm import SlurmError

    try:
        click.echo(runner.cancel(run_dir.resolve()))
    except (runner.LaunchError, SlurmError, ValueError) as e:
        _fail(str(e), 1)
