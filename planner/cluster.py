"""GPU catalog and Cluster: what the job runs on, from a --cluster string ("4x8xH100-80GB"), a plan.json
"cluster" (Cluster.from_dict), or a device name (gpu_from_name). Detecting this machine's GPUs is launch/inventory."""
from __future__ import annotations

import difflib
import re
from dataclasses import dataclass, replace

GB = 10**9
GiB = 2**30
MiB = 2**20


@dataclass(frozen=True)
class GPUType:
    """One accelerator model. Peaks are dense (no sparsity), from the vendor datasheet."""

    name: str                   # catalog key, e.g. "H100-80GB"
    memory_bytes: int           # usable device memory as torch reports total_memory
    bf16_tflops: float          # dense bf16 peak
    fp16_tflops: float
    fp32_tflops: float          # plain fp32 (non-tensor-core) peak; tf32 is not used for training here
    hbm_gbps: float             # memory bandwidth, GB/s
    nvlink_gbps: float          # per-GPU intra-node bus bandwidth (nccl-tests busbw convention), GB/s
    # Achieved fraction of bf16 peak for large GEMMs (matmul ceiling); measured where we could.
    matmul_efficiency: float = 0.8
    bf16_native: bool = True    # False: no bf16 tensor cores (V100, T4); bf16_tflops is then what emulation gets
    # The other efficiency constants of the time model that a calibration profile may fit (planner/calibration.py):
    hbm_efficiency: float = 0.8     # achievable share of peak HBM bandwidth for streaming kernels (STREAM-like)
    host_overhead: float = 1.0      # host (Python + launch) seconds per op relative to the calibration host's
    # Low-precision tensor cores, dense: 0 where the card has none (fp8 from Hopper/Ada/MI300, fp4 from Blackwell
    # and MI355X). mxfp8: the card scales FP8 blocks of 32 in hardware (OCP MX; Blackwell's tcgen05 MMA), which
    # Transformer Engine's MXFP8BlockScaling recipe needs.
    fp8_tflops: float = 0.0
    fp4_tflops: float = 0.0
    mxfp8: bool = False
    # GPUs that share one NVLink (or xGMI) domain at nvlink_gbps: 0 means the node (an HGX board); 72 on GB200/
    # GB300 NVL72, whose 18 trays of 4 GPUs are one NVLink switch fabric. Cluster.nvlink_domain applies it.
    nvlink_domain: int = 0
    # Streaming multiprocessors (AMD: compute units), datasheets: the GEMM model's wave quantization needs them
    # (0: estimated from the bf16 peak). arch_major: the CUDA compute capability's major version (Megatron-LM
    # asks it: get_device_arch_version), 0 where the card is not NVIDIA.
    sm_count: int = 0
    arch_major: int = 0

    def __post_init__(self) -> None:
        for f in ("memory_bytes", "bf16_tflops", "fp16_tflops", "fp32_tflops", "hbm_gbps", "nvlink_gbps"):
            v = getattr(self, f)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or v <= 0:
                raise ValueError(f"GPU {self.name}: {f}({v!r}) must be a positive number")
        if not 0 < self.matmul_efficiency <= 1:
            raise ValueError(f"GPU {self.name}: matmul_efficiency({self.matmul_efficiency!r}) must be in (0, 1]")
        if not 0 < self.hbm_efficiency <= 1:
            raise ValueError(f"GPU {self.name}: hbm_efficiency({self.hbm_efficiency!r}) must be in (0, 1]")
        if not self.host_overhead > 0:
            raise ValueError(f"GPU {self.name}: host_overhead({self.host_overhead!r}) must be positive")
        for f in ("fp8_tflops", "fp4_tflops", "nvlink_domain", "sm_count", "arch_major"):
            v = getattr(self, f)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0:
                raise ValueError(f"GPU {self.name}: {f}({v!r}) must be a number >= 0")

    @property
    def is_cpu(self) -> bool:
        """The CPU stand-in (gloo, no CUDA): no CUDA workspaces, DeepSpeed's CPU defaults, tiny batches."""
        return self.name.upper() == "CPU"

    def peak_tflops(self, precision: str) -> float:
        """Dense tensor-core peak for GEMMs in `precision` (fp8 and mxfp8 share the card's fp8 rate)."""
        peak = {"bf16": self.bf16_tflops, "fp16": self.fp16_tflops, "fp32": self.fp32_tflops, "fp8": self.fp8_tflops,
                "mxfp8": self.fp8_tflops, "fp4": self.fp4_tflops}[precision]
        if not peak:
            raise ValueError(f"GPU {self.name} has no {precision} tensor cores: use --precision bf16, or a card that "
                             f"has them ({', '.join(n for n, g in CATALOG.items() if g.fp8_tflops)})")
        return peak


