"""Megatron-core tensor-parallel layers for the program's blocks: this rank's shard of the seeded full weights.

Both paths that run Megatron layers use them: the tp × pp pipeline (pipe.py) and tp with pp 1 under
sequence parallelism (sp_gpt.py; plain tp with pp 1 stays on DeepSpeed's AutoTP). megatron.core's
parallel_state builds the tp/pp/dp groups (tensor fastest, then data, then pipe); on CPU the layers are
built with use_cpu_initialization and no gradient-accumulation fusion, and hold a shard copied from the
single-process model's weights, so every layout starts from the same model.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from . import seqpar
from .model import Block, GPTConfig


def init_model_parallel(tp: int, pp: int) -> int:
    """Megatron's groups for tp × pp (once per process); returns this rank's tensor-parallel rank."""
    from megatron.core import parallel_state
    if not parallel_state.model_parallel_is_initialized():
        parallel_state.initialize_model_parallel(tp, pp, create_gloo_process_groups=False)
    return parallel_state.get_tensor_model_parallel_rank()


def _megatron_config(tp: int):
    from megatron.core.model_parallel_config import ModelParallelConfig
    return ModelParallelConfig(tensor_model_parallel_size=tp, use_cpu_initialization=True,
                               perform_initialization=False, gradient_accumulation_fusion=False,
                               params_dtype=torch.float32)


def _no_init(weight: torch.Tensor) -> None:
    """The shard is copied from the seeded full weight instead."""


def shard_to_megatron(block: Block, cfg: GPTConfig, tp: int, sp: bool = False) -> None:
    """Replace the block's projections by Column/RowParallelLinear holding this rank's shard of their weights.

    With sp the block runs through seqpar.block: its norms and row biases see this rank's tokens only, so
    their gradients are marked to be summed over tp (seqpar.mark_sequence_parallel).
    """
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
    if sp:
        seqpar.mark_sequence_parallel(*block.ln_1.parameters(), *block.ln_2.parameters(),
                                      block.attn.c_proj.bias, block.mlp.c_proj.bias)
