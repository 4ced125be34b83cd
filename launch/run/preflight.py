"""Checks before anything starts: one clear message per failure (the CLI exits 2), naming the value and the fix.

A failed preflight starts no process and changes no file. The checks, in order: the run directory and its
files; ds_config.json validates against the plan's world size; the inventory (this machine, the hostfile,
or the SLURM partition) has the world size the plan needs; hostfile hosts resolve; the master port is free.
"""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from shardplan.planner.layout import Layout

from .. import inventory, rundir
from ..commands import DEFAULT_MASTER_PORT, RunSpec


class PreflightError(ValueError):
    """A launch that must not start; the message names the value and the fix."""


@dataclass(frozen=True)
class RunDir:
    """What a rendered run directory says about the job it holds."""

    path: Path
    plan: dict
    ds_config: dict
    nodes: int
    procs_per_node: int
    hosts: tuple[str, ...]
    cpu: bool                 # planned for CPU processes (no GPU): gloo + DS_ACCELERATOR=cpu

    @property
    def world_size(self) -> int:
        return self.nodes * self.procs_per_node

    @property
    def layout(self) -> Layout:
        return rundir.plan_layout(self.plan, self.path)  # validated in load_run_dir

    def run_spec(self, *, master_addr: str | None = None, master_port: int | None = None,
                 python: str, train_args: tuple[str, ...] = ()) -> RunSpec:
        """The RunSpec render stored in plan.json ("launch"), so `launch` runs what the scripts say; the
        caller's rendezvous values and training arguments go on top (argparse: the last --steps wins)."""
        stored = self.plan.get("launch")
        if stored:
            base = RunSpec.from_dict({**stored, "run_dir": str(self.path)})
            return replace(base, master_addr=master_addr or base.master_addr,
                           master_port=master_port or base.master_port,
                           train_args=merge_args(base.train_args, tuple(train_args)))
        addr = master_addr or (self.hosts[0] if self.hosts and self.nodes > 1 else "127.0.0.1")
        return RunSpec(run_dir=str(self.path), nodes=self.nodes, procs_per_node=self.procs_per_node,
                       hosts=self.hosts if len(self.hosts) == self.nodes else (), master_addr=addr,
                       master_port=master_port or DEFAULT_MASTER_PORT, cpu=self.cpu, python=python,
                       train_args=tuple(train_args))


def merge_args(stored: tuple[str, ...], given: tuple[str, ...]) -> tuple[str, ...]:
    """The rendered training arguments with the caller's on top: a given `--opt` drops the stored one."""
    given_opts = {a.split("=", 1)[0] for a in given if a.startswith("--")}
    kept, i = [], 0
    while i < len(stored):
        arg = stored[i]
        takes_value = "=" not in arg and i + 1 < len(stored) and not stored[i + 1].startswith("--")
        if arg.startswith("--") and arg.split("=", 1)[0] in given_opts:
            i += 2 if takes_value else 1
            continue
        kept.append(arg)
        i += 1
    return tuple(kept) + tuple(given)


def read_hostfile(path: Path) -> list[tuple[str, int]]:
    """[(host, slots)] as DeepSpeed's launcher reads the run's hostfile (launch.inventory's parser, one for all)."""
    try:
        return inventory.read_hostfile(path)
    except ValueError as e:
        raise PreflightError(f"{e}; re-render with --hosts or --hostfile") from None


