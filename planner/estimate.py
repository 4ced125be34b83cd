"""The typed results of evaluating one layout: memory and time breakdowns, and the Estimate that joins them."""
from __future__ import annotations

from dataclasses import dataclass

from .cluster import Cluster
from .layout import Layout, Precision, PRECISIONS

MFU_PEAKS = ("bf16", "fp16", "fp32", "fp8", "fp4")   # Training.mfu_peak: GPUType.peak_tflops' precisions
CP_COMM_TYPES = ("p2p", "a2a", "allgather")          # Training.cp_comm_type: Megatron-LM's --cp-comm-type
from .model import ModelSpec


@dataclass(frozen=True)
class Training:
    """What is trained, apart from the model and the layout."""

    seq_len: int = 1024
    global_batch: int = 0          # sequences per optimizer step; 0 = take the layout's
    precision: Precision = "bf16"
    optimizer: str = "adamw"
    # Who runs the step: "deepspeed" (shardplan's program on the DeepSpeed engine), "megatron" (Megatron-LM's
    # pretrain_gpt.py on megatron-core: planner/megatron/) or "torch" (plain PyTorch AMP + fused AdamW, one
    # GPU; only the calibration's reference rows use it).
    engine: str = "deepspeed"
    # Megatron's core attention: "flash" (TE/flash kernels, megatron-core's default) or "unfused" (explicit
    # QK^T, fused scale-mask-softmax, dropout, AV: --attention-backend unfused, and every Megatron run before
    # flash attention, such as the published 2021-2022 ones). shardplan's own program always runs SDPA/flash.
    attention: str = "flash"
    # Megatron's communication overlap, as the engine version that ran does it. overlap_grad_reduce: the DP
    # gradient reduce runs bucket by bucket during the last micro-batch's backward (--overlap-grad-reduce,
    # and PyTorch DDP's hooks); False = after the whole backward (megatron-core without the flag, and
    # Megatron-LM 2021's default "local" DDP, whose allreduce_gradients() ran after forward_backward).
    # tp_backward_overlap: the input-gradient all-reduce of a column-parallel layer runs beside its
    # weight-gradient GEMM (Megatron-LM since September 2021, always in megatron-core); False = the
    # synchronous all-reduce of mpu/mappings.py before that (the SC21 code the 2021 published runs used).
    overlap_grad_reduce: bool = True
    tp_backward_overlap: bool = True
    # How Megatron's context parallelism exchanges the sequence (--cp-comm-type; Transformer Engine's
    # attention/dot_product_attention/context_parallel.py): "p2p" (the K/V ring, overlapped with the attention of
    # the chunk held), "a2a" (all-to-all of q, k, v and the output over the heads, Ulysses-style: heads and kv
    # heads per tp rank must split over cp) or "allgather" (K/V all-gathered forward and again backward, dK/dV
    # reduce-scattered; exposed). The DeepSpeed engine's cp is always Ulysses' all-to-all.
    cp_comm_type: str = "p2p"
    # Which ZeRO buffer sizes the ds_config carries: "shardplan" (what render writes, planner/ds_knobs.py)
    # or "deepspeed" (DeepSpeed's defaults: 5e8-element buckets, overlap_comm only for ZeRO-3).
    zero_buckets: str = "shardplan"
    # Gradient accumulation dtype (ds_config data_types.grad_accum_dtype): "model" (DeepSpeed's default:
    # the model dtype) or "fp32" (bf16 with ZeRO 0/1 then runs BF16_Optimizer with a full fp32 gradient
    # buffer, as nanotron does by default).
    grad_accum_dtype: str = "model"
    # torch.compile (inductor) of the model where the layout allows it (layout.compile_refusal); render turns
    # it on for GPU runs of shardplan's program, the compiled reference rows of the calibration use it.
    compile: bool = False
    # The step without needless host syncs: torch's fused AdamW kernel (one pass over p, g, m, v) and, in bf16,
    # no overflow check (ds_config bf16.check_grad_overflow false). Render turns it on for GPU runs.
    fused_step: bool = False
    # How a tensor-parallel linear is written, for its host work per layer (planner/timing.py TP_LINEAR_HOST):
    # "plain" (one linear op per projection and its collective, what the DeepSpeed timing counts) or
    # "nanotron_async" (nanotron's REDUCE_SCATTER autograd Functions with tp_linear_async_communication: sharded
    # matmuls, buffers, async all-gathers / reduce-scatters and their waits, parallel/tensor_parallel/functional.py).
    tp_linear: str = "plain"
    # The peak MFU is measured against: "auto" = the precision's own dense peak, bf16 for fp8/mxfp8 (FP8 MFU is
    # conventionally quoted against the bf16 peak, which also keeps it comparable across precisions); "fp8"
    # (or another precision) asks for that peak instead.
    mfu_peak: str = "auto"

    def __post_init__(self) -> None:
        if not isinstance(self.seq_len, int) or self.seq_len < 1:
            raise ValueError(f"seq_len({self.seq_len!r}) must be a positive integer")
        if not isinstance(self.global_batch, int) or self.global_batch < 0:
            raise ValueError(f"global_batch({self.global_batch!r}) must be a positive integer")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision({self.precision!r}) must be one of {', '.join(PRECISIONS)}")
        if self.optimizer != "adamw":
            raise ValueError(f"optimizer({self.optimizer!r}): only adamw is modelled")
        if self.engine not in ("deepspeed", "megatron", "torch"):
            raise ValueError(f"engine({self.engine!r}) must be 'deepspeed' or 'megatron' (or 'torch' for plain "
                             "PyTorch measurements)")
        if self.attention not in ("flash", "unfused"):
            raise ValueError(f"attention({self.attention!r}) must be 'flash' or 'unfused'")
        if self.attention == "unfused" and self.engine != "megatron":
            raise ValueError("attention('unfused') is Megatron's --attention-backend unfused; shardplan's DeepSpeed "
                             "program runs flash attention (SDPA): use --engine megatron")
        if self.cp_comm_type not in CP_COMM_TYPES:
            raise ValueError(f"cp_comm_type({self.cp_comm_type!r}) must be one of {', '.join(CP_COMM_TYPES)}")
        if self.cp_comm_type != "p2p" and self.engine != "megatron":
            raise ValueError(f"cp_comm_type({self.cp_comm_type!r}) is Megatron's --cp-comm-type; the DeepSpeed "
                             "engine's context parallelism is Ulysses (an all-to-all): use --engine megatron")
        for name in ("overlap_grad_reduce", "tp_backward_overlap"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name}({getattr(self, name)!r}) must be true or false")
        if self.grad_accum_dtype not in ("model", "fp32"):
            raise ValueError(f"grad_accum_dtype({self.grad_accum_dtype!r}) must be 'model' or 'fp32'")
        if self.mfu_peak not in ("auto",) + MFU_PEAKS:
            raise ValueError(f"mfu_peak({self.mfu_peak!r}) must be auto or one of {', '.join(MFU_PEAKS)}")
        if self.tp_linear not in ("plain", "nanotron_async"):
            raise ValueError(f"tp_linear({self.tp_linear!r}) must be 'plain' or 'nanotron_async'")
        if self.zero_buckets not in ("shardplan", "deepspeed"):
            raise ValueError(f"zero_buckets({self.zero_buckets!r}) must be 'shardplan' or 'deepspeed'")


