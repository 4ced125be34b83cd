"""Launch commands as data: pure functions that build `Command(argv, env)` for a run directory.

One source of truth: the rendered launch.sh / launch_torchrun.sh / job.sbatch are printed from these
same Commands (every element shell-quoted by `shell_quote`), and `shardplan launch` executes them
(`--dry-run` prints them). Nothing here touches the file system or starts a process.

Extra arguments for the training program (`--resume`, `--steps 5`) go in `RunSpec.train_args` or are
appended by the caller; the rendered scripts pass "$@" through to the training program.
"""
from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field
from pathlib import PurePosixPath

from .rundir import HOSTFILE, JOB_SBATCH, LOG_DIR

TRAIN_MODULE = "shardplan.launch.train"
DEFAULT_MASTER_PORT = 29500
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


class ShellVar(str):
    """An argv element the shell expands at run time, e.g. ShellVar("SLURM_NODEID"), optionally after a
    literal prefix: ShellVar("NODE_RANK", prefix="/run/logs/node").

    Its str value is prefix + "${NAME}" (what a dry-run prints); `shell_quote` keeps the prefix inert
    (single-quoted) and puts "${NAME}" in double quotes so that the shell expands it.
    """

    name: str
    prefix: str

    def __new__(cls, name: str, prefix: str = "") -> "ShellVar":
        if not _ENV_NAME.match(name):
            raise ValueError(f"shell variable name({name!r}) must match [A-Za-z_][A-Za-z0-9_]*")
        obj = super().__new__(cls, prefix + "${" + name + "}")
        obj.name, obj.prefix = name, prefix
        return obj


def shell_quote(arg: str) -> str:
    """One argv element as a shell word: a ShellVar expands, anything else is inert (shlex.quote)."""
    if isinstance(arg, ShellVar):
        return (shlex.quote(arg.prefix) if arg.prefix else "") + f'"${{{arg.name}}}"'
    return shlex.quote(str(arg))


def shell_join(argv) -> str:
    return " ".join(shell_quote(a) for a in argv)


@dataclass(frozen=True)
class Command:
    """A process to start: its argv and the environment variables to set on top of the caller's."""

    argv: tuple[str, ...]
    env: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.argv or not all(isinstance(a, str) for a in self.argv):
            raise ValueError(f"argv({self.argv!r}) must be a non-empty tuple of strings")
        object.__setattr__(self, "argv", tuple(self.argv))
        for key, value in self.env.items():
            if not _ENV_NAME.match(key) or not isinstance(value, str):
                raise ValueError(f"env {key}={value!r}: names must be identifiers and values strings")

    def with_args(self, *extra: str) -> "Command":
        """The same command with more arguments for the training program appended."""
        return Command(self.argv + tuple(extra), dict(self.env))

    def shell(self) -> str:
        """One line a user can paste: VAR=value ... argv (every value quoted)."""
        env = " ".join(f"{k}={shell_quote(v)}" for k, v in sorted(self.env.items()))
        return (env + " " if env else "") + shell_join(self.argv)


@dataclass(frozen=True)
class RunSpec:
    """What the launch commands need to know about a run directory and where it runs."""

    run_dir: str                      # absolute path of the run directory (rendered scripts use it as is)
    nodes: int = 1
    procs_per_node: int = 1           # GPUs per node, or CPU processes per node
    hosts: tuple[str, ...] = ()       # host names when known (multi-node deepspeed needs them)
    master_addr: str = "127.0.0.1"    # rendezvous host; the first host when hosts are known
    master_port: int = DEFAULT_MASTER_PORT
    cpu: bool = False                 # no GPU: DS_ACCELERATOR=cpu, gloo (the training program picks it)
    python: str = "python3"           # the interpreter that runs launchers and the training program
    train_args: tuple[str, ...] = ()  # extra arguments for the training program
    threads_per_rank: int = 0         # OMP_NUM_THREADS: each rank's share of the node's cores (0: leave unset)
    megatron_layers: bool = False     # the program runs Megatron-core tensor-parallel layers (tp × pp, or tp with SP)

    def __post_init__(self) -> None:
        if not self.run_dir or not PurePosixPath(self.run_dir).is_absolute():
            raise ValueError(f"run_dir({self.run_dir!r}) must be an absolute path")
        for name in ("nodes", "procs_per_node"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name}({value!r}) must be a positive integer")
        if not isinstance(self.master_port, int) or not 1 <= self.master_port <= 65535:
            raise ValueError(f"master_port({self.master_port!r}) must be an integer in 1..65535")
        object.__setattr__(self, "hosts", tuple(self.hosts))
        object.__setattr__(self, "train_args", tuple(self.train_args))
        if self.hosts and len(self.hosts) != self.nodes:
            raise ValueError(f"hosts({', '.join(self.hosts)}) lists {len(self.hosts)} hosts for nodes({self.nodes})")
        for host in self.hosts:
            if not host or any(c.isspace() for c in host) or host.startswith("-"):
                raise ValueError(f"host({host!r}) must be a host name without spaces, not starting with '-'")
        if not self.master_addr:
            raise ValueError("master_addr('') must name the rendezvous host")
        if not self.python:
            raise ValueError("python('') must name the interpreter, e.g. sys.executable")
        if not isinstance(self.threads_per_rank, int) or isinstance(self.threads_per_rank, bool) \
                or self.threads_per_rank < 0:
            raise ValueError(f"threads_per_rank({self.threads_per_rank!r}) must be 0 (unset) or a positive integer")

    @property
    def world_size(self) -> int:
        return self.nodes * self.procs_per_node

    def to_dict(self) -> dict:
        """What render stores in plan.json under "launch", so that `launch` rebuilds the scripts' commands."""
        return {"run_dir": self.run_dir, "nodes": self.nodes, "procs_per_node": self.procs_per_node,
                "hosts": list(self.hosts), "master_addr": self.master_addr, "master_port": self.master_port,
                "cpu": self.cpu, "python": self.python, "train_args": list(self.train_args),
                "threads_per_rank": self.threads_per_rank, "megatron_layers": self.megatron_layers}

    @classmethod
    def from_dict(cls, d: dict) -> "RunSpec":
        known = {"run_dir", "nodes", "procs_per_node", "hosts", "master_addr", "master_port", "cpu", "python",
                 "train_args", "threads_per_rank", "megatron_layers"}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown run spec keys {sorted(unknown)}; known: {sorted(known)}")
        return cls(**{**d, "hosts": tuple(d.get("hosts", ())), "train_args": tuple(d.get("train_args", ()))})

    @property
    def log_dir(self) -> str:
        return str(PurePosixPath(self.run_dir) / LOG_DIR)

    @property
    def hostfile(self) -> str:
        return str(PurePosixPath(self.run_dir) / HOSTFILE)


