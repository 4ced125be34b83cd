"""GPT-2 as a DeepSpeed PipelineModule, with Megatron-core tensor-parallel layers for tp × pp × dp.

AutoTP shards a plain module inside deepspeed.initialize, but on a PipelineModule its tensor-parallel
groups do not match the pipeline grid, so 3D uses the Megatron-DeepSpeed pattern instead:
megatron.core.parallel_state builds the tp/pp/dp groups, DeepSpeed's PipeModelDataParallelTopology
describes the same rank order (tensor fastest, then data, then pipe), and the projections are
Megatron ColumnParallelLinear / RowParallelLinear holding this rank's shard of the seeded full weights
(megatron_layers.py). With the layout's sequence_parallel, the residual stream between blocks holds s/tp tokens per rank
(seqpar.py): the position embedding scatters the sequence, the final norm gathers it back.
"""
from __future__ import annotations

import functools

import torch
import torch.nn as nn
from torch.utils.checkpoint import checkpoint

from . import seqpar
from .config import RunConfig
from .megatron_layers import init_model_parallel, shard_to_megatron
from .model import Block, GPTConfig, _generator, init_block, lm_loss


class TokenEmbedding(nn.Embedding):
    """wte: the first stage looks tokens up, the last stage reuses it as the LM head (TiedLayerSpec)."""

    def __init__(self, cfg: GPTConfig, seed: int):
        super().__init__(cfg.vocab, cfg.hidden)
        with torch.no_grad():
            self.weight.copy_(torch.randn(self.weight.shape, generator=_generator(seed, "wte")) * 0.02)


def _lm_head(embedding: TokenEmbedding, x: torch.Tensor) -> torch.Tensor:
    return x @ embedding.weight.t()


class PositionEmbedding(nn.Module):
    """x + wpe; with sequence parallelism it also hands each tensor rank its [seq/tp, batch, hidden] tokens."""

    def __init__(self, cfg: GPTConfig, seed: int, sp: bool = False):
        super().__init__()
        self.sp = sp
        self.wpe = nn.Embedding(cfg.max_seq_len, cfg.hidden)
        with torch.no_grad():
            self.wpe.weight.copy_(torch.randn(self.wpe.weight.shape, generator=_generator(seed, "wpe")) * 0.01)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.wpe(torch.arange(x.shape[1], device=x.device))
        return seqpar.to_sequence_shards(x) if self.sp else x


class FinalNorm(nn.LayerNorm):
    """ln_f; with sequence parallelism it normalizes this rank's tokens, then gathers [batch, seq, hidden]."""

    def __init__(self, hidden: int, sp: bool = False):
        super().__init__(hidden)
        self.sp = sp
        if sp:
            seqpar.mark_sequence_parallel(self.weight, self.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return seqpar.from_sequence_shards(super().forward(x)) if self.sp else super().forward(x)


class PipeBlock(Block):
    """One transformer block, built with the single-process seed stream, then sharded over tp when tp > 1."""

    def __init__(self, cfg: GPTConfig, seed: int, index: int, tp: int, sp: bool = False):
        super().__init__(cfg)
        init_block(self, cfg, seed, index)
        self.sp = sp
        self.input_shape: tuple = ()   # the last activation this block received (rank_facts reports it)
        if tp > 1:
            shard_to_megatron(self, cfg, tp, sp)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.input_shape = tuple(x.shape)
        return seqpar.block(self, x) if self.sp else super().forward(x)


def build_pipeline(run: RunConfig, seed: int, init_state: dict | None):
    """PipelineModule over a topology that matches Megatron's groups; every stage holds n_layers/pp blocks."""
    from deepspeed.pipe import LayerSpec, PipelineModule, TiedLayerSpec
    from deepspeed.runtime.pipe.topology import PipeModelDataParallelTopology

    tp_rank = init_model_parallel(run.layout.tp, run.layout.pp) if run.layout.tp > 1 else 0
    cfg, sp = run.model, run.layout.sequence_parallel
    specs = [TiedLayerSpec("wte", TokenEmbedding, cfg, seed, tied_weight_attr="weight"),
             LayerSpec(PositionEmbedding, cfg, seed, sp)]
    specs += [LayerSpec(PipeBlock, cfg, seed, i, run.layout.tp, sp) for i in range(cfg.n_layers)]
    specs += [LayerSpec(FinalNorm, cfg.hidden, sp),
              TiedLayerSpec("wte", TokenEmbedding, cfg, seed, forward_fn=_lm_head, tied_weight_attr="weight")]
    topology = PipeModelDataParallelTopology(num_pp=run.layout.pp, num_mp=run.layout.tp, num_dp=run.layout.dp)
    recompute = run.layout.checkpointing == "full"
    module = PipelineModule(layers=specs, topology=topology, loss_fn=lambda logits, y: lm_loss(logits, y),
                            partition_method="type:PipeBlock", activation_checkpoint_interval=1 if recompute else 0,
                            activation_checkpoint_func=functools.partial(checkpoint, use_reentrant=False))
    if init_state is not None:
        load_full_state_into_pipeline(module, init_state, run)
    _count_each_stage_once_in_grad_norm(module, tp_rank)
    return module


def _count_each_stage_once_in_grad_norm(module, tp_rank: int) -> None:
    """Make gradient clipping see every parameter exactly once.

    DeepSpeed counts a parameter that is not tensor-parallel only where the model-parallel rank is 0;
    on a pipeline grid that rank spans stages × tensor ranks (fp32 ZeRO-0 path, runtime/utils.py
    clip_grad_norm_), so later stages' LayerNorms and biases dropped out of the norm. Marked
    model_parallel on tensor rank 0 of every stage, each is counted once in every DeepSpeed path; the
    last stage's copy of the tied embedding (ds_pipe_replicated) stays out.
    """
    if tp_rank != 0:
        return
    for p in module.parameters():
        if not getattr(p, "tensor_model_parallel", False) and not getattr(p, "ds_pipe_replicated", False):
            p.model_parallel = True


def load_full_state_into_pipeline(module, state: dict, run: RunConfig) -> None:
    """Copy a whole-model state dict (GPT names, e.g. from --init-from) into this stage's layers."""
    with torch.no_grad():
        for offset, layer in enumerate(module.forward_funcs):
            index = module._local_start + offset   # spec index: 0 wte, 1 wpe, 2.. blocks, then ln_f, head
            if isinstance(layer, PositionEmbedding):
                layer.wpe.weight.copy_(state["wpe.weight"])
            elif isinstance(layer, PipeBlock):
                prefix = f"h.{index - 2}."
                layer.load_state_dict({k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)})
            elif isinstance(layer, FinalNorm):
                layer.load_state_dict({"weight": state["ln_f.weight"], "bias": state["ln_f.bias"]})
        for embedding in module.tied_modules.values():
            embedding.weight.copy_(state["wte.weight"])