@dataclass(frozen=True)
class Cluster:
    """nodes × gpus_per_node GPUs of one type, with the bandwidths that connect them."""

    nodes: int
    gpus_per_node: int
    gpu: GPUType
    inter_node_gbps: float = 50.0   # per-GPU bandwidth between nodes (400 Gb/s IB per GPU = 50 GB/s)
    hosts: tuple[str, ...] = ()     # host names when known (hostfile, SLURM); empty otherwise
    source: str = "flag"            # how it was found: flag | nvidia-smi | slurm | hostfile | cpu

    def __post_init__(self) -> None:
        for f in ("nodes", "gpus_per_node"):
            v = getattr(self, f)
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"cluster {f}({v!r}) must be a positive integer")
        if self.hosts and len(self.hosts) != self.nodes:
            raise ValueError(f"cluster lists {len(self.hosts)} hosts for nodes({self.nodes})")

    @property
    def world_size(self) -> int:
        return self.nodes * self.gpus_per_node

    @property
    def nvlink_domain(self) -> int:
        """GPUs reachable over NVLink from any GPU: the card's domain (whole nodes of it) or the node, at most
        the cluster. Ranks fill a node, then the next node of the same domain."""
        per = self.gpus_per_node
        d = self.gpu.nvlink_domain or per
        return min(self.world_size, max(per, d - d % per))

    @property
    def spec(self) -> str:
        """The --cluster string that gives this cluster back."""
        return (f"{self.nodes}x" if self.nodes > 1 else "") + f"{self.gpus_per_node}x{self.gpu.name}"

    def to_dict(self) -> dict:
        return {"nodes": self.nodes, "gpus_per_node": self.gpus_per_node, "gpu": self.gpu.name,
                "world_size": self.world_size, "gpu_memory_bytes": self.gpu.memory_bytes,
                "intra_node_gbps": self.gpu.nvlink_gbps, "inter_node_gbps": self.inter_node_gbps,
                "nvlink_domain": self.nvlink_domain, "hosts": list(self.hosts), "source": self.source}

    def with_overrides(self, **overrides) -> "Cluster":
        """This cluster with --gpu-memory (GB), --intra-node-bw, --inter-node-bw (GB/s), --nvlink-domain (GPUs)
        applied; None means unset."""
        given = {k: v for k, v in overrides.items() if v is not None}
        unknown = sorted(set(given) - set(OVERRIDES))
        if unknown:
            raise ValueError(f"unknown cluster override(s) {', '.join(unknown)}: use {', '.join(OVERRIDES)}")
        for k, v in given.items():
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 0:
                raise ValueError(f"--{k.replace('_', '-')}({v!r}) must be a positive number")
        gpu = self.gpu
        if "gpu_memory" in given:
            gpu = replace(gpu, memory_bytes=int(given["gpu_memory"] * GB))
        if "intra_node_bw" in given:
            gpu = replace(gpu, nvlink_gbps=float(given["intra_node_bw"]))
        if "nvlink_domain" in given:
            d = given["nvlink_domain"]
            if d != int(d) or int(d) % self.gpus_per_node:
                raise ValueError(f"--nvlink-domain({d!r}) must be a whole number of nodes: a multiple of the "
                                 f"{self.gpus_per_node} GPUs per node (e.g. --nvlink-domain {self.gpus_per_node})")
            gpu = replace(gpu, nvlink_domain=int(d))
        cluster = replace(self, gpu=gpu)
        if "inter_node_bw" in given:
            cluster = replace(cluster, inter_node_gbps=float(given["inter_node_bw"]))
        return cluster

    @classmethod
    def from_dict(cls, d: dict) -> "Cluster":
        """Inverse of to_dict (plan.json's "cluster"): the catalog card with the recorded memory, bandwidths
        and hosts."""
        try:
            gpu, nodes, per_node = get_gpu(d["gpu"]), int(d["nodes"]), int(d["gpus_per_node"])
        except (KeyError, TypeError) as e:
            raise ValueError(f"a cluster needs nodes, gpus_per_node and gpu ({type(e).__name__}: {e})") from None
        if d.get("gpu_memory_bytes"):
            gpu = replace(gpu, memory_bytes=int(d["gpu_memory_bytes"]))
        if d.get("intra_node_gbps"):
            gpu = replace(gpu, nvlink_gbps=float(d["intra_node_gbps"]))
        cluster = cls(nodes, per_node, gpu, hosts=tuple(d.get("hosts") or ()), source=d.get("source", "flag"))
        if d.get("nvlink_domain") and int(d["nvlink_domain"]) != cluster.nvlink_domain:
            cluster = replace(cluster, gpu=replace(gpu, nvlink_domain=int(d["nvlink_domain"])))
        if d.get("inter_node_gbps"):
            cluster = replace(cluster, inter_node_gbps=float(d["inter_node_gbps"]))
        return cluster