def train_args(run: RunSpec) -> tuple[str, ...]:
    """The training program's own arguments (after `-m shardplan.launch.train`)."""
    return ("--run-dir", run.run_dir) + run.train_args


def base_env(run: RunSpec) -> dict[str, str]:
    """Environment every launcher gets: unbuffered output so per-rank logs are live; on CPU the CPU
    accelerator; on GPUs what an NCCL job needs; one OpenMP thread pool per rank, not one per core each."""
    env = {"PYTHONUNBUFFERED": "1"}
    if run.cpu:
        env["DS_ACCELERATOR"] = "cpu"  # deepspeed/accelerator/real_accelerator.py reads it
    else:
        # A failed or timed-out collective aborts the communicators and ends the rank, so the launcher sees a
        # dead rank instead of a hang (1 = TearDown, torch/csrc/distributed/c10d/ProcessGroupNCCL.hpp); said
        # explicitly because the default differs between torch versions.
        env["TORCH_NCCL_ASYNC_ERROR_HANDLING"] = "1"
        if run.megatron_layers:
            # Megatron-core's tensor-parallel linears issue the input-gradient all-reduce asynchronously and
            # rely on one hardware queue to start it before the weight-gradient GEMM
            # (megatron/core/tensor_parallel/layers.py, LinearWithGradAccumulationAndAsyncCommunication).
            env["CUDA_DEVICE_MAX_CONNECTIONS"] = "1"
    if run.threads_per_rank:
        # Without it every rank's OpenMP/MKL pool takes all cores (the deepspeed launcher leaves it unset).
        env["OMP_NUM_THREADS"] = str(run.threads_per_rank)
    return env


def deepspeed_command(run: RunSpec, *, node_rank: int | None = None) -> Command:
    """The deepspeed launcher (deepspeed/launcher/runner.py, same as the `deepspeed` script).

    One node: `--num_gpus N` (also the number of CPU processes with DS_ACCELERATOR=cpu: the runner
    takes range(N) without asking the accelerator). Several nodes: `--hostfile` + pdsh/ssh from this
    node, or with node_rank given, `--no_ssh --node_rank R` run on every node by the caller.
    Each rank's output goes to <run>/logs/<timestamp>_rank<R>.log (`--enable_each_rank_log`).
    """
    argv = [run.python, "-u", "-m", "deepspeed.launcher.runner"]
    if run.nodes == 1:
        argv += ["--num_gpus", str(run.procs_per_node)]
    else:
        if not run.hosts:
            raise ValueError(f"nodes({run.nodes}) with the deepspeed launcher needs the host names "
                             "(--hosts a,b or --hostfile); or use torchrun / SLURM")
        argv += ["--hostfile", run.hostfile, "--num_nodes", str(run.nodes), "--num_gpus", str(run.procs_per_node)]
        if node_rank is not None:
            if not 0 <= node_rank < run.nodes:
                raise ValueError(f"node_rank({node_rank}) must be in 0..{run.nodes - 1}")
            argv += ["--no_ssh", "--node_rank", str(node_rank)]
    argv += ["--master_addr", run.master_addr, "--master_port", str(run.master_port),
             "--enable_each_rank_log", run.log_dir, "--module", TRAIN_MODULE]
    return Command(tuple(argv) + train_args(run), base_env(run))


