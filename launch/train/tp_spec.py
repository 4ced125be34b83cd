"""Tensor-parallel roles of the GPT-2 projections, by module name (torch-free: render imports this).

Names are the suffix after "h.<i>." in launch/train/model.py (the same as transformers' GPT2LMHeadModel).
AutoTP (pp == 1) matches them by regex through ds_config's tensor_parallel.partition_config; the 3D path
(pp > 1) shards the same modules with Megatron-core Column/RowParallelLinear.
"""
from __future__ import annotations

COLUMN_PARALLEL = ("attn.c_attn", "mlp.c_fc")      # output dim split; c_attn is fused [q; k; v]
ROW_PARALLEL = ("attn.c_proj", "mlp.c_proj")       # input dim split, all-reduce after
FUSED_QKV = "attn.c_attn"


def autotp_partition_config() -> dict:
    """ds_config["tensor_parallel"]["partition_config"] for this GPT-2 (DeepSpeed AutoTPConfig.from_dict).

    Fused qkv is viewed as shape [3, -1] so every rank gets its heads' q, k and v slices; everything
    not named (embeddings, LayerNorms) stays replicated, which keeps the tied embedding whole.
    """
    def pattern(name: str) -> str:
        return r".*\." + name.replace(".", r"\.") + r"\.weight$"

    return {
        "use_default_specs": False,
        "layer_specs": [
            {"patterns": [pattern(FUSED_QKV)], "partition_type": "column", "shape": [3, -1], "partition_dim": 0},
            {"patterns": [pattern(n) for n in COLUMN_PARALLEL if n != FUSED_QKV], "partition_type": "column"},
            {"patterns": [pattern(n) for n in ROW_PARALLEL], "partition_type": "row"},
        ],
    }