def load_run_dir(path: str | os.PathLike, *, need: tuple[str, ...] = ()) -> RunDir:
    """Read plan.json and ds_config.json (and check the other files `need` names exist)."""
    run = Path(path).resolve()
    if not run.is_dir():
        raise PreflightError(f"run directory {path} does not exist; create it with "
                             f"`shardplan render ... --out {path}`")
    if (run / rundir.LAUNCH_MEGATRON).is_file() and not (run / rundir.DS_CONFIG).is_file():
        raise PreflightError(f"{run} was rendered for Megatron-LM (--engine megatron): start it with "
                             f"`MEGATRON_LM=<checkout> bash {run / rundir.LAUNCH_MEGATRON} --data-path ...`; "
                             "shardplan launch runs shardplan's DeepSpeed program (render with --engine deepspeed)")
    for name in (rundir.PLAN, rundir.DS_CONFIG) + need:
        if not (run / name).is_file():
            raise PreflightError(f"{run / name} is missing; re-render the run directory with "
                                 f"`shardplan render ... --out {path} --force`")
    try:
        plan = rundir.read_plan(run)
        ds_config = rundir.read_json(run / rundir.DS_CONFIG)
        world = rundir.plan_layout(plan, run).world_size
        cluster = plan["best"]["cluster"]
        nodes = int(cluster["nodes"])
    except rundir.RunDirError as e:
        raise PreflightError(str(e)) from None
    except (KeyError, TypeError, ValueError) as e:
        raise PreflightError(f"{run / rundir.PLAN} lacks best.cluster.nodes ({e!r}); re-render it") from None
    if world % nodes:
        raise PreflightError(f"plan world size({world}) is not a multiple of nodes({nodes}); re-render the plan")
    hosts = tuple(cluster.get("hosts") or ())
    if not hosts and (run / rundir.HOSTFILE).is_file():
        hosts = tuple(h for h, _ in read_hostfile(run / rundir.HOSTFILE))
    cpu = str(cluster.get("gpu", "")).upper() == "CPU"
    # The layout's world size decides how many processes start (it may use fewer than the cluster has).
    return RunDir(run, plan, ds_config, nodes, world // nodes, hosts, cpu)


def check_ds_config(run: RunDir) -> None:
    from ..validate import validate_config  # the validate helper's checks (schema, cross-field, DeepSpeed's parser)

    layout = run.layout
    result = validate_config(run.ds_config, world_size=run.world_size, tp=layout.tp, pp=layout.pp)
    if not result.ok:
        first = result.errors[0]
        more = f" (and {len(result.errors) - 1} more)" if len(result.errors) > 1 else ""
        raise PreflightError(f"{run.path / rundir.DS_CONFIG} does not validate: {first.path}: {first.message} "
                             f"Fix: {first.fix}{more} (all of them: `shardplan validate "
                             f"{run.path / rundir.DS_CONFIG} --world-size {run.world_size}`)")


def check_local_inventory(run: RunDir, warn: Callable[[str], None]) -> None:
    """This machine must hold the plan's GPUs per node. CPU processes may outnumber the cores: that is only
    slower (the tests run 8 processes on 2 cores), so it is a warning."""
    if run.cpu:
        # A CPU plan runs one process per core (a GPU machine runs it too: DS_ACCELERATOR=cpu is set).
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        if cores < run.procs_per_node:
            warn(f"the plan runs {run.procs_per_node} CPU processes per node on {cores} core(s): they share the "
                 "cores and each step is slower; re-render with --cluster auto for one process per core")
        return
    here = inventory.detect_cluster()
    if here.source == "cpu":
        raise PreflightError(f"the plan needs {run.procs_per_node} GPUs per node "
                             f"({run.plan['best']['cluster'].get('gpu')}), but this machine has none; "
                             "launch it where the GPUs are, or re-render with --cluster auto")
    if here.gpus_per_node < run.procs_per_node:
        raise PreflightError(f"the plan needs {run.procs_per_node} GPUs per node, but this machine has "
                             f"{here.gpus_per_node} {here.gpu.name}; re-render with --cluster auto "
                             "(or launch on the cluster it was planned for)")


def check_hostfile(run: RunDir) -> list[tuple[str, int]]:
    """Multi-node without SLURM: the hostfile lists enough hosts with enough slots, and they resolve."""
    path = run.path / rundir.HOSTFILE
    if not path.is_file():
        raise PreflightError(f"the plan spans nodes({run.nodes}) but {path} is missing; re-render with "
                             "--hosts a,b,... or --hostfile, or launch with --scheduler slurm")
    hosts = read_hostfile(path)
    if len(hosts) < run.nodes:
        raise PreflightError(f"{path} lists {len(hosts)} hosts but the plan needs nodes({run.nodes}); "
                             "add hosts or re-render for fewer nodes")
    for host, slots in hosts[:run.nodes]:
        if slots < run.procs_per_node:
            raise PreflightError(f"{path}: {host} slots={slots} but the plan needs {run.procs_per_node} "
                                 "per node; fix the slots or re-render")
        check_resolves(host, path)
    return hosts


def check_resolves(host: str, where: Path) -> None:
    try:
        socket.getaddrinfo(host, None)
    except socket.gaierror as e:
        raise PreflightError(f"host {host!r} from {where} does not resolve ({e.strerror}); "
                             "fix the name or add it to /etc/hosts / DNS") from None


def check_port_free(port: int, addr: str = "") -> None:
    """The rendezvous port must be free here: torch's TCPStore (and the launchers) bind it on rank 0."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        # As torch's TCPStore does (SO_REUSEADDR): a port left in TIME_WAIT by the last run is free to it.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((addr, port))
        except OSError as e:
            raise PreflightError(f"master port {port} is in use ({e.strerror}); pass --master-port with a "
                                 "free port, or stop the job holding it (`ss -ltnp`)") from None


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def check_slurm_inventory(run: RunDir, partition: str | None = None) -> None:
    """The SLURM allocation (inside one) or the partition (sinfo) has the nodes and CPUs/GPUs per node."""
    if shutil.which("sbatch") is None:
        raise PreflightError("sbatch is not on PATH: --scheduler slurm needs the SLURM client tools "
                             "(Debian: apt-get install slurm-client) and a reachable slurmctld")
    conf = os.environ.get("SLURM_CONF")
    if conf and not Path(conf).is_file():  # the client tools would retry for a minute before failing
        raise PreflightError(f"SLURM_CONF={conf} does not exist; point it at the cluster's slurm.conf or unset it")
    if os.environ.get("SLURM_JOB_ID") and os.environ.get("SLURM_JOB_NUM_NODES"):
        have, where = int(os.environ["SLURM_JOB_NUM_NODES"]), f"allocation {os.environ['SLURM_JOB_ID']}"
        if have < run.nodes:
            raise PreflightError(f"the plan needs nodes({run.nodes}) but SLURM {where} has {have}; "
                                 f"allocate with -N {run.nodes}")
        return
    argv = ["sinfo", "-h", "-N", "-o", "%N %c %G %t"] + (["-p", partition] if partition else [])
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    except subprocess.TimeoutExpired:
        raise PreflightError("sinfo did not answer in 30 s: is slurmctld up? "
                             "(check SLURM_CONF, `scontrol ping`)") from None
    if out.returncode != 0:
        said = (out.stderr.strip() or out.stdout.strip() or "no output").splitlines()[-1]
        raise PreflightError(f"sinfo failed ({said}); is slurmctld up and SLURM_CONF right? (`scontrol ping`)")
    usable = {}
    for line in out.stdout.splitlines():
        name, cpus, gres, state = (line.split() + ["", "", "", ""])[:4]
        if state.rstrip("*~#!%$@^-") in ("down", "drain", "drng", "fail", "maint", "unk", "boot", "inval"):
            continue
        gpus = sum(int(p.split(":")[-1].split("(")[0]) for p in gres.split(",")
                   if p.startswith("gpu") and p.split(":")[-1].split("(")[0].isdigit())
        usable[name] = int(cpus) if run.cpu else gpus
    enough = [n for n, slots in usable.items() if slots >= run.procs_per_node]
    part = f"partition {partition}" if partition else "the default partition"
    if len(enough) < run.nodes:
        unit = "CPUs" if run.cpu else "GPUs"
        raise PreflightError(f"the plan needs nodes({run.nodes}) with {run.procs_per_node} {unit} each, but "
                             f"{part} has {len(enough)} such usable node(s) (sinfo: "
                             f"{', '.join(f'{n}={s}' for n, s in usable.items()) or 'none'}); "
                             "re-render for fewer nodes or pick a partition with -p")


def preflight(run_path: str | os.PathLike, scheduler: str, *, master_port: int | None = None,
              master_addr: str | None = None, partition: str | None = None, resume: bool = False,
              node_rank: int | None = None, warn: Callable[[str], None] = lambda message: None) -> RunDir:
    """All the checks for `shardplan launch RUN_DIR --scheduler S`; returns the loaded run directory.
    What only slows the job down (more CPU processes than cores) goes to `warn` instead of failing."""
    need = {"slurm": (rundir.JOB_SBATCH,)}.get(scheduler, ())
    run = load_run_dir(run_path, need=need)
    if resume and not rundir.has_checkpoint(run.path):
        raise PreflightError(f"--resume: {run.path / rundir.CHECKPOINTS} holds no checkpoint (nothing to resume); "
                             "launch without --resume")
    check_ds_config(run)
    if scheduler == "slurm":
        rendered_for = (run.plan.get("launch") or {}).get("run_dir")
        if rendered_for and Path(rendered_for) != run.path:
            raise PreflightError(f"{run.path / 'job.sbatch'} was rendered for {rendered_for} (its paths are absolute); "
                                 f"re-render it in place: `shardplan render --from {run.path / rundir.PLAN} "
                                 f"--out {run.path} --force`")
        check_slurm_inventory(run, partition)
        return run  # the port and hosts are the allocation's, chosen inside job.sbatch
    if scheduler == "local" and run.nodes > 1:
        raise PreflightError(f"the plan spans nodes({run.nodes}); --scheduler local runs on this node only: "
                             "use --scheduler deepspeed (hostfile), torchrun (on every node) or slurm")
    if run.nodes > 1:
        check_hostfile(run)
        if scheduler == "deepspeed" and node_rank is None and shutil.which("pdsh") is None:
            raise PreflightError("the deepspeed launcher reaches the other nodes with pdsh, which is not on PATH: "
                                 "install pdsh (and passwordless ssh), or run `shardplan launch RUN_DIR --scheduler "
                                 "deepspeed --node-rank N` on each node N")
    else:
        check_local_inventory(run, warn)
    if master_addr:
        check_resolves(master_addr, Path("--master-addr"))
    if not node_rank:  # only the first node binds it
        check_port_free(run.run_spec(master_addr=master_addr, master_port=master_port, python="python3").master_port)
    return run