@dataclass(frozen=True)
class MemoryBreakdown:
    """Bytes on the worst rank at the moment of its peak (what torch.cuda.max_memory_allocated() reports).

    The parts add up to peak_bytes. Framework overhead outside the allocator (CUDA context, NCCL
    buffers) is not in peak_bytes; reserved_headroom_bytes says what the caching allocator adds on top.
    """

    params_bytes: int        # model weights held on this GPU (low precision copy, or the ZeRO-3 shard + gathered layers)
    grads_bytes: int         # gradient buffers alive at the peak
    optimizer_bytes: int     # fp32 master weights + Adam moments on this GPU (0 when offloaded)
    activations_bytes: int   # saved activations + the working set of the layer running at the peak
    other_bytes: int         # logits/loss, communication buckets, optimizer-step temporaries
    capacity_bytes: int      # the card's memory
    reserved_headroom_bytes: int = 0  # allocator fragmentation on top of peak (reported, not in peak)

    @property
    def peak_bytes(self) -> int:
        return self.params_bytes + self.grads_bytes + self.optimizer_bytes + self.activations_bytes + self.other_bytes

    def to_dict(self) -> dict:
        return {"params_bytes": self.params_bytes, "grads_bytes": self.grads_bytes,
                "optimizer_bytes": self.optimizer_bytes, "activations_bytes": self.activations_bytes,
                "other_bytes": self.other_bytes, "peak_bytes": self.peak_bytes,
                "capacity_bytes": self.capacity_bytes, "reserved_headroom_bytes": self.reserved_headroom_bytes}


