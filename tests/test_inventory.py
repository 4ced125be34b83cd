"""`--cluster auto`: each source from real-format inputs (SLURM variables as sbatch sets them, DeepSpeed
hostfiles, nvidia-smi CSV from real machines), host lists against the real `scontrol show hostnames`."""
import json
import os
import shutil
import subprocess
import sys

import pytest

from shardplan.launch.inventory import (cluster_from_hostfile, cluster_from_nvidia_smi, cluster_from_slurm, cpu_cluster,
                                        detect_cluster, expand_hostlist, get_cluster, parse_hostfile, parse_nvidia_smi,
                                        read_hostfile, slurm_hostnames)
from shardplan.planner.cluster import CATALOG, gpu_from_name

HOSTLISTS = {
    "node1": ["node1"],
    "node[1-2]": ["node1", "node2"],
    "node[01-03,07]": ["node01", "node02", "node03", "node07"],
    "gpu-a[1-2]-b[3-4]": ["gpu-a1-b3", "gpu-a1-b4", "gpu-a2-b3", "gpu-a2-b4"],
    "x,y[8-10],z": ["x", "y8", "y9", "y10", "z"],
    "cn[098-101]": ["cn098", "cn099", "cn100", "cn101"],
}


@pytest.mark.parametrize("nodelist,hosts", list(HOSTLISTS.items()))
def test_expand_hostlist(nodelist, hosts):
    assert expand_hostlist(nodelist) == hosts


@pytest.mark.skipif(shutil.which("scontrol") is None, reason="scontrol not installed")
def test_expand_hostlist_agrees_with_scontrol(tmp_path):
    # scontrol expands host lists offline given any slurm.conf; no daemon needed.
    conf = tmp_path / "slurm.conf"
    conf.write_text("ClusterName=t\nSlurmctldHost=localhost\nNodeName=node[1-2] CPUs=1\nPartitionName=d Nodes=ALL\n")
    env = {"SLURM_CONF": str(conf), "PATH": "/usr/bin:/bin:/usr/local/bin"}
    for nodelist in HOSTLISTS:
        real = subprocess.run(["scontrol", "show", "hostnames", nodelist], capture_output=True, text=True,
                              env=env, timeout=10, check=True).stdout.split()
        assert expand_hostlist(nodelist) == real
        assert slurm_hostnames(nodelist, env) == real


def test_slurm_hostnames_falls_back_when_scontrol_fails(tmp_path):
    (tmp_path / "bad.conf").write_text("not a slurm.conf\n")  # scontrol exits 1 at once
    env = {"SLURM_CONF": str(tmp_path / "bad.conf"), "PATH": "/usr/bin:/bin:/usr/local/bin"}
    assert slurm_hostnames("node[01-02]", env) == ["node01", "node02"]


def test_bad_hostlist():
    with pytest.raises(ValueError, match=r"cannot expand \[a-b\]"):
        expand_hostlist("node[a-b]")


# ---- SLURM allocations, variables as sbatch / srun set them
SBATCH_4x8_H100 = {  # sbatch --nodes=4 --gpus-per-node=8 --ntasks-per-node=8, inside the batch script
    "SLURM_JOB_ID": "81234", "SLURM_JOBID": "81234", "SLURM_JOB_NUM_NODES": "4", "SLURM_NNODES": "4",
    "SLURM_JOB_NODELIST": "gpu[001-004]", "SLURM_NODELIST": "gpu[001-004]", "SLURM_GPUS_ON_NODE": "8",
    "SLURM_GPUS_PER_NODE": "8", "SLURM_NTASKS_PER_NODE": "8", "SLURM_CPUS_ON_NODE": "96",
    "SLURM_JOB_GPUS": "0,1,2,3,4,5,6,7", "SLURM_TASKS_PER_NODE": "8(x4)"}


def test_slurm_gpu_allocation_with_local_gpu_type():
    c = cluster_from_slurm(SBATCH_4x8_H100, CATALOG["H100-80GB"])
    assert (c.spec, c.source, c.hosts) == ("4x8xH100-80GB", "slurm", ("gpu001", "gpu002", "gpu003", "gpu004"))


def test_slurm_type_from_gpus_per_node():
    env = {"SLURM_JOB_ID": "7", "SLURM_NNODES": "2", "SLURM_NODELIST": "a[1-2]", "SLURM_GPUS_PER_NODE": "h100:4"}
    assert cluster_from_slurm(env).spec == "2x4xH100-80GB"
    env["SLURM_GPUS_PER_NODE"] = "gpu:a100:8"
    assert cluster_from_slurm(env).spec == "2x8xA100-80GB"


def test_slurm_step_gpus_count():
    env = {"SLURM_JOB_ID": "7", "SLURM_JOB_NUM_NODES": "1", "SLURM_STEP_GPUS": "0,1,2,3"}
    assert cluster_from_slurm(env, CATALOG["L4"]).spec == "4xL4"


