"""`--cluster auto`: find the GPUs this job has. In order: a SLURM allocation, a DeepSpeed hostfile,
nvidia-smi on this machine, else CPU processes (so the demo runs anywhere).

Each source is a pure function from text/environment to a Cluster, tested on real-format inputs; the
only processes started are nvidia-smi and scontrol, and only when they are installed.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Callable, Mapping
from pathlib import Path

from shardplan.planner.cluster import CATALOG, Cluster, GPUType, MiB, find_gpu, gpu_from_name, parse_cluster

DEFAULT_HOSTFILE = "/job/hostfile"  # where DeepSpeed's launcher looks when DLTS_HOSTFILE is unset
NVIDIA_SMI_QUERY = ("nvidia-smi", "--query-gpu=name,memory.total", "--format=csv,noheader,nounits")


# ---- host lists and hostfiles
def expand_hostlist(nodelist: str) -> list[str]:
    """SLURM's compressed host list, as `scontrol show hostnames` expands it: "node[01-03,07],gpu-a[1-2]-b1"."""
    hosts: list[str] = []
    for item in re.findall(r"(?:[^,\[]|\[[^\]]*\])+", nodelist.strip()):
        parts = [[]]  # cartesian product over bracket groups, keeping zero padding ("01")
        for literal, group in re.findall(r"([^\[]*)(?:\[([^\]]*)\])?", item):
            choices = [literal]
            if group:
                choices = [literal + x for x in _expand_ranges(group, nodelist)]
            parts = [p + [c] for p in parts for c in choices]
        hosts.extend("".join(p) for p in parts)
    return [h for h in hosts if h]


def _expand_ranges(group: str, nodelist: str) -> list[str]:
    out = []
    for r in group.split(","):
        m = re.fullmatch(r"(\d+)(?:-(\d+))?", r.strip())
        if m is None:
            raise ValueError(f"SLURM node list {nodelist!r}: cannot expand [{group}]; expected forms like node[01-03,07]")
        lo, hi = m.group(1), m.group(2) or m.group(1)
        out.extend(str(i).zfill(len(lo)) for i in range(int(lo), int(hi) + 1))
    return out


def slurm_hostnames(nodelist: str, env: Mapping[str, str] | None = None) -> list[str]:
    """`scontrol show hostnames` when it is installed and works, else expand_hostlist."""
    scontrol = shutil.which("scontrol")
    if scontrol:
        try:
            # scontrol retries a missing slurm.conf for a minute: give it a few seconds, then expand here.
            r = subprocess.run([scontrol, "show", "hostnames", nodelist], capture_output=True, text=True,
                               timeout=5, env=dict(env) if env is not None else None)
            if r.returncode == 0 and r.stdout.split():
                return r.stdout.split()
        except (OSError, subprocess.TimeoutExpired):
            pass  # e.g. no slurm.conf on this machine: the pure expander knows the syntax
    return expand_hostlist(nodelist)


def parse_hostfile(text: str, where: str = "hostfile") -> list[tuple[str, int]]:
    """DeepSpeed hostfile lines `host slots=N` (comments and blank lines skipped), as its launcher reads them."""
    pool: dict[str, int] = {}
    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        m = re.match(r"(\S+)\s+slots=(\d+)(?:\s|$)", line)  # what DeepSpeed's runner accepts
        if m is None:
            raise ValueError(f"{where} line {n}: {raw.strip()!r} is not `HOST slots=N`; fix that line")
        host, slots = m.group(1), int(m.group(2))
        if host in pool:
            raise ValueError(f"{where} line {n}: host {host!r} is listed twice; keep one line per host")
        if slots < 1:
            raise ValueError(f"{where} line {n}: host {host!r} has slots=0; give it at least 1 slot or remove it")
        pool[host] = slots
    if not pool:
        raise ValueError(f"{where} lists no hosts; add lines like `worker-1 slots=8`")
    return list(pool.items())


def read_hostfile(path: str | os.PathLike) -> list[tuple[str, int]]:
    """[(host, slots), ...] from a DeepSpeed hostfile, or a ValueError naming the file and the fix."""
    try:
        text = Path(path).read_text()
    except OSError as e:
        raise ValueError(f"cannot read hostfile {str(path)!r} ({e.strerror}); check the path") from None
    return parse_hostfile(text, where=f"hostfile {str(path)!r}")


def parse_nvidia_smi(text: str) -> list[tuple[str, int]]:
    """[(name, memory bytes)] from `nvidia-smi --query-gpu=name,memory.total --format=csv,noheader,nounits`."""
    rows = []
    for line in text.splitlines():
        parts = [p.strip() for p in line.rsplit(",", 1)]
        if len(parts) == 2 and parts[1].isdigit():
            rows.append((parts[0], int(parts[1]) * MiB))
    return rows


def cluster_from_nvidia_smi(text: str, visible_devices: str | None = None) -> Cluster | None:
    """This machine's GPUs (one node), limited to CUDA_VISIBLE_DEVICES when it is set; None if there are none."""
    rows = parse_nvidia_smi(text)
    if visible_devices is not None:
        ids = [v for v in visible_devices.split(",") if v.strip() and v.strip() != "-1"]
        rows = rows[: len(ids)]
    if not rows:
        return None
    # Mixed cards: plan for the smallest, so whatever is chosen fits on every one.
    name, mem = min(rows, key=lambda r: r[1])
    return Cluster(1, len(rows), gpu_from_name(name, mem), source="nvidia-smi")


# ---- SLURM
def _first_int(value: str | None) -> int | None:
    m = re.match(r"\s*(\d+)", value or "")
    return int(m.group(1)) if m else None