def _card(name: str, mib: int, bf16: float, fp16: float, fp32: float, hbm: float, link: float, **kw) -> GPUType:
    return GPUType(name, mib * 2**20, bf16, fp16, fp32, hbm, link, **kw)


# Memory: torch.cuda.get_device_properties(i).total_memory in MiB, as torch prints it
# ("_CudaDeviceProperties(name='NVIDIA H100 80GB HBM3', ..., total_memory=81089MB"), seen in public logs;
# "est." where only nvidia-smi's memory.total was found (torch reports ~450 MiB less). AMD: per device
# torch sees (an MI250X is two GCDs). Peaks: dense tensor-core TFLOP/s (no sparsity), fp32 without
# tensor cores. Links: per-GPU unidirectional bandwidth, the ceiling of nccl-tests' busbw (NVLink4's
# "900 GB/s" is 450 each way); PCIe cards get their PCIe figure (Gen4 x16 32 GB/s, Gen5 64).
# H100/H200 matmul_efficiency: 800 of 989 TFLOP/s bf16 measured for an 8192^3 matmul on an H200
# (DESIGN.md, calibration); the other cards keep the unmeasured default.
_CARDS = (
    # NVIDIA H100 SXM5 datasheet: 989 bf16/fp16, 1979 fp8, 67 fp32, HBM3 3.35 TB/s, NVLink4 900 GB/s bidirectional.
    _card("H100-80GB", 81089, 989.0, 989.0, 67.0, 3350.0, 450.0, matmul_efficiency=0.81, fp8_tflops=1979.0,
          sm_count=132, arch_major=9),
    # NVIDIA H100 PCIe datasheet: 756 bf16/fp16, 1513 fp8, 51 fp32, HBM2e 2.0 TB/s, PCIe Gen5 x16.
    _card("H100-PCIe", 81008, 756.0, 756.0, 51.0, 2000.0, 64.0, matmul_efficiency=0.81, fp8_tflops=1513.0,
          sm_count=114, arch_major=9),
    # NVIDIA H200 SXM datasheet: H100 compute, 141 GB HBM3e 4.8 TB/s, NVLink4 (torch OOM: "139.81 GiB").
    _card("H200", 143165, 989.0, 989.0, 67.0, 4800.0, 450.0, matmul_efficiency=0.81, fp8_tflops=1979.0,
          sm_count=132, arch_major=9),
    # NVIDIA GH200 datasheet (96 GB HBM3 version): H100 compute, 4.0 TB/s, NVLink4. Memory est. (smi 97871).
    _card("GH200", 97400, 989.0, 989.0, 67.0, 4000.0, 450.0, matmul_efficiency=0.81, fp8_tflops=1979.0,
          sm_count=132, arch_major=9),
    # H800 SXM5 (NVIDIA's export variant; DeepSeek-V3 report sec. 3.1): H100 SXM compute and HBM3, NVLink cut to
    # 400 GB/s bidirectional. Memory est. as the H100's.
    _card("H800", 81089, 989.0, 989.0, 67.0, 3350.0, 200.0, matmul_efficiency=0.81, fp8_tflops=1979.0,
          sm_count=132, arch_major=9),
    # H20 (NVIDIA HGX H20 product brief): 148 bf16, 296 fp8, 44 fp32 dense; 96 GB HBM3 4.0 TB/s; NVLink4 900
    # bidirectional. Memory est. (smi 97871).
    _card("H20", 97400, 148.0, 148.0, 44.0, 4000.0, 450.0, matmul_efficiency=0.81, fp8_tflops=296.0,
          sm_count=78, arch_major=9),
    # NVIDIA HGX B200 datasheet, per GPU (8-GPU board / 8): 2.25 PF bf16, 4.5 PF fp8, 9 PF fp4 dense (half the
    # sparse figures), 75 fp32; 180 GB HBM3e 8 TB/s; NVLink5 1.8 TB/s bidirectional. Memory est. (smi 183359).
    _card("B200", 182900, 2250.0, 2250.0, 75.0, 8000.0, 900.0, fp8_tflops=4500.0, fp4_tflops=9000.0, mxfp8=True,
          sm_count=148, arch_major=10),
    # NVIDIA HGX B300 datasheet, per GPU: 2.25 PF bf16, 4.5 PF fp8, 13.5 PF fp4 dense (Blackwell Ultra), 75 fp32;
    # 288 GB HBM3e 8 TB/s; NVLink5. Memory est. (the datasheet's GB less torch's usual ~1.5%).
    _card("B300", 270900, 2250.0, 2250.0, 75.0, 8000.0, 900.0, fp8_tflops=4500.0, fp4_tflops=13500.0, mxfp8=True,
          sm_count=160, arch_major=10),
    # NVIDIA GB200 NVL72 datasheet, per GPU (rack / 72): 180 PF bf16, 360 PF fp8, 720 PF fp4 dense, 5760 TF fp32;
    # 186 GB HBM3e 8 TB/s; NVLink5 1.8 TB/s bidirectional to all 72 GPUs (18 trays of 4). Memory est. (smi 189471).
    _card("GB200", 189000, 2500.0, 2500.0, 80.0, 8000.0, 900.0, fp8_tflops=5000.0, fp4_tflops=10000.0, mxfp8=True,
          nvlink_domain=72, sm_count=148, arch_major=10),
    # NVIDIA GB300 NVL72 datasheet, per GPU: 360 PF bf16 and 720 PF fp8 sparse (2.5 / 5 PF dense), 1080 PF fp4 dense,
    # 6 PF fp32 per rack; 288 GB HBM3e 8 TB/s; NVLink5, 72 GPUs per domain. Memory est. as the B300's.
    _card("GB300", 270900, 2500.0, 2500.0, 83.0, 8000.0, 900.0, fp8_tflops=5000.0, fp4_tflops=15000.0, mxfp8=True,
          nvlink_domain=72, sm_count=160, arch_major=10),
    # NVIDIA A100 datasheet: 312 bf16/fp16, 19.5 fp32; 80 GB HBM2e 2039 GB/s, 40 GB 1555 GB/s; NVLink3 600 bidir.
    _card("A100-80GB", 81152, 312.0, 312.0, 19.5, 2039.0, 300.0,
          sm_count=108, arch_major=8),  # torch OOM: "79.25 GiB total capacity"
    _card("A100-40GB", 40536, 312.0, 312.0, 19.5, 1555.0, 300.0, sm_count=108, arch_major=8),
    # NVIDIA V100 SXM2 datasheet: 125 fp16 tensor, 15.7 fp32, HBM2 900 GB/s, NVLink2 300 GB/s bidir; no bf16.
    _card("V100-32GB", 32510, 15.7, 125.0, 15.7, 900.0, 150.0, bf16_native=False, sm_count=80, arch_major=7),  # est.
    _card("V100-16GB", 16160, 15.7, 125.0, 15.7, 900.0, 150.0, bf16_native=False, sm_count=80, arch_major=7),
    # NVIDIA T4 datasheet: 65 fp16 tensor, 8.1 fp32, GDDR6 320 GB/s, PCIe Gen3 x16; no bf16.
    _card("T4", 15109, 8.1, 65.0, 8.1, 320.0, 16.0, bf16_native=False, sm_count=40, arch_major=7),
    # NVIDIA L4 datasheet: 121 bf16/fp16 dense (242 sparse), 30.3 fp32, GDDR6 300 GB/s, PCIe Gen4. est. (smi 23034)
    _card("L4", 22580, 121.0, 121.0, 30.3, 300.0, 32.0, fp8_tflops=242.5,
          sm_count=58, arch_major=8),   # fp8: 242.5 dense (485 sparse)
    # NVIDIA L40S datasheet: 362 bf16/fp16 dense (733 sparse), 91.6 fp32, GDDR6 864 GB/s, PCIe Gen4.
    _card("L40S", 45589, 362.0, 362.0, 91.6, 864.0, 32.0, fp8_tflops=733.0,
          sm_count=142, arch_major=8),  # fp8: 733 dense (1466 sparse)
    # AWS's A10 variant (Baseten, "NVIDIA A10 vs A10G"): 70 bf16/fp16 tensor, 35 fp32, 600 GB/s, PCIe Gen4.
    _card("A10G", 22587, 70.0, 70.0, 35.0, 600.0, 32.0, sm_count=72, arch_major=8),
    # NVIDIA Ada whitepaper, RTX 4090: 165 bf16/fp16 with fp32 accumulate, 82.6 fp32, 1008 GB/s, PCIe Gen4, no P2P.
    _card("RTX-4090", 24563, 165.2, 165.2, 82.6, 1008.0, 32.0, sm_count=128, arch_major=8),
    # AMD MI250X datasheet, per GCD (half the OAM): 191.5 bf16/fp16, 23.9 fp32 vector, 1.64 TB/s; link nominal.
    _card("MI250X", 65520, 191.5, 191.5, 23.9, 1638.0, 100.0, sm_count=110),
    # AMD MI300X datasheet: 1307 bf16/fp16 dense, 2614.9 fp8, 163.4 fp32, HBM3 5.3 TB/s, Infinity Fabric 896 GB/s bidir.
    _card("MI300X", 196592, 1307.4, 1307.4, 163.4, 5300.0, 448.0, fp8_tflops=2614.9, sm_count=304),
    # AMD MI325X datasheet: MI300X compute (1307.4 bf16, 2614.9 fp8 dense, 163.4 fp32), 256 GB HBM3E 6 TB/s,
    # Infinity Fabric 896 GB/s bidir (8 per platform). Memory est. (the MI300X's 192 GB reported as 196592 MiB).
    _card("MI325X", 262128, 1307.4, 1307.4, 163.4, 6000.0, 448.0, fp8_tflops=2614.9, sm_count=304),
    # AMD MI355X datasheet: 2516.6 bf16, 5033.2 fp8, 10066.3 fp4 (MXFP4) dense, 157.3 fp32 vector; 288 GB HBM3E
    # 8 TB/s; 7 Infinity Fabric links of 153.6 GB/s (1075 bidir). Memory est. (MI300X's ratio of reported to nominal).
    _card("MI355X", 294888, 2516.6, 2516.6, 157.3, 8000.0, 537.6, fp8_tflops=5033.2, fp4_tflops=10066.3, sm_count=256),
    # CPU processes (gloo) for runs without a GPU: nominal figures, a few GB and ~0.2 TFLOP/s per process.
    _card("CPU", 4096, 0.2, 0.2, 0.2, 20.0, 5.0, matmul_efficiency=1.0),
)
CATALOG: dict[str, GPUType] = {g.name: g for g in _CARDS}

