"""DeepSpeed-Ulysses context parallelism on the ZeRO engine: each of cp ranks holds seq/cp tokens of every sequence.

Attention is the only place tokens meet. DeepSpeed's DistributedAttention (deepspeed/sequence/layer.py)
all-to-alls q, k and v from [batch, seq/cp, heads, head_dim] to [batch, seq, heads/cp, head_dim], so each rank
attends over the whole sequence for its heads, and all-to-alls the output back; its backward is the reverse
all-to-all. Everything else (embeddings, LayerNorms, MLPs, the LM head) works token by token on the slice.

Groups are DeepSpeed's own Ulysses mpu (deepspeed/runtime/sequence_parallel/parallel_state_sp.py): cp
consecutive ranks share a sequence (rank = dp_rank·cp + cp_rank), and all dp·cp ranks form the
sequence-data-parallel group. Given that mpu, the engine sums gradients over the dp·cp ranks and divides by
dp = world/cp (engine.py _reduce_non_expert_gradients), ZeRO partitions over the dp·cp ranks, and the batch
arithmetic counts dp = world/cp (runtime/config.py). So each rank's loss is its tokens' share of the whole
sequence's mean (local mean / cp): the cp shares add up to the mean over all tokens of the sequence.
"""
from __future__ import annotations

import torch


def sequence_parallel_mpu(cp: int):
    """DeepSpeed's Ulysses process groups for cp ranks per sequence, to pass to deepspeed.initialize(mpu=...)."""
    import deepspeed.runtime.sequence_parallel.parallel_state_sp as mpu
    mpu.initialize_sequence_parallel(sequence_parallel_size=cp)
    return mpu


def distribute_attention(model, group, cp_rank: int, local_seq: int) -> None:
    """Wrap every block's attention in DistributedAttention over `group`; positions start at this rank's slice."""
    from deepspeed.sequence.layer import DistributedAttention
    for block in model.h:
        # [batch, seq, heads, head_dim]: heads (dim 2) are scattered, the sequence (dim 1) gathered.
        block.attn.distributed = DistributedAttention(block.attn.local_attention, group, scatter_idx=2, gather_idx=1)
    model.first_position = cp_rank * local_seq


def sequence_slice(t: torch.Tensor, cp_rank: int, cp: int) -> torch.Tensor:
    """This rank's seq/cp consecutive tokens of every sequence in a [batch, seq] tensor."""
    n = t.shape[1] // cp
    return t[:, cp_rank * n:(cp_rank + 1) * n].contiguous()
