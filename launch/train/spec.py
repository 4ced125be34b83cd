"""The training program's GPT-2 shape and the tensor-parallel roles of its projections (torch-free:
render and launch import this without paying for torch).

Names are the suffix after "h.<i>." in launch/train/model.py (the same as transformers' GPT2LMHeadModel).
AutoTP (pp == 1) matches them by regex through ds_config's tensor_parallel.partition_config; the 3D path
(pp > 1) shards the same modules with Megatron-core Column/RowParallelLinear.
"""
from __future__ import annotations

from dataclasses import dataclass

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


@dataclass(frozen=True)
class GPTConfig:
    n_layers: int
    hidden: int
    n_heads: int
    ffn_hidden: int
    vocab: int
    max_seq_len: int
    checkpointing: str = "none"   # none | full (per-block recompute) | selective (attention core only)
    # Mixture of experts (launch/train/moe.py; experts 0: dense). The blocks in moe_layers replace their MLP by
    # DeepSpeed's MoE layer: `experts` MLPs of moe_ffn_hidden, top_k per token, split over ep ranks.
    experts: int = 0
    top_k: int = 0
    moe_ffn_hidden: int = 0
    moe_layers: tuple[int, ...] = ()
    ep: int = 1

    def __post_init__(self) -> None:
        if self.hidden % self.n_heads:
            raise ValueError(f"n_heads({self.n_heads}) must divide hidden({self.hidden})")
        if self.checkpointing not in ("none", "full", "selective"):
            raise ValueError(f"checkpointing({self.checkpointing!r}) must be none, full or selective")

    @property
    def head_dim(self) -> int:
        return self.hidden // self.n_heads

    @classmethod
    def from_model_dict(cls, m: dict, checkpointing: str = "none", ep: int = 1) -> "GPTConfig":
        """From plan.json's best.model (ModelSpec.to_dict)."""
        if m.get("arch") != "gpt2":
            raise ValueError(f"model arch({m.get('arch')!r}): the training program builds GPT-2 only; "
                             "plan a gpt2 model (e.g. --model gpt2-demo) or train llama with your own program")
        if not m.get("tied_embeddings", True):
            raise ValueError("model tied_embeddings(False): this GPT-2 ties wte and the LM head; plan a tied model")
        if m.get("n_kv_heads", m["n_heads"]) != m["n_heads"]:
            raise ValueError(f"n_kv_heads({m['n_kv_heads']}) != n_heads({m['n_heads']}): GPT-2 has no GQA")
        moe = {}
        if m.get("experts"):
            if m.get("shared_experts"):
                raise ValueError(f"shared_experts({m['shared_experts']}): DeepSpeed's MoE layer has no shared "
                                 "experts; train this model with Megatron-LM (render --engine megatron)")
            dense = set(m.get("dense_layers") or ())
            moe = {"experts": m["experts"], "top_k": m["top_k"], "moe_ffn_hidden": m.get("moe_ffn_hidden") or
                   m["ffn_hidden"], "moe_layers": tuple(i for i in range(m["n_layers"]) if i not in dense), "ep": ep}
        return cls(n_layers=m["n_layers"], hidden=m["hidden"], n_heads=m["n_heads"], ffn_hidden=m["ffn_hidden"],
                   vocab=m["vocab"], max_seq_len=m["max_seq_len"], checkpointing=checkpointing, **moe)

    def shape_dict(self) -> dict:
        shape = {"n_layers": self.n_layers, "hidden": self.hidden, "n_heads": self.n_heads,
                 "ffn_hidden": self.ffn_hidden, "vocab": self.vocab, "max_seq_len": self.max_seq_len}
        if self.experts:   # only for MoE, so dense checkpoints' metadata stays what it was
            shape.update(experts=self.experts, top_k=self.top_k, moe_ffn_hidden=self.moe_ffn_hidden,
                         moe_layers=list(self.moe_layers))
        return shape