# Other spellings, compared after _key(): upper case, "_" and " " as "-".
ALIASES: dict[str, str] = {
    "H100": "H100-80GB", "H100-SXM": "H100-80GB", "H100-SXM5": "H100-80GB", "H100-SXM-80GB": "H100-80GB",
    "H100-80GB-HBM3": "H100-80GB", "H100-PCIE-80GB": "H100-PCIe", "H200-141GB": "H200", "H200-SXM": "H200",
    "GH200-96GB": "GH200", "A100": "A100-80GB", "A100-SXM": "A100-80GB", "A100-SXM4-80GB": "A100-80GB",
    "A100-80G": "A100-80GB", "A100-40G": "A100-40GB", "A100-SXM4-40GB": "A100-40GB", "V100": "V100-32GB",
    "V100-32G": "V100-32GB", "V100-16G": "V100-16GB", "4090": "RTX-4090", "RTX4090": "RTX-4090",
    "MI250": "MI250X", "MI300": "MI300X", "H800-80GB": "H800", "H800-SXM": "H800", "H20-96GB": "H20",
    "B200-180GB": "B200", "HGX-B200": "B200", "DGX-B200": "B200", "HGX-B300": "B300", "GB200-NVL72": "GB200",
    "GB300-NVL72": "GB300", "MI325": "MI325X", "MI355": "MI355X",
}
_BY_KEY = {**{k.upper(): v for k, v in ALIASES.items()}, **{k.upper(): k for k in CATALOG}}


