"""Render a plan into a run directory of runnable artifacts, all from the Jinja2 templates in templates/.

Every artifact is rendered from typed values with StrictUndefined; ds_config.json is parsed back and
validated before anything is written; the directory is written atomically (a temporary sibling, then a
rename), so a failure never leaves a half-written run directory behind.
"""
from __future__ import annotations

import importlib.resources
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from shardplan import __version__
from shardplan.planner.cluster import GiB
from shardplan.planner.estimate import Estimate

from ..commands import (Command, RunSpec, ShellVar, deepspeed_command, sbatch_command, shell_join, shell_quote,
                       slurm_filename, srun_torchrun_line, torchrun_command)
from .. import rundir
from .ds_config import DsConfigContext, Schedule, ds_config_context
from .megatron import megatron_args, megatron_env, megatron_refusal
from .speed import program_estimate
from .hf import hf_files

_SLURM_TIME = re.compile(r"(\d+-)?\d+(:\d{1,2}){0,2}\Z|(\d+-)?\d+:\d{1,2}:\d{1,2}\Z")


class RenderError(ValueError):
    """Bad input or an artifact that failed validation; the message names the value and the fix."""


@dataclass(frozen=True)
class RenderOptions:
    """Everything about a run directory that is not in the plan."""

    out: Path
    force: bool = False
    schedule: Schedule = field(default_factory=Schedule)
    hosts: tuple[str, ...] = ()        # overrides the cluster's hosts (hostfile, multi-node deepspeed)
    master_port: int = 29500
    partition: str = ""                # SLURM
    time: str = "01:00:00"             # SLURM wall-clock limit
    account: str = ""                  # SLURM
    cpus_per_task: int = 0             # SLURM; 0 = one core per CPU process, 8 per GPU
    data: str = ""                     # training data file for the training program ("" = its built-in corpus)
    tokenizer: str = ""
    python: str = sys.executable       # interpreter written into the scripts (user output: a machine path is fine)
    command: str = ""                  # the shardplan command line that produced this render

    def __post_init__(self) -> None:
        if self.time and not _SLURM_TIME.match(self.time):
            raise RenderError(f"time({self.time!r}) must be a SLURM time limit such as 01:30:00 or 2-00:00:00")
        for name in ("partition", "account"):
            value = getattr(self, name)
            if value and not re.fullmatch(r"[A-Za-z0-9_.,+-]+", value):
                raise RenderError(f"{name}({value!r}) must be a SLURM name: letters, digits, _ . , + -")
        if not isinstance(self.cpus_per_task, int) or self.cpus_per_task < 0:
            raise RenderError(f"cpus_per_task({self.cpus_per_task!r}) must be a positive integer")


@dataclass(frozen=True)
class RenderResult:
    run_dir: Path
    files: tuple[str, ...]
    estimate: Estimate


def _run_spec(est: Estimate, opts: RenderOptions, run_dir: Path) -> RunSpec:
    cluster = est.cluster
    hosts = tuple(opts.hosts) or tuple(cluster.hosts)
    if hosts and len(hosts) != cluster.nodes:
        raise RenderError(f"--hosts lists {len(hosts)} hosts ({', '.join(hosts)}) for a cluster of "
                          f"{cluster.nodes} nodes; give one host per node")
    train_args: tuple[str, ...] = ("--steps", str(opts.schedule.steps))
    if opts.data:
        train_args += ("--data", str(Path(opts.data).expanduser().resolve()))
    if opts.tokenizer:
        train_args += ("--tokenizer", str(Path(opts.tokenizer).expanduser().resolve()))
    try:
        return RunSpec(run_dir=str(run_dir), nodes=cluster.nodes, procs_per_node=cluster.gpus_per_node, hosts=hosts,
                       master_addr=hosts[0] if hosts else "127.0.0.1", master_port=opts.master_port,
                       cpu=est.cluster.gpu.is_cpu, python=opts.python, train_args=train_args,
                       threads_per_rank=max(1, _cpus_per_node(est, opts) // cluster.gpus_per_node),
                       megatron_layers=est.layout.tp > 1 and (est.layout.pp > 1 or est.layout.sequence_parallel))
    except ValueError as e:
        raise RenderError(str(e)) from None


def _cpus_per_node(est: Estimate, opts: RenderOptions) -> int:
    """Cores one node gives the job: --cpus-per-task, else 8 per GPU or 1 per CPU process (job.sbatch asks
    SLURM for this many; the launch scripts split it into one OpenMP pool per rank)."""
    return opts.cpus_per_task or est.cluster.gpus_per_node * (1 if est.cluster.gpu.is_cpu else 8)


def _environment():
    import jinja2

    templates = importlib.resources.files("shardplan.templates")  # package data, installed or editable
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(templates)),
                             undefined=jinja2.StrictUndefined, keep_trailing_newline=True, autoescape=False)
    env.filters.update(q=shell_quote, shjoin=shell_join, sbatch=_sbatch_value, comment=_comment)
    return env


