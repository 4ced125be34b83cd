"""GPT-2 for tp with pp 1 under Megatron sequence parallelism: Megatron-core layers, s/tp tokens per rank.

DeepSpeed's AutoTP (the program's plain tp path) has no sequence parallelism, so with the layout's
sequence_parallel the ZeRO engine gets this module instead: the single-process GPT (same seeded weights,
or --init-from's), its projections then sharded into Column/RowParallelLinear (megatron_layers.py).
The residual stream, the LayerNorms and the row biases run on this rank's [seq/tp, batch, hidden] tokens
(seqpar.py); the final norm's output is gathered back to the whole sequence for the replicated tied LM
head, so the loss is the full sequence's on every tensor rank.
"""
from __future__ import annotations

import torch
from torch.utils.checkpoint import checkpoint

from . import seqpar
from .megatron_layers import init_model_parallel, shard_to_megatron
from .model import GPT, GPTConfig, lm_loss


class SequenceParallelGPT(GPT):
    def __init__(self, cfg: GPTConfig, seed: int, tp: int, init_state: dict | None = None):
        super().__init__(cfg, seed)
        if init_state is not None:   # the whole model's weights, before each rank keeps its shard
            self.load_state_dict(init_state, strict=True)
        init_model_parallel(tp, 1)
        for block in self.h:
            shard_to_megatron(block, cfg, tp, sp=True)
        seqpar.mark_sequence_parallel(self.ln_f.weight, self.ln_f.bias)
        self.input_shape: tuple = ()   # the activation the first block received (rank_facts reports it)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None) -> torch.Tensor:
        x = seqpar.to_sequence_shards(self.wte(idx) + self.wpe(torch.arange(idx.shape[1], device=idx.device)))
        self.input_shape = tuple(x.shape)
        for block in self.h:
            if self.cfg.checkpointing == "full" and torch.is_grad_enabled():
                x = checkpoint(seqpar.block, block, x, use_reentrant=False)
            else:
                x = seqpar.block(block, x)
        logits = seqpar.from_sequence_shards(self.ln_f(x)) @ self.wte.weight.t()
        return logits if targets is None else lm_loss(logits, targets)