def _key(name: str) -> str:
    return re.sub(r"[\s_]+", "-", name.strip()).upper()


def find_gpu(name: str) -> GPUType | None:
    canonical = _BY_KEY.get(_key(name))
    return CATALOG[canonical] if canonical else None


def get_gpu(name: str) -> GPUType:
    """The catalog card called `name` (case-insensitive, aliases such as "H100" or "A100"), or a ValueError."""
    gpu = find_gpu(name)
    if gpu is None:
        close = difflib.get_close_matches(_key(name), list(_BY_KEY), n=4, cutoff=0.5)
        hint = f"did you mean {', '.join(dict.fromkeys(_BY_KEY[c] for c in close))}? " if close else ""
        raise ValueError(f"unknown GPU type {name!r}: {hint}known: {', '.join(CATALOG)} "
                         "(or pick the nearest and set --gpu-memory/--intra-node-bw)")
    return gpu


_SPEC = re.compile(r"^(?:(\d+)[xX])?(\d+)[xX](\S+)$")
SPEC_FORM = "[NODESx]GPUSxTYPE, e.g. 1xH200, 8xA100-40GB, 4x8xH100-80GB, or auto"
OVERRIDES = ("gpu_memory", "intra_node_bw", "inter_node_bw", "nvlink_domain")  # Cluster.with_overrides, the flags