def _comment(text: str) -> str:
    """Text safe inside a '#' comment line: a newline would end the comment and start code."""
    return str(text).replace("\r", "\\r").replace("\n", "\\n")


def _sbatch_value(value: str) -> str:
    """A value on an #SBATCH line: sbatch reads it without a shell, honouring "..." and backslash escapes
    (src/sbatch/opt.c, _get_argument), so quote it that way; '%' starts a filename pattern, '%%' is '%'."""
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


def _script_lines(cmd: Command, indent: str = "  ") -> str:
    """argv as a shell command over several lines (an option and its value on one line), every word quoted."""
    argv, words = cmd.argv, [shell_quote(a) for a in cmd.argv]
    head = 2 if len(argv) > 1 and argv[1] == "-u" else 1  # the interpreter and -u
    lines, i = [" ".join(words[:head])], head
    while i < len(words):
        take = 2 if argv[i].startswith("-") and i + 1 < len(argv) and not argv[i + 1].startswith("-") else 1
        lines.append(indent + " ".join(words[i:i + take]))
        i += take
    return " \\\n".join(lines)


def render_files(plan: dict, est: Estimate, opts: RenderOptions, run_dir: Path) -> dict[str, str]:
    """All artifacts as {file name: text}, validated; nothing is written."""
    if est.training.engine == "megatron":
        run = _run_spec(est, opts, run_dir)
        return _megatron_files(plan, est, opts, run, _environment())
    _check_program_runs(est, plan)
    est = program_estimate(est)   # compile and the fused step where the program will use them
    run = _run_spec(est, opts, run_dir)
    env = _environment()
    ds_ctx = ds_config_context(est, opts.schedule)
    ds_text = env.get_template("ds_config.json.j2").render(c=ds_ctx)
    ds_config = _parse_and_validate(ds_text, est, ds_ctx)
    cpu = est.cluster.gpu.is_cpu
    # Several nodes without known hosts: launch_torchrun.sh takes MASTER_ADDR (and NODE_RANK) from the shell.
    torchrun_addr = ShellVar("MASTER_ADDR") if run.nodes > 1 and not run.hosts else run.master_addr
    gpus_per_node = est.cluster.gpus_per_node
    common = _common(plan, est, opts, run)
    files: dict[str, str] = {rundir.PLAN: _plan_json(plan, est, opts, run)}
    files[rundir.DS_CONFIG] = json.dumps(ds_config, indent=2) + "\n"
    if run.hosts:
        files[rundir.HOSTFILE] = env.get_template("hostfile.j2").render(hosts=run.hosts, slots=gpus_per_node,
                                                                   version=__version__)
    files[rundir.LAUNCH_SH] = env.get_template("launch.sh.j2").render(
        cmd=deepspeed_command(run) if run.nodes == 1 or run.hosts else None, **common)
    files[rundir.LAUNCH_TORCHRUN_SH] = env.get_template("launch_torchrun.sh.j2").render(
        cmd=torchrun_command(run, node_rank=0 if run.nodes == 1 else ShellVar("NODE_RANK"),
                             master_addr=torchrun_addr), **common)
    cpus = _cpus_per_node(est, opts)
    files[rundir.JOB_SBATCH] = env.get_template("job.sbatch.j2").render(
        srun=srun_torchrun_line(run), sbatch=sbatch_command(run.run_dir), cpus_per_task=cpus,
        partition=opts.partition, time=opts.time, account=opts.account,
        output=slurm_filename(run.log_dir) + "/slurm-%j.out", job_name=f"shardplan-{est.model.name}", **common)
    if megatron_refusal(est) is None:   # the same layout for Megatron-LM, when it can run it exactly
        files[rundir.MEGATRON_ARGS] = env.get_template("megatron_args.sh.j2").render(
            megatron_args=megatron_args(est, opts.schedule), megatron_env=megatron_env(est), **common)
    files.update(hf_files(env, plan, est, ds_config, opts.schedule, run, common))  # hf/ and model/config.json
    files[rundir.README] = env.get_template("README.md.j2").render(
        files=sorted(files) + [rundir.README], ds=ds_ctx, **common)
    _check_scripts(files)
    return files