@dataclass(frozen=True)
class TimeBreakdown:
    """Seconds per optimizer step on the critical path, by cause. step_s adds them up."""

    compute_s: float          # forward + backward (+ recompute) matmuls and the rest, all micro-batches
    optimizer_s: float        # the optimizer step (memory bound)
    dp_comm_s: float          # gradient all-reduce / reduce-scatter + ZeRO-3 all-gathers not hidden by overlap
    tp_comm_s: float          # tensor-parallel all-reduces (not overlapped)
    pp_comm_s: float          # pipeline send/recv of activations
    bubble_s: float           # pipeline bubble: (pp-1)/m of the ideal compute
    offload_s: float = 0.0    # PCIe traffic and CPU Adam for offload
    overhead_s: float = 0.0   # fixed per-step framework cost (launches, hooks), calibrated
    comm_bytes: int = 0       # bytes each GPU sends per step, all collectives together
    ep_comm_s: float = 0.0    # MoE token dispatch/combine all-to-all (and etp gathers), not overlapped

    @property
    def step_s(self) -> float:
        return (self.compute_s + self.optimizer_s + self.dp_comm_s + self.tp_comm_s + self.pp_comm_s
                + self.bubble_s + self.offload_s + self.overhead_s + self.ep_comm_s)

    def to_dict(self) -> dict:
        return {"compute_s": self.compute_s, "optimizer_s": self.optimizer_s, "dp_comm_s": self.dp_comm_s,
                "tp_comm_s": self.tp_comm_s, "pp_comm_s": self.pp_comm_s, "bubble_s": self.bubble_s,
                "offload_s": self.offload_s, "overhead_s": self.overhead_s, "comm_bytes": self.comm_bytes,
                "ep_comm_s": self.ep_comm_s, "step_s": self.step_s}


@dataclass(frozen=True)
class Estimate:
    """One layout evaluated: memory, time, and whether it fits."""

    model: ModelSpec
    cluster: Cluster
    layout: Layout
    training: Training
    memory: MemoryBreakdown
    time: TimeBreakdown
    headroom: float = 0.0   # fraction of capacity kept free when deciding fits

    @property
    def fits(self) -> bool:
        return self.memory.peak_bytes <= self.memory.capacity_bytes * (1 - self.headroom)

    @property
    def tokens_per_step(self) -> int:
        return self.layout.global_batch * self.training.seq_len

    @property
    def step_time_s(self) -> float:
        return self.time.step_s

    @property
    def tokens_per_s(self) -> float:
        return self.tokens_per_step / self.step_time_s

    @property
    def mfu_peak(self) -> str:
        """The dense peak MFU is measured against: bf16 for FP8 training unless Training.mfu_peak says otherwise."""
        if self.training.mfu_peak != "auto":
            return self.training.mfu_peak
        return "bf16" if self.training.precision in ("fp8", "mxfp8") else self.training.precision

    @property
    def model_tflops_per_gpu(self) -> float:
        """Model TFLOP/s per GPU (the FLOPs MFU counts): the unit NVIDIA's performance tables use."""
        return self.model.flops_per_token(self.training.seq_len) * self.tokens_per_s / self.layout.world_size / 1e12

    @property
    def mfu(self) -> float:
        """Model FLOPs utilization: 6N + 12·L·h·s per token (no recompute counted; N the active parameters of an
        MoE model: ModelSpec.flops_per_token) over the cluster's peak."""
        flops = self.model.flops_per_token(self.training.seq_len) * self.tokens_per_s
        peak = self.cluster.gpu.peak_tflops(self.mfu_peak) * 1e12 * self.layout.world_size
        return flops / peak

    def to_dict(self) -> dict:
        return {"engine": self.training.engine, "model": self.model.to_dict(), "cluster": self.cluster.to_dict(),
                "layout": self.layout.to_dict(),
                "training": {"seq_len": self.training.seq_len, "global_batch": self.layout.global_batch,
                             "precision": self.training.precision, "optimizer": self.training.optimizer,
                             "compile": self.training.compile, "fused_step": self.training.fused_step,
                             "cp_comm_type": self.training.cp_comm_type},
                "memory": self.memory.to_dict(), "time": self.time.to_dict(), "fits": self.fits,
                "step_time_s": self.step_time_s, "tokens_per_s": self.tokens_per_s, "mfu": self.mfu,
                "mfu_peak": self.mfu_peak, "model_tflops_per_gpu": self.model_tflops_per_gpu}