def torchrun_log_dir(run: RunSpec, node_rank: int | str) -> str:
    """Where node N's torchrun agent writes its ranks' logs: <run>/logs/node<N>/<run id>_<random>/
    attempt_<k>/<local rank>/{stdout,stderr}.log (torch/distributed/elastic/multiprocessing/api.py);
    the global rank is N·procs_per_node + local rank."""
    base = str(PurePosixPath(run.log_dir) / "node")
    if isinstance(node_rank, ShellVar):
        return ShellVar(node_rank.name, prefix=base)
    return f"{base}{node_rank}"


def _torchrun_argv(run: RunSpec, nnodes: str, node_rank: str, master_addr: str, master_port: str,
                   rendezvous: tuple[str, ...] = ()) -> tuple[str, ...]:
    # --max-restarts 0: a dead rank ends the job instead of restarting the group (fail fast).
    # --redirects 3 --tee 3: stdout+stderr of every rank to its log file and to the console.
    return (run.python, "-u", "-m", "torch.distributed.run",
            "--nnodes", nnodes, "--node-rank", node_rank, "--nproc-per-node", str(run.procs_per_node),
            "--master-addr", master_addr, "--master-port", master_port, *rendezvous, "--max-restarts", "0",
            "--log-dir", torchrun_log_dir(run, node_rank), "--redirects", "3", "--tee", "3",
            "-m", TRAIN_MODULE) + train_args(run)


def torchrun_command(run: RunSpec, *, node_rank: int | str = 0, master_addr: str | None = None) -> Command:
    """torchrun on one node of the job (static rendezvous at master_addr:master_port).

    node_rank is this node's index; pass ShellVar("NODE_RANK") to let the shell supply it (likewise
    master_addr=ShellVar("MASTER_ADDR")); master_addr defaults to the run's.
    """
    if isinstance(node_rank, int) and not 0 <= node_rank < run.nodes:
        raise ValueError(f"node_rank({node_rank}) must be in 0..{run.nodes - 1}")
    rank = node_rank if isinstance(node_rank, ShellVar) else str(node_rank)
    argv = _torchrun_argv(run, str(run.nodes), rank, master_addr or run.master_addr, str(run.master_port))
    return Command(argv, base_env(run))


SLURM_RENDEZVOUS_TIMEOUT_S = 120


def srun_torchrun_line(run: RunSpec) -> Command:
    """The per-node launch inside job.sbatch: srun starts one torchrun agent per node.

    The node rank must be expanded on each node ($SLURM_NODEID differs per task), not by the batch
    shell, so the torchrun line runs under `bash -c` in each task; "$@" (the training program's extra
    arguments) reaches it as bash -c's positional parameters. MASTER_ADDR/MASTER_PORT are exported by
    the batch script and inherited by the tasks (srun's default --export=ALL).
    """
    # SLURM starts every node's task at once, so a node still missing after SLURM_RENDEZVOUS_TIMEOUT_S is
    # not coming: end the job instead of torch's static-rendezvous default of 600 s
    # (torch/distributed/elastic/rendezvous/static_tcp_rendezvous.py, the "timeout" rdzv-conf key).
    inner = _torchrun_argv(run, ShellVar("SLURM_NNODES"), ShellVar("SLURM_NODEID"),
                           ShellVar("MASTER_ADDR"), ShellVar("MASTER_PORT"),
                           rendezvous=("--rdzv-conf", f"timeout={SLURM_RENDEZVOUS_TIMEOUT_S}"))
    script = "exec " + shell_join(inner) + ' "$@"'
    output = slurm_filename(str(PurePosixPath(run.log_dir) / "slurm-")) + "%j-node%n.out"
    argv = ("srun", "--kill-on-bad-exit=1", "--ntasks-per-node=1", "--output", output,
            "bash", "-c", script, "shardplan-node")
    return Command(argv, base_env(run))


def sbatch_command(run_dir: str) -> Command:
    """Submit the run's job.sbatch; --parsable prints just the job id (sbatch(1))."""
    if not PurePosixPath(run_dir).is_absolute():
        raise ValueError(f"run_dir({run_dir!r}) must be an absolute path")
    return Command(("sbatch", "--parsable", str(PurePosixPath(run_dir) / JOB_SBATCH)), {})


def slurm_filename(path: str) -> str:
    """A literal path inside a SLURM filename pattern: '%' would start a pattern (sbatch(1)), '%%' is '%'."""
    return path.replace("%", "%%")


def command_for(run: RunSpec, scheduler: str) -> Command:
    """The command `shardplan launch --scheduler S` runs from this node."""
    if scheduler == "local":
        if run.nodes != 1:
            raise ValueError(f"scheduler 'local' runs on this node only, but the run has nodes({run.nodes}); "
                             "use --scheduler deepspeed, torchrun or slurm")
        return deepspeed_command(run)
    if scheduler == "deepspeed":
        return deepspeed_command(run)
    if scheduler == "torchrun":
        return torchrun_command(run, node_rank=0)
    if scheduler == "slurm":
        return sbatch_command(run.run_dir)
    raise ValueError(f"scheduler({scheduler!r}) must be one of local, deepspeed, torchrun, slurm")