def _check_program_runs(est: Estimate, plan: dict) -> None:
    """What the DeepSpeed engine's planner accepts but shardplan's own program does not run (yet)."""
    lay = est.layout
    ulysses = f"context parallelism (cp {lay.cp}, DeepSpeed-Ulysses)"
    missing = [what for what, on in ((f"{ulysses} with tensor parallelism (tp {lay.tp})", lay.cp > 1 and lay.tp > 1),
                                     (f"{ulysses} on a Hugging Face model",
                                      lay.cp > 1 and rundir.hf_model(plan) is not None),
                                     (f"uneven pipeline stages {list(lay.pp_layers or ())}",
                                      len(set(lay.stage_layers(est.model.n_layers))) > 1)) if on]
    if missing:
        raise RenderError(f"shardplan's training program does not run {' or '.join(missing)}; render with "
                          "--engine megatron for Megatron-LM, or plan without it")


def _common(plan: dict, est: Estimate, opts: RenderOptions, run: RunSpec) -> dict:
    """The values every template renders from."""
    return dict(version=__version__, command=opts.command or "shardplan render", run=run, est=est,
                model=est.model, layout=est.layout, cluster=est.cluster, training=est.training,
                cpu=est.cluster.gpu.is_cpu, schedule=opts.schedule, lines=_script_lines,
                gib=lambda b: f"{b / GiB:.2f}", reasons=tuple(plan.get("reasons", ())))


def _plan_json(plan: dict, est: Estimate, opts: RenderOptions, run: RunSpec) -> str:
    plan_out = {"best": est.to_dict(), **{k: v for k, v in plan.items() if k != "best"}}
    plan_out["command"] = opts.command or "shardplan render"
    plan_out["shardplan_version"] = __version__
    plan_out["launch"] = run.to_dict()  # the RunSpec the scripts were rendered from (RunSpec.from_dict)
    return json.dumps(plan_out, indent=2) + "\n"


def _megatron_files(plan: dict, est: Estimate, opts: RenderOptions, run: RunSpec, env) -> dict[str, str]:
    """--engine megatron: plan.json, megatron_args.sh, launch_megatron.sh, job_megatron.sbatch and the README (no ds_config:
    Megatron-LM's pretrain_gpt.py takes arguments, and shardplan's DeepSpeed program does not run it)."""
    common = _common(plan, est, opts, run)
    files = {rundir.PLAN: _plan_json(plan, est, opts, run),
             rundir.MEGATRON_ARGS: env.get_template("megatron_args.sh.j2").render(
                 megatron_args=megatron_args(est, opts.schedule), megatron_env=megatron_env(est), **common),
             rundir.LAUNCH_MEGATRON: env.get_template("launch_megatron.sh.j2").render(**common),
             rundir.JOB_MEGATRON: env.get_template("job_megatron.sbatch.j2").render(
                 cpus_per_task=_cpus_per_node(est, opts), partition=opts.partition, time=opts.time,
                 account=opts.account, output=slurm_filename(run.log_dir) + "/slurm-%j.out",
                 slurm_log_dir=slurm_filename(run.log_dir), job_name=f"shardplan-{est.model.name}", **common)}
    files[rundir.README] = env.get_template("README.md.j2").render(files=sorted(files) + [rundir.README],
                                                                   ds=None, **common)
    _check_scripts(files)
    return files


