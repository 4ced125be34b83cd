"""GPU catalog and Cluster: what the job runs on."""
from __future__ import annotations

from dataclasses import dataclass

GB = 10**9
GiB = 2**30


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

    def peak_tflops(self, precision: str) -> float:
        return {"bf16": self.bf16_tflops, "fp16": self.fp16_tflops, "fp32": self.fp32_tflops}[precision]


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
    def spec(self) -> str:
        """The --cluster string that gives this cluster back."""
        return (f"{self.nodes}x" if self.nodes > 1 else "") + f"{self.gpus_per_node}x{self.gpu.name}"

    def to_dict(self) -> dict:
        return {"nodes": self.nodes, "gpus_per_node": self.gpus_per_node, "gpu": self.gpu.name,
                "world_size": self.world_size, "gpu_memory_bytes": self.gpu.memory_bytes,
                "intra_node_gbps": self.gpu.nvlink_gbps, "inter_node_gbps": self.inter_node_gbps,
                "hosts": list(self.hosts), "source": self.source}