def parse_cluster(spec: str, **overrides) -> Cluster:
    """A Cluster from "[NODESx]GPUSxTYPE"; overrides gpu_memory (GB), intra_node_bw and inter_node_bw (GB/s),
    nvlink_domain (GPUs). "18x4xGB200" is one NVL72 rack: 18 trays of 4 GPUs in one NVLink domain."""
    if isinstance(spec, str) and spec.strip().lower() == "auto":
        raise ValueError("--cluster auto asks this machine (nvidia-smi, SLURM, hostfile): the planner does no I/O; "
                         "resolve it with shardplan.launch.inventory.get_cluster('auto')")
    m = _SPEC.match(spec.strip()) if isinstance(spec, str) else None
    if m is None:
        raise ValueError(f"--cluster {spec!r} is not of the form {SPEC_FORM}")
    nodes, per_node, gpu_name = int(m.group(1) or 1), int(m.group(2)), m.group(3)
    if nodes < 1 or per_node < 1:
        raise ValueError(f"--cluster {spec!r}: node and GPU counts must be at least 1 ({SPEC_FORM})")
    gpu = find_gpu(gpu_name)
    if gpu is None:
        if re.fullmatch(r"\d+[xX]?", gpu_name):  # "4x8x": a count where the type should be
            raise ValueError(f"--cluster {spec!r} has no GPU type: use the form {SPEC_FORM}")
        try:
            get_gpu(gpu_name)
        except ValueError as e:
            raise ValueError(f"--cluster {spec!r}: {e}") from None
    return Cluster(nodes, per_node, gpu).with_overrides(**overrides)