def _slurm_gpus_per_node(env: Mapping[str, str], nodes: int) -> tuple[int, str | None]:
    """(GPUs per node, the gres type name if SLURM says it)."""
    if _first_int(env.get("SLURM_GPUS_ON_NODE")) is not None:
        return _first_int(env["SLURM_GPUS_ON_NODE"]), None
    per_node = env.get("SLURM_GPUS_PER_NODE")  # --gpus-per-node=[type:]N, e.g. "h100:8" or "gpu:h100:8"
    if per_node:
        fields = per_node.split(",")[0].split(":")
        if fields[-1].strip().isdigit():
            kind = [f for f in fields[:-1] if f.lower() != "gpu"]
            return int(fields[-1]), (kind[-1] if kind else None)
    for key in ("SLURM_STEP_GPUS", "SLURM_JOB_GPUS"):  # device indices, "0,1,2,3"
        if env.get(key):
            return len([g for g in env[key].split(",") if g.strip()]), None
    total = _first_int(env.get("SLURM_GPUS"))
    return (total // nodes if total else 0), None


def cluster_from_slurm(env: Mapping[str, str], local_gpu: GPUType | None = None,
                       hostnames: Callable[[str], list[str]] = expand_hostlist, cores: int | None = None) -> Cluster | None:
    """The allocation this process runs in (SLURM_* variables), or None outside SLURM.

    The GPU type is the local nvidia-smi's when there is one, else the type in --gpus-per-node; an
    allocation without GPUs is planned as CPU processes (SLURM_NTASKS_PER_NODE, or up to 2 per node).
    """
    if not (env.get("SLURM_JOB_ID") or env.get("SLURM_JOBID")):
        return None
    nodelist = env.get("SLURM_JOB_NODELIST") or env.get("SLURM_NODELIST") or ""
    hosts = tuple(hostnames(nodelist)) if nodelist else ()
    nodes = _first_int(env.get("SLURM_JOB_NUM_NODES")) or _first_int(env.get("SLURM_NNODES")) or len(hosts) or 1
    if len(hosts) != nodes:
        hosts = ()  # a step's view can differ from the job's; better no hosts than wrong ones
    gpus, kind = _slurm_gpus_per_node(env, nodes)
    if gpus:
        gpu = local_gpu or (find_gpu(kind) if kind else None)
        if gpu is None:
            raise ValueError(f"SLURM job {env.get('SLURM_JOB_ID') or env.get('SLURM_JOBID')} has {gpus} GPUs per "
                             f"node of unknown type{f' {kind!r}' if kind else ''} (no nvidia-smi here): "
                             f"give --cluster {nodes}x{gpus}xTYPE")
        return Cluster(nodes, gpus, gpu, hosts=hosts, source="slurm")
    per_node = _first_int(env.get("SLURM_NTASKS_PER_NODE"))
    if not per_node:
        per_node = max(1, min(2, _first_int(env.get("SLURM_CPUS_ON_NODE")) or cores or _cores()))
    return Cluster(nodes, per_node, CATALOG["CPU"], hosts=hosts, source="slurm")


# ---- hostfile, CPU, and the whole detection
def cluster_from_hostfile(pairs: list[tuple[str, int]], local_gpu: GPUType | None = None,
                          where: str = "hostfile") -> Cluster:
    """nodes = hosts, GPUs per node = slots (all equal); GPU type from this machine, else CPU processes."""
    slots = {s for _, s in pairs}
    if len(slots) > 1:
        listed = ", ".join(f"{h}={s}" for h, s in pairs)
        raise ValueError(f"{where} gives hosts different slots ({listed}); shardplan plans equal nodes: "
                         "use the same slots on every line")
    return Cluster(len(pairs), slots.pop(), local_gpu or CATALOG["CPU"], hosts=tuple(h for h, _ in pairs),
                   source="hostfile")


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def cpu_cluster(cores: int | None = None) -> Cluster:
    """No GPU: 2 CPU processes (1 on a single core), for the demo and CPU tests (CONTRACTS.md)."""
    return Cluster(1, 2 if (cores or _cores()) >= 2 else 1, CATALOG["CPU"], source="cpu")


def query_nvidia_smi() -> str | None:
    """nvidia-smi's CSV, or None where it is missing or fails (no driver)."""
    if not shutil.which("nvidia-smi"):
        return None
    try:
        r = subprocess.run(NVIDIA_SMI_QUERY, capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return r.stdout if r.returncode == 0 else None


def detect_cluster(env: Mapping[str, str] | None = None) -> Cluster:
    """The inventory `--cluster auto` means: SLURM allocation, then DeepSpeed hostfile, then nvidia-smi, then CPU."""
    env = os.environ if env is None else env
    smi = query_nvidia_smi()
    local = cluster_from_nvidia_smi(smi, env.get("CUDA_VISIBLE_DEVICES")) if smi else None
    local_gpu = local.gpu if local else None
    slurm = cluster_from_slurm(env, local_gpu, hostnames=lambda nl: slurm_hostnames(nl, env))
    if slurm is not None:
        return slurm
    hostfile = env.get("DLTS_HOSTFILE") or (DEFAULT_HOSTFILE if os.path.isfile(DEFAULT_HOSTFILE) else None)
    if hostfile:
        return cluster_from_hostfile(read_hostfile(hostfile), local_gpu, where=f"hostfile {hostfile!r}")
    return local or cpu_cluster()


def get_cluster(spec: str, **overrides) -> Cluster:
    """The cluster a --cluster value names: the detected inventory for "auto" (SLURM, hostfile, nvidia-smi,
    CPU), else the planner's parse of "[NODESx]GPUSxTYPE"; overrides as Cluster.with_overrides."""
    if isinstance(spec, str) and spec.strip().lower() == "auto":
        return detect_cluster().with_overrides(**overrides)
    return parse_cluster(spec, **overrides)
