"""GPT-2 as a DeepSpeed PipelineModule, with Megatron-core tensor-parallel layers for tp × pp × dp.

AutoTP shards a plain module inside deepspeed.initialize, but on a PipelineModule its tensor-parallel
groups do not match the pipeline grid, so 3D uses the Megatron-DeepSpeed pattern instead:
megatron.core.parallel_state builds the tp/pp/dp groups, DeepSpeed's PipeModelDataParallelTopology
describes the same rank order (tensor fastest, then data, then pipe), and the projections are
Megatron ColumnParallelLinear / RowParallelLinear holding this rank's shard of the seeded full weights.
With the layout's sequence_parallel, the residual stream between blocks holds s/tp tokens per rank
(seqpar.py): the position embedding scatters the sequence, the final norm gathers it back.
"""
from __future__ import annotations

import functools

import torch
import torch.nn as nn
from torch.utils.checkpoint import checkpoint

from . import seqpar
from .config import RunConfig
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
            _shard_to_megatron(self, cfg, tp, sp)
        if sp:
            seqpar.mark_sequence_parallel(*self.ln_1.parameters(), *self.ln_2.parameters(),
                                          self.attn.c_proj.bias, self.mlp.c_proj.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.input_shape = tuple(x.shape)
        return seqpar.block(self, x) if self.sp else super().forward(x)


def _megatron_config(tp: int):
    from megatron.core.model_parallel_config import ModelParallelConfig
    return ModelParallelConfig(tensor_model_parallel_size=tp, use_cpu_initialization=True,
                               perform_initialization=False, gradient_accumulation_fusion=False,
                               params_dtype=torch.float32)


def _no_init(weight: torch.Tensor) -> None:
    """The shard is copied from the seeded full weight instead."""


def _shard_to_megatron(block: Block, cfg: GPTConfig, tp: int, sp: bool = False) -> None:
    from megatron.core import parallel_state
    from megatron.core.tensor_parallel import ColumnParallelLinear, RowParallelLinear
    from megatron.core.tensor_parallel.layers import set_tensor_model_parallel_attributes

    # Megatron layers return (output, bias); the block wants the output (bias already added).
    class Column(ColumnParallelLinear):
        def forward(self, x):
            return super().forward(x)[0]

    class Row(RowParallelLinear):
        def forward(self, x):
            return super().forward(x)[0]

    # Sequence parallel: the column layer all-gathers the sequence (no dgrad all-reduce: the gather's backward
    # reduce-scatters it), the row layer reduce-scatters its partial sums, then adds the bias on s/tp tokens.
    class SPColumn(ColumnParallelLinear):
        def forward(self, x):
            return super().forward(seqpar.gather_sequence(x))[0]

    class SPRow(RowParallelLinear):
        def forward(self, x):
            return seqpar.reduce_scatter_sequence(torch.matmul(x, self.weight.t())) + self.bias

    if sp:
        Column, Row = SPColumn, SPRow   # noqa: F811

    rank = parallel_state.get_tensor_model_parallel_rank()
    config = _megatron_config(tp)
    for owner, name, kind in ((block.attn, "c_attn", "qkv"), (block.mlp, "c_fc", "column"),
                              (block.attn, "c_proj", "row"), (block.mlp, "c_proj", "row")):
        full: nn.Linear = getattr(owner, name)
        w, b = full.weight.detach(), full.bias.detach()
        if kind == "row":
            layer = Row(full.in_features, full.out_features, config=config, init_method=_no_init, bias=True,
                        input_is_parallel=True, skip_bias_add=False)
            shard_w, shard_b = w.chunk(tp, dim=1)[rank], b
        else:
            layer = Column(full.in_features, full.out_features, config=config, init_method=_no_init, bias=True,
                           gather_output=False, disable_grad_reduce=sp)
            if kind == "qkv":   # [q; k; v] viewed as [3, -1, in]: each rank takes its heads of all three
                shard_w = w.view(3, -1, w.shape[1]).chunk(tp, dim=1)[rank].reshape(-1, w.shape[1])
                shard_b = b.view(3, -1).chunk(tp, dim=1)[rank].reshape(-1)
            else:
                shard_w, shard_b = w.chunk(tp, dim=0)[rank], b.chunk(tp, dim=0)[rank]
        with torch.no_grad():
            layer.weight.copy_(shard_w)
            layer.bias.copy_(shard_b)
        # Megatron marks weights tensor-parallel only when it initializes them itself (perform_initialization);
        # DeepSpeed's gradient norm needs the mark to count every rank's shard.
        set_tensor_model_parallel_attributes(layer.weight, True, 1 if kind == "row" else 0, 1)
        setattr(owner, name, layer)


def build_pipeline(run: RunConfig, seed: int, init_state: dict | None):
    """PipelineModule over a topology that matches Megatron's groups; every stage holds n_layers/pp blocks."""
    from deepspeed.pipe import LayerSpec, PipelineModule, TiedLayerSpec
    from deepspeed.runtime.pipe.topology import PipeModelDataParallelTopology

    if run.layout.tp > 1:
        from megatron.core import parallel_state
        if not parallel_state.model_parallel_is_initialized():
            parallel_state.initialize_model_parallel(run.layout.tp, run.layout.pp, create_gloo_process_groups=False)
    cfg, sp = run.model, run.layout.sequence_parallel
    specs = [TiedLayerSpec("wte", TokenEmbedding, cfg, seed, tied_weight_attr="weight"),
             LayerSpec(PositionEmbedding, cfg, seed, sp)]
    specs += [LayerSpec(PipeBlock, cfg, seed, i, run.layout.tp, sp) for i in range(cfg.n_layers)]
    specs += [LayerSpec(FinalNorm, cfg.hidden, sp),
              TiedLayerSpec("wte", TokenEmbedding, cfg, seed, forward_fn=_lm_head, tied_weight_attr="weight")]
    SequenceParallelPipeline = _sequence_parallel_pipeline()
    topology = PipeModelDataParallelTopology(num_pp=run.layout.pp, num_mp=run.layout.tp, num_dp=run.layout.dp)
    recompute = run.layout.checkpointing == "full"
    module = (SequenceParallelPipeline if sp else PipelineModule)(layers=specs, topology=topology, loss_fn=lambda logits, y: lm_loss(logits, y),
                            partition_method="type:PipeBlock", activation_checkpoint_interval=1 if recompute else 0,
                            activation_checkpoint_func=functools.partial(checkpoint, use_reentrant=False))
    if init_state is not None:
        load_full_state_into_pipeline(module, init_state, run)
    tp_rank = 0
    if run.layout.tp > 1:
        from megatron.core import parallel_state
        tp_rank = parallel_state.get_tensor_model_parallel_rank()
    _count_each_stage_once_in_grad_norm(module, tp_rank)
    return module


def _sequence_parallel_pipeline():
    from deepspeed.pipe import PipelineModule

    class SequenceParallelPipeline(PipelineModule):
        """A PipelineModule whose sequence-parallel gradients are summed over the tp group once per step.

        DeepSpeed's pipeline engine sums the gradient of every (weight, group) this method returns in its
        ReduceTiedGrads instruction, after the last backward and before the data-parallel reduce and the
        optimizer step (runtime/pipe/engine.py _exec_reduce_tied_grads); the norms and row biases marked
        `sequence_parallel` are added with the tp group, as megatron-core's finalize_model_grads does.
        """

        def get_tied_weights_and_groups(self):
            group = seqpar.tp_group()
            return super().get_tied_weights_and_groups() + \
                [(p, group) for p in self.parameters() if getattr(p, "sequence_parallel", False)]

    return SequenceParallelPipeline


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
