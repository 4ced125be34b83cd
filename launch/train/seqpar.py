"""Megatron sequence parallelism for the program's Megatron-layer blocks: each tensor rank holds s/tp tokens
between them (the tp × pp pipeline, pipe.py, and tp with pp 1, sp_gpt.py).

Megatron's pattern (Korthikanti et al. 2022, megatron/core/tensor_parallel/mappings.py and layers.py):
the residual stream, the LayerNorms and the row layers' bias add run on this rank's s/tp tokens in
[seq, batch, hidden]; a column layer all-gathers the sequence first (its backward reduce-scatters the
input gradient) and a row layer reduce-scatters its partial sums where plain tensor parallelism
all-reduces them. The mappings are written here against the input's device because megatron-core
0.16.1's own (and ColumnParallelLinear's sequence_parallel path) allocate their buffers with
torch.cuda.current_device(), which a CPU run on gloo does not have; the weights stay megatron-core's
ColumnParallelLinear / RowParallelLinear. The norms' and row biases' gradients are sums over this
rank's tokens only, so each is summed over the tp group as backward produces it, before the gradient
reaches the parameter (mark_sequence_parallel). Megatron-core sums them once per step instead, in
finalize_model_grads after the last micro-batch; DeepSpeed's ZeRO-2/3 engines reduce and free p.grad
inside backward, so there is no "after backward, before the step" slot there, and one way serves both
engines here.
"""
from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint


def tp_group():
    from megatron.core import parallel_state
    return parallel_state.get_tensor_model_parallel_group()


def _all_gather(x: torch.Tensor) -> torch.Tensor:
    group = tp_group()
    out = torch.empty((x.shape[0] * dist.get_world_size(group), *x.shape[1:]), dtype=x.dtype, device=x.device)
    dist.all_gather_into_tensor(out, x.contiguous(), group=group)
    return out


def _reduce_scatter(x: torch.Tensor) -> torch.Tensor:
    group = tp_group()
    n = dist.get_world_size(group)
    if x.shape[0] % n:
        raise ValueError(f"sequence length {x.shape[0]} is not a multiple of tp ({n})")
    out = torch.empty((x.shape[0] // n, *x.shape[1:]), dtype=x.dtype, device=x.device)
    dist.reduce_scatter_tensor(out, x.contiguous(), group=group)
    return out


def _split(x: torch.Tensor) -> torch.Tensor:
    group = tp_group()
    n = dist.get_world_size(group)
    if x.shape[0] % n:
        raise ValueError(f"sequence length {x.shape[0]} is not a multiple of tp ({n})")
    return x.chunk(n, dim=0)[dist.get_rank(group)].contiguous()


class _Scatter(torch.autograd.Function):
    """Keep this rank's tokens; backward all-gathers the gradient (scatter_to_sequence_parallel_region)."""

    @staticmethod
    def forward(ctx, x):
        return _split(x)

    @staticmethod
    def backward(ctx, grad):
        return _all_gather(grad)


class _Gather(torch.autograd.Function):
    """All-gather the sequence (gather_from_sequence_parallel_region); backward reduce-scatters a partial
    gradient (what follows is tensor-parallel) or keeps this rank's slice of a replicated one."""

    @staticmethod
    def forward(ctx, x, grad_is_partial: bool):
        ctx.grad_is_partial = grad_is_partial
        return _all_gather(x)

    @staticmethod
    def backward(ctx, grad):
        return (_reduce_scatter(grad) if ctx.grad_is_partial else _split(grad)), None


class _ReduceScatter(torch.autograd.Function):
    """Sum the row layer's partial outputs, keep this rank's tokens; backward all-gathers the gradient."""

    @staticmethod
    def forward(ctx, x):
        return _reduce_scatter(x)

    @staticmethod
    def backward(ctx, grad):
        return _all_gather(grad)


def to_sequence_shards(x: torch.Tensor) -> torch.Tensor:
    """[batch, seq, hidden] replicated over tp -> this rank's [seq/tp, batch, hidden]."""
    return _Scatter.apply(x.transpose(0, 1).contiguous())


def from_sequence_shards(x: torch.Tensor) -> torch.Tensor:
    """This rank's [seq/tp, batch, hidden] -> [batch, seq, hidden] for the replicated LM head."""
    return _Gather.apply(x, False).transpose(0, 1)


def gather_sequence(x: torch.Tensor) -> torch.Tensor:
    """Before a column layer: the whole sequence; backward reduce-scatters the partial input gradient."""
    return _Gather.apply(x, True)


def reduce_scatter_sequence(x: torch.Tensor) -> torch.Tensor:
    """After a row layer's matmul: the summed output for this rank's tokens."""
    return _ReduceScatter.apply(x)


def attention(attn: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """model.Attention on [seq/tp, batch, hidden]: heads see the gathered sequence, the output is reduce-scattered."""
    qkv = attn.c_attn(x)                       # [seq, batch, 3·hidden/tp]: the column layer gathered the sequence
    T, B = qkv.shape[:2]
    q, k, v = (t.view(T, B, -1, attn.head_dim).permute(1, 2, 0, 3) for t in qkv.chunk(3, dim=-1))
    if attn.selective and torch.is_grad_enabled():
        y = checkpoint(attn._core, q, k, v, use_reentrant=False)
    else:
        y = attn._core(q, k, v)
    return attn.c_proj(y.permute(2, 0, 1, 3).reshape(T, B, -1))


def block(blk: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """model.Block with the residual stream and the norms on this rank's tokens."""
    x = x + attention(blk.attn, blk.ln_1(x))
    return x + blk.mlp.c_proj(F.gelu(blk.mlp.c_fc(blk.ln_2(x)), approximate="tanh"))


def _sum_over_tp(grad: torch.Tensor) -> torch.Tensor:
    summed = grad.clone()
    dist.all_reduce(summed, group=tp_group())
    return summed


def mark_sequence_parallel(*params: nn.Parameter) -> None:
    """Parameters applied to this rank's tokens only (norms, row biases): their gradient is summed over tp.

    A tensor hook on the leaf runs before the gradient is accumulated into p.grad, so DeepSpeed's own
    gradient hooks (ZeRO-2/3 reduce-scatter, the pipeline's data-parallel reduce) see the full-sequence
    gradient, identical on every tensor rank; clipping counts it once (not tensor_model_parallel).
    """
    for p in params:
        p.sequence_parallel = True   # megatron-core's mark (finalize_model_grads reads it)
        p.register_hook(_sum_over_tp)
