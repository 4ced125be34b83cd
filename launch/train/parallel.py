"""The DeepSpeed engine for a layout: ZeRO 0-3 and AutoTP on the plain GPT, PipelineModule for pp (and 3D)."""
from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch

from .config import RunConfig
from .data import Sampler
from .model import COLUMN_PARALLEL, GPT, ROW_PARALLEL


def init_distributed() -> None:
    """Process group from the launcher's RANK/WORLD_SIZE/MASTER_* (deepspeed, torchrun, srun+torchrun)."""
    import deepspeed
    cuda = torch.cuda.is_available()
    if not cuda:
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    if cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    for key, default in (("RANK", "0"), ("WORLD_SIZE", "1"), ("LOCAL_RANK", "0"), ("MASTER_ADDR", "127.0.0.1")):
        os.environ.setdefault(key, default)
    if "MASTER_PORT" not in os.environ:
        os.environ["MASTER_PORT"] = "29500"
    deepspeed.init_distributed(dist_backend="nccl" if cuda else "gloo", verbose=False)


@dataclass
class Trainer:
    """One rank's engine and where it sits in the layout."""

    engine: object
    run: RunConfig
    pipeline: bool
    dp_rank: int
    tp_rank: int
    pp_stage: int
    dp_group: object
    optimizer: str = ""      # which AdamW runs (speed.fused_adamw_config): fused, or the foreach fallback
    ep_rank: int = 0         # MoE: this rank's place in its expert-parallel group (which experts it holds)
    cp_rank: int = 0         # Ulysses: which seq/cp slice of every sequence this rank holds (ulysses.py)
    loss_group: object = None   # Ulysses: the dp·cp ranks whose loss shares add up to the step's (else dp_group)

    def train_step(self, step: int, tokens: np.ndarray, sampler: Sampler) -> float:
        """One optimizer step over grad_accum micro-batches; returns the global mean loss (same on every rank)."""
        if self.pipeline:
            accum = self.run.layout.grad_accum
            batches = iter([sampler.batch(tokens, step, m, self.dp_rank) for m in range(accum)])
            return float(self.engine.train_batch(data_iter=batches))
        device, cp = self.engine.device, self.run.layout.cp
        total = torch.zeros((), device=device)   # summed on the device: one host sync per step, not per micro-batch
        for micro_step in range(self.run.layout.grad_accum):
            x, y = sampler.batch(tokens, step, micro_step, self.dp_rank)
            if cp > 1:
                from .ulysses import sequence_slice
                x, y = sequence_slice(x, self.cp_rank, cp), sequence_slice(y, self.cp_rank, cp)
            loss = self.engine(x.to(device, non_blocking=True), y.to(device, non_blocking=True))
            if cp > 1:   # this slice's share of the whole sequence's mean: the cp shares add up to it
                loss = loss / cp
            self.engine.backward(loss)
            self.engine.step()
            if getattr(self.engine.module, "last_lm_loss", None) is not None:   # MoE: report the LM loss, not + aux
                loss = self.engine.module.last_lm_loss
            total += loss.detach().float()
        if self.run.layout.dp_cp > 1:   # every micro-batch holds the same number of tokens: mean of means is mean
            import deepspeed.comm as dist
            dist.all_reduce(total, group=self.dp_group if self.loss_group is None else self.loss_group)
        return total.item() / (self.run.layout.grad_accum * self.run.layout.dp)

    def rank_facts(self) -> dict:
        """What this rank holds: parameters (ZeRO-3 shard size when partitioned), blocks, tp-sharded weights."""
        module = self.engine.module
        held = sharded = 0
        for name, p in module.named_parameters():
            n = p.ds_tensor.numel() if hasattr(p, "ds_tensor") else p.numel()
            held += n
            if any(f".{k}." in f".{name}" for k in COLUMN_PARALLEL + ROW_PARALLEL) and name.endswith("weight"):
                sharded += p.ds_numel if hasattr(p, "ds_numel") else p.numel()
        blocks = sum(1 for m in module.modules() if type(m).__name__ in ("Block", "PipeBlock", "MoEBlock")
                     or type(m).__name__.endswith("DecoderLayer"))   # transformers' decoder layers
        facts = {"dp_rank": self.dp_rank, "tp_rank": self.tp_rank, "pp_stage": self.pp_stage,
                 "params_held": held, "projection_weights": sharded, "blocks": blocks, "optimizer": self.optimizer}
        if self.run.layout.cp > 1:
            facts["cp_rank"] = self.cp_rank
        shapes = [list(m.input_shape) for m in module.modules() if getattr(m, "input_shape", None)]
        if shapes:   # pipeline blocks: the activation the first one received ([seq/tp, batch, hidden] with SP)
            facts["block_input_shape"] = shapes[0]
        if getattr(self.run.model, "experts", 0):
            from .moe import expert_facts
            facts.update(ep_rank=self.ep_rank, **expert_facts(module))
        return facts


