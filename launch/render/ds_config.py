"""The typed context ds_config.json.j2 renders from: every DeepSpeed setting derived from one Estimate.

Kept apart from the template so that each number has its reason next to it; the template only lays
the JSON out. Nothing here imports DeepSpeed or torch.
"""
from __future__ import annotations

from dataclasses import dataclass

from shardplan.launch.train.spec import autotp_partition_config
from shardplan.planner.ds_knobs import zero_knobs
from shardplan.planner.estimate import Estimate


@dataclass(frozen=True)
class Schedule:
    """Optimizer and LR schedule settings the user chooses at render time."""

    steps: int = 1000            # optimizer steps: the scheduler's total_num_steps
    lr: float = 6e-4             # peak LR (GPT-2 small in nanoGPT / Megatron GPT-345M)
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = 1e-8
    weight_decay: float = 0.1
    gradient_clipping: float = 1.0

    def __post_init__(self) -> None:
        if not isinstance(self.steps, int) or self.steps < 1:
            raise ValueError(f"steps({self.steps!r}) must be a positive integer")
        if not self.lr > 0:
            raise ValueError(f"lr({self.lr!r}) must be positive, e.g. 6e-4")

    @property
    def warmup_steps(self) -> int:
        # 10% of the run, at most 2000 steps; WarmupCosineLR uses at least 2 (deepspeed/runtime/lr_schedules.py).
        return max(2, min(2000, self.steps // 10))

    @property
    def warmup_min_ratio(self) -> float:
        # DeepSpeed's linear warm-up starts at warmup_min_ratio·lr on step 0: at 0 the first step would not
        # move the weights, which a 3-step smoke run notices.
        return 0.1

    @property
    def steps_per_print(self) -> int:
        return max(1, min(100, self.steps // 10))


@dataclass(frozen=True)
class DsConfigContext:
    """Everything ds_config.json.j2 prints. Batch sizes satisfy train = micro × grad_accum × dp."""

    train_batch_size: int
    micro_batch: int
    grad_accum: int
    precision: str                       # bf16 | fp16 | fp32
    zero_stage: int
    overlap_comm: bool
    reduce_bucket_size: int
    allgather_bucket_size: int
    stage3_prefetch_bucket_size: int
    stage3_param_persistence_threshold: int
    stage3_max_live_parameters: int
    offload_optimizer: bool
    offload_param: bool
    pin_memory: bool
    torch_adam: bool                     # torch.optim.AdamW; False = DeepSpeedCPUAdam for optimizer offload
    fused_adamw: bool                    # torch's fused AdamW kernel (optimizer.params.fused, passed through)
    check_grad_overflow: bool            # bf16 overflow check: a per-tensor scan and a host sync every step
    tp: int
    tp_preset: str                       # "" (shardplan's GPT-2 specs) or a DeepSpeed preset name ("llama")
    tp_layer_specs: tuple[dict, ...]
    pp: int
    sequence_parallel_size: int          # DeepSpeed-Ulysses: cp ranks share each sequence (dp = world / (tp·pp·cp))
    checkpointing: str                   # none | full | selective
    schedule: Schedule

    def __post_init__(self) -> None:
        if self.train_batch_size % (self.micro_batch * self.grad_accum):
            raise ValueError(f"train_batch_size({self.train_batch_size}) is not micro_batch({self.micro_batch}) "
                             f"× grad_accum({self.grad_accum}) × dp")

    @property
    def pipeline_checkpoint_interval(self) -> int:
        # PipelineModule checkpoints every N layers when N > 0 (deepspeed/runtime/pipe/engine.py).
        return 1 if self.checkpointing == "full" else 0


def ds_config_context(est: Estimate, schedule: Schedule) -> DsConfigContext:
    layout, model = est.layout, est.model
    zero = int(layout.zero_stage)
    cpu = est.cluster.gpu.is_cpu
    # The same bucket sizes the memory model counts (planner/ds_knobs.py is their one source).
    knobs = zero_knobs(model.hidden, zero, "shardplan", on_gpu=not cpu)
    return DsConfigContext(
        train_batch_size=layout.global_batch,
        micro_batch=layout.micro_batch,
        grad_accum=layout.grad_accum,
        precision=est.training.precision,
        zero_stage=zero,
        # Overlap needs a second stream; the CPU accelerator has none, so it only costs buffer memory there.
        overlap_comm=knobs.overlap_comm,
        reduce_bucket_size=knobs.reduce_bucket,
        allgather_bucket_size=knobs.allgather_bucket,
        stage3_prefetch_bucket_size=knobs.prefetch_bucket,
        stage3_param_persistence_threshold=knobs.persistence_threshold,
        stage3_max_live_parameters=knobs.max_live,  # DeepSpeed's default; lower it if gathers spike memory
        offload_optimizer=layout.offload in ("optimizer", "optimizer+params"),
        offload_param=layout.offload == "optimizer+params",
        pin_memory=not cpu,  # pinned host memory speeds PCIe copies; there is no device to copy to on CPU
        # torch's AdamW (what the memory model and the calibration assume), except for optimizer offload to a
        # GPU's host: DeepSpeedCPUAdam (JIT-built C++ op) is several times faster there (ZeRO-Offload, §5).
        torch_adam=not (layout.offload != "none" and not cpu),
        # Training.fused_step (render sets it for GPU runs, launch/render/speed.py): DeepSpeed hands optimizer
        # params to torch.optim.AdamW as they are (engine.py get_optimizer_configuration), so "fused": true reaches
        # torch's one-pass kernel; bf16 cannot overflow like fp16, so its per-step overflow scan and the .item()
        # it waits on (zero/stage_1_and_2.py step) buy nothing (torch AMP and Megatron do not check in bf16).
        fused_adamw=est.training.fused_step and not (layout.offload != "none" and not cpu),
        check_grad_overflow=not est.training.fused_step,
        tp=layout.tp,
        tp_preset="llama" if model.arch == "llama" else "",
        # The training program's own module names (launch/train/spec.py), so AutoTP shards what it builds.
        tp_layer_specs=tuple(autotp_partition_config()["layer_specs"]) if model.arch == "gpt2" else (),
        pp=layout.pp,
        # What DeepSpeed reads to count dp = world / sequence_parallel_size when no mpu is given (runtime/config.py);
        # the program passes DeepSpeed's Ulysses mpu (launch/train/ulysses.py) and checks this equals the plan's cp.
        sequence_parallel_size=layout.cp,
        checkpointing=layout.checkpointing,
        schedule=schedule,
    )