def _check_scripts(files: dict[str, str]) -> None:
    for name in rundir.SCRIPTS:
        if name in files:
            _check_bash_syntax(name, files[name])


def _parse_and_validate(text: str, est: Estimate, ctx: DsConfigContext) -> dict:
    try:
        config = json.loads(text)
    except json.JSONDecodeError as e:
        raise RenderError(f"templates/ds_config.json.j2 rendered invalid JSON ({e}); this is a shardplan bug") from None
    if config["train_batch_size"] != config["train_micro_batch_size_per_gpu"] * config["gradient_accumulation_steps"] * est.layout.dp:
        raise RenderError("ds_config batch sizes do not satisfy train = micro × grad_accum × dp; this is a shardplan bug")
    from ..validate import validate_config

    # DeepSpeed's own parser too when it is installed (render runs without the [train] extra as well).
    use_deepspeed = importlib.util.find_spec("deepspeed") is not None
    result = validate_config(config, world_size=est.layout.world_size, tp=est.layout.tp, pp=est.layout.pp,
                             heads=est.model.n_heads, use_deepspeed=use_deepspeed)
    if result.errors:
        raise RenderError("rendered ds_config.json fails validation: " + "; ".join(str(p) for p in result.errors))
    return config


def _check_bash_syntax(name: str, text: str) -> None:
    if shutil.which("bash") is None:
        return
    result = subprocess.run(["bash", "-n"], input=text, capture_output=True, text=True)
    if result.returncode:
        raise RenderError(f"rendered {name} is not valid bash ({result.stderr.strip()}); this is a shardplan bug")


def write_run_dir(files: dict[str, str], run_dir: Path, *, force: bool) -> None:
    """Write files into run_dir atomically: a temporary sibling is filled, then renamed into place.

    An existing non-empty run_dir is kept unless force; with force it is renamed away, the new one renamed
    in, and only then the old one deleted.
    """
    run_dir = Path(run_dir)
    check_target(run_dir, force=force)
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{run_dir.name}.tmp-", dir=run_dir.parent))
    old: Path | None = None
    try:
        (tmp / rundir.LOG_DIR).mkdir()  # job.sbatch's --output lands here: SLURM does not create directories
        for name, text in files.items():
            path = tmp / name
            path.parent.mkdir(parents=True, exist_ok=True)   # hf/, model/
            path.write_text(text)
            if name.endswith(".sh") or name.endswith(".sbatch"):
                path.chmod(0o755)
        check_target(run_dir, force=force)
        if run_dir.exists():
            if any(run_dir.iterdir()):
                old = Path(tempfile.mkdtemp(prefix=f".{run_dir.name}.old-", dir=run_dir.parent))
                os.rename(run_dir, old / "run")
            else:
                run_dir.rmdir()
        os.rename(tmp, run_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if old is not None and not run_dir.exists():
            os.rename(old / "run", run_dir)  # put the previous run directory back
        raise
    finally:
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)


def check_target(run_dir: Path, *, force: bool) -> None:
    if run_dir.exists() and not run_dir.is_dir():
        raise RenderError(f"--out {run_dir} is a file; give a directory path")
    if run_dir.is_dir() and any(run_dir.iterdir()) and not force:
        raise RenderError(f"run directory {run_dir} is not empty; pass --force to replace it or choose another --out")


def render(plan: dict, est: Estimate, opts: RenderOptions) -> RenderResult:
    """Render and write the run directory for `est` (the plan's chosen or overridden layout)."""
    run_dir = Path(opts.out).expanduser().resolve()
    check_target(run_dir, force=opts.force)
    est = program_estimate(est)
    files = render_files(plan, est, opts, run_dir)
    write_run_dir(files, run_dir, force=opts.force)
    return RenderResult(run_dir, tuple(sorted(files)), est)