def build_trainer(run: RunConfig, seed: int, init_state: dict | None) -> Trainer:
    import deepspeed
    from deepspeed.utils import groups

    from .speed import fused_adamw_config, fused_devices
    config, optimizer = fused_adamw_config(run.engine_config(), "cuda" if torch.cuda.is_available() else "cpu",
                                           fused_devices())
    if run.layout.pp > 1:
        from .pipe import build_pipeline
        module = build_pipeline(run, seed, init_state)
        engine, _, _, _ = deepspeed.initialize(model=module, model_parameters=module.parameters(), config=config)
        grid = engine.grid
        tp_rank = 0
        if run.layout.tp > 1:
            from megatron.core import parallel_state
            tp_rank = parallel_state.get_tensor_model_parallel_rank()
            coords = (parallel_state.get_pipeline_model_parallel_rank(), parallel_state.get_data_parallel_rank(), tp_rank)
            if coords != (grid.get_stage_id(), grid.data_parallel_id, grid.get_slice_parallel_rank()):
                raise RuntimeError(f"Megatron groups (pp, dp, tp) {coords} do not match DeepSpeed's pipeline "
                                   f"grid {(grid.get_stage_id(), grid.data_parallel_id, grid.get_slice_parallel_rank())}")
        return Trainer(engine, run, True, grid.data_parallel_id, tp_rank, grid.get_stage_id(), grid.dp_group, optimizer)
    if getattr(run.model, "is_hf", False):   # a local Hugging Face decoder, built by transformers
        from .hf_model import build_hf_model
        model = build_hf_model(run.model, run.model_dict, seed)
    elif getattr(run.model, "experts", 0):   # mixture of experts: DeepSpeed's MoE layers (moe.py)
        from .moe import MoEGPT
        model = MoEGPT(run.model, seed)
    elif run.layout.sequence_parallel:   # tp with pp 1 and SP: Megatron-core layers, not AutoTP (sp_gpt.py)
        from .sp_gpt import SequenceParallelGPT
        model, init_state = SequenceParallelGPT(run.model, seed, run.layout.tp, init_state), None
    else:
        model = GPT(run.model, seed)
    if init_state is not None:
        model.load_state_dict(init_state, strict=True)
    mpu = None
    if run.layout.tp > 1:
        # AutoTP's groups, created before initialize and passed as mpu, so DeepSpeed counts train_batch_size
        # over the data-parallel ranks (world / tp) instead of the whole world; with SP they are DeepSpeed's
        # view of the Megatron groups the layers use, checked to hold the same ranks below.
        groups._init_tp_mesh_device(tensor_model_parallel_size=run.layout.tp)
        mpu = groups
    if run.layout.cp > 1:   # DeepSpeed-Ulysses: its sequence-parallel groups as mpu, attention all-to-alls
        from .ulysses import distribute_attention, sequence_parallel_mpu
        mpu = sequence_parallel_mpu(run.layout.cp)
        distribute_attention(model, mpu.get_sequence_parallel_group(), mpu.get_sequence_parallel_rank(),
                             run.seq_len // run.layout.cp)
    params = model.parameters()
    if getattr(run.model, "experts", 0):
        from .moe import optimizer_groups
        params = optimizer_groups(model)
    engine, _, _, _ = deepspeed.initialize(model=model, model_parameters=params, config=config, mpu=mpu)
    ep_rank = 0
    if getattr(run.model, "experts", 0):
        from .moe import check_ep_groups, fp32_clip_with_experts
        ep_rank = check_ep_groups(run.model)
        if config.get("gradient_clipping", 0) > 0:
            fp32_clip_with_experts(engine, float(config["gradient_clipping"]))
    tp_rank = groups.get_tensor_model_parallel_rank() if run.layout.tp > 1 else 0
    if run.layout.cp > 1:   # Ulysses ranks are dp_rank·cp + cp_rank (parallel_state_sp); it has no dp-only group
        import deepspeed.comm as dist
        return Trainer(engine, run, False, dist.get_rank() // run.layout.cp, 0, 0, None, optimizer, ep_rank,
                       cp_rank=mpu.get_sequence_parallel_rank(), loss_group=mpu.get_sequence_data_parallel_group())
    dp_group = groups._get_data_parallel_group()
    import deepspeed.comm as dist
    dp_rank = dist.get_rank(group=dp_group) if run.layout.dp > 1 else 0
    if run.layout.sequence_parallel:
        from megatron.core import parallel_state
        ours = (parallel_state.get_data_parallel_rank(), parallel_state.get_tensor_model_parallel_rank())
        if ours != (dp_rank, tp_rank):
            raise RuntimeError(f"Megatron groups (dp, tp) {ours} do not match DeepSpeed's {(dp_rank, tp_rank)}")
    return Trainer(engine, run, False, dp_rank, tp_rank, 0, dp_group, optimizer, ep_rank)