# nvidia-smi names ("NVIDIA H100 80GB HBM3", "Tesla V100-SXM2-32GB") -> catalog; first match wins.
_NAME_RULES: tuple[tuple[str, str], ...] = (
    (r"GB300", "GB300"), (r"GB200", "GB200"), (r"B300", "B300"), (r"B200", "B200"), (r"H800", "H800"),
    (r"\bH20\b", "H20"), (r"MI355X?", "MI355X"), (r"MI325X?", "MI325X"),
    (r"GH200", "GH200"), (r"H200", "H200"), (r"H100.*(PCIE|NVL)", "H100-PCIe"), (r"H100", "H100-80GB"),
    (r"A100.*80", "A100-80GB"), (r"A100", "A100-40GB"), (r"V100.*32", "V100-32GB"), (r"V100", "V100-16GB"),
    (r"L40S", "L40S"), (r"\bL4\b", "L4"), (r"A10G", "A10G"), (r"\bT4\b", "T4"), (r"RTX 4090", "RTX-4090"),
    (r"MI300X", "MI300X"), (r"MI250X?", "MI250X"),
)
# An unknown card: its own name and memory, nominal speeds (planning works, timings are rough).
NOMINAL = dict(bf16_tflops=100.0, fp16_tflops=100.0, fp32_tflops=20.0, hbm_gbps=500.0, nvlink_gbps=32.0)


def gpu_from_name(name: str, memory_bytes: int | None = None) -> GPUType:
    """The catalog card for a reported device name, else a GPUType with that name, memory and nominal speeds."""
    upper = name.upper()
    for pattern, card in _NAME_RULES:
        if re.search(pattern, upper):
            gpu = CATALOG[card]
            if card in ("A100-40GB", "V100-16GB") and memory_bytes and memory_bytes > 1.5 * gpu.memory_bytes:
                gpu = CATALOG["A100-80GB" if card == "A100-40GB" else "V100-32GB"]  # name without the size
            if memory_bytes and abs(memory_bytes - gpu.memory_bytes) > 0.1 * gpu.memory_bytes:
                gpu = replace(gpu, memory_bytes=int(memory_bytes))  # a variant (GH200 144G): trust the device
            return gpu
    if memory_bytes is None:
        raise ValueError(f"unknown GPU {name!r} and no memory size for it: give --cluster NxTYPE and --gpu-memory")
    custom = re.sub(r"[^A-Za-z0-9.]+", "-", name.strip()).strip("-") or "GPU"
    return GPUType(custom, int(memory_bytes), **NOMINAL)