def test_slurm_gpus_of_unknown_type_name_the_fix():
    env = {"SLURM_JOB_ID": "99", "SLURM_JOB_NUM_NODES": "2", "SLURM_GPUS_ON_NODE": "8"}
    with pytest.raises(ValueError, match=r"SLURM job 99 has 8 GPUs per node .* give --cluster 2x8xTYPE"):
        cluster_from_slurm(env)


def test_slurm_cpu_allocation():
    # The single-host test cluster's 2-node job: sbatch --nodes=2 --ntasks-per-node=1, no GPUs.
    env = {"SLURM_JOB_ID": "3", "SLURM_JOB_NUM_NODES": "2", "SLURM_JOB_NODELIST": "node[1-2]",
           "SLURM_NTASKS_PER_NODE": "1", "SLURM_CPUS_ON_NODE": "2"}
    c = cluster_from_slurm(env)
    assert (c.nodes, c.gpus_per_node, c.gpu.name, c.hosts, c.source) == (2, 1, "CPU", ("node1", "node2"), "slurm")
    del env["SLURM_NTASKS_PER_NODE"]
    assert cluster_from_slurm(env).gpus_per_node == 2


def test_slurm_absent_or_inconsistent():
    assert cluster_from_slurm({"HOME": "/root"}) is None
    env = {"SLURM_JOB_ID": "5", "SLURM_JOB_NUM_NODES": "3", "SLURM_JOB_NODELIST": "n[1-2]", "SLURM_GPUS_ON_NODE": "1"}
    assert cluster_from_slurm(env, CATALOG["T4"]).hosts == ()  # node count wins, no wrong host names


# ---- DeepSpeed hostfiles
HOSTFILE = """# 2 nodes, 8 GPUs each
worker-1 slots=8
worker-2 slots=8   # second node

"""


def test_parse_hostfile():
    assert parse_hostfile(HOSTFILE) == [("worker-1", 8), ("worker-2", 8)]


def test_hostfile_parsing_agrees_with_deepspeed():
    runner = pytest.importorskip("deepspeed.launcher.runner")
    text = "# comment\nworker-1 slots=8\n\nworker-2 slots=4\n"
    assert parse_hostfile(text) == list(runner._parse_hostfile(text.splitlines()).items())


@pytest.mark.parametrize("text,expect", [
    ("worker-1 slots=8\nworker-1 slots=8\n", "line 2: host 'worker-1' is listed twice"),
    ("worker-1 gpus=8\n", "line 1: 'worker-1 gpus=8' is not `HOST slots=N`"),
    ("# nothing\n\n", "lists no hosts"),
    ("worker-1 slots=0\n", "slots=0"),
])
def test_bad_hostfiles(text, expect, tmp_path):
    f = tmp_path / "hostfile"
    f.write_text(text)
    with pytest.raises(ValueError) as e:
        read_hostfile(f)
    assert expect in str(e.value) and str(f) in str(e.value)


def test_read_hostfile_missing(tmp_path):
    with pytest.raises(ValueError, match="cannot read hostfile"):
        read_hostfile(tmp_path / "nope")


def test_cluster_from_hostfile():
    c = cluster_from_hostfile(parse_hostfile(HOSTFILE), CATALOG["A100-80GB"])
    assert (c.spec, c.hosts, c.source) == ("2x8xA100-80GB", ("worker-1", "worker-2"), "hostfile")
    assert cluster_from_hostfile([("localhost", 2)]).gpu.name == "CPU"  # no GPU here: CPU processes
    with pytest.raises(ValueError, match=r"different slots \(a=8, b=4\).*same slots"):
        cluster_from_hostfile([("a", 8), ("b", 4)])


# ---- nvidia-smi --query-gpu=name,memory.total --format=csv,noheader,nounits, as real machines print it
@pytest.mark.parametrize("line,card", [
    ("NVIDIA H100 80GB HBM3, 81559", "H100-80GB"), ("NVIDIA H100 PCIe, 81559", "H100-PCIe"),
    ("NVIDIA H200, 143771", "H200"), ("NVIDIA GH200 480GB, 97871", "GH200"),
    ("NVIDIA A100-SXM4-80GB, 81920", "A100-80GB"), ("NVIDIA A100 80GB PCIe, 81920", "A100-80GB"),
    ("NVIDIA A100-SXM4-40GB, 40960", "A100-40GB"), ("NVIDIA A100-PCIE-40GB, 40960", "A100-40GB"),
    ("Tesla V100-SXM2-32GB, 32768", "V100-32GB"), ("Tesla V100-SXM2-16GB, 16384", "V100-16GB"),
    ("Tesla T4, 15360", "T4"), ("NVIDIA L4, 23034", "L4"), ("NVIDIA L40S, 46068", "L40S"),
    ("NVIDIA A10G, 23028", "A10G"), ("NVIDIA GeForce RTX 4090, 24564", "RTX-4090"),
])
def test_nvidia_smi_names_map_to_the_catalog(line, card):
    c = cluster_from_nvidia_smi("\n".join([line] * 8) + "\n")
    assert (c.nodes, c.gpus_per_node, c.gpu, c.source) == (1, 8, CATALOG[card], "nvidia-smi")


def test_unknown_card_keeps_its_name_and_memory():
    c = cluster_from_nvidia_smi("NVIDIA RTX A6000, 49140\nNVIDIA RTX A6000, 49140\n")
    assert (c.gpus_per_node, c.gpu.name, c.gpu.memory_bytes) == (2, "NVIDIA-RTX-A6000", 49140 * 2**20)
    assert gpu_from_name("Tesla V100-PCIE", 32 * 2**30).name == "V100-32GB"  # size from memory when not in the name
    gh200_144 = gpu_from_name("NVIDIA GH200 144G HBM3e", 146831 * 2**20)  # a variant: the device's memory wins
    assert (gh200_144.name, gh200_144.memory_bytes, gh200_144.bf16_tflops) == ("GH200", 146831 * 2**20, 989.0)
    with pytest.raises(ValueError, match="--gpu-memory"):
        gpu_from_name("Mystery Card")


def test_nvidia_smi_visible_devices_and_failures():
    text = "NVIDIA H100 80GB HBM3, 81559\n" * 8
    assert cluster_from_nvidia_smi(text, "0,1").gpus_per_node == 2
    assert cluster_from_nvidia_smi(text, "") is None
    assert cluster_from_nvidia_smi(text, "-1") is None
    failed = ("NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver. Make sure that the "
              "latest NVIDIA driver is installed and running.\n")
    assert parse_nvidia_smi(failed) == [] and cluster_from_nvidia_smi(failed) is None


def test_mixed_cards_plan_for_the_smallest():
    c = cluster_from_nvidia_smi("NVIDIA A100-SXM4-80GB, 81920\nNVIDIA A100-SXM4-40GB, 40960\n")
    assert (c.gpus_per_node, c.gpu.name) == (2, "A100-40GB")


# ---- CPU fallback and the whole detection, in its order
def test_cpu_cluster():
    assert cpu_cluster(1).gpus_per_node == 1 and cpu_cluster(16).gpus_per_node == 2
    assert (cpu_cluster(4).gpu.name, cpu_cluster(4).source) == ("CPU", "cpu")


@pytest.mark.skipif(shutil.which("nvidia-smi") is not None, reason="this machine has GPUs")
def test_detect_cluster_order(tmp_path):
    assert detect_cluster({}).source == "cpu"
    hostfile = tmp_path / "hostfile"
    hostfile.write_text("h1 slots=2\nh2 slots=2\n")
    c = detect_cluster({"DLTS_HOSTFILE": str(hostfile)})
    assert (c.source, c.hosts, c.gpus_per_node) == ("hostfile", ("h1", "h2"), 2)
    (tmp_path / "bad.conf").write_text("not a slurm.conf\n")
    slurm = {"DLTS_HOSTFILE": str(hostfile), "SLURM_JOB_ID": "1", "SLURM_JOB_NUM_NODES": "3",
             "SLURM_JOB_NODELIST": "n[1-3]", "SLURM_NTASKS_PER_NODE": "1", "SLURM_CONF": str(tmp_path / "bad.conf")}
    c = detect_cluster(slurm)
    assert (c.source, c.hosts) == ("slurm", ("n1", "n2", "n3"))


# ---- a real allocation on the local SLURM test cluster (.ci/slurm.sh)
@pytest.mark.slurm
def test_detect_inside_a_real_two_node_allocation(slurm_cluster):
    conf = slurm_cluster["SLURM_CONF"]
    code = ("import json; from shardplan.launch.inventory import detect_cluster; c = detect_cluster(); "
            "print(json.dumps([c.spec, c.hosts, c.source]))")
    out = subprocess.run(["srun", "-N2", "--ntasks-per-node=1", "-t", "1", "--immediate=60", sys.executable, "-c", code],
                         capture_output=True, text=True, timeout=120, env={**os.environ, "SLURM_CONF": conf})
    assert out.returncode == 0, out.stderr[-2000:]
    seen = [json.loads(line) for line in out.stdout.splitlines()]
    assert len(seen) == 2 and all(s[0] == "2x1xCPU" and s[2] == "slurm" and len(s[1]) == 2 for s in seen), seen


def test_get_cluster_auto(monkeypatch):
    for var in ("SLURM_JOB_ID", "SLURM_JOBID", "DLTS_HOSTFILE"):
        monkeypatch.delenv(var, raising=False)
    c = get_cluster("auto", inter_node_bw=10)
    assert c.inter_node_gbps == 10.0
    if shutil.which("nvidia-smi") is None:
        assert c.source == "cpu" and c.gpu.name == "CPU" and c.nodes == 1 and c.gpus_per_node in (1, 2)
    assert get_cluster("2x8xH200", gpu_memory=100).gpu.memory_bytes == 100 * 10**9  # not auto: the planner's parse
