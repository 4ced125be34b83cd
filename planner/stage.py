"""What one rank holds of the model: parameters of its pipeline stage, after tensor-parallel splitting."""
from __future__ import annotations

from functools import lru_cache

from dataclasses import dataclass
from math import ceil

from .model import ModelSpec
from .moe import moe_layer_on_rank


@dataclass(frozen=True)
class StageShape:
    """The parameters one GPU of a pipeline stage holds (before ZeRO shards them over dp)."""

    params: int               # parameters on this rank
    layers: int               # transformer layers in this stage
    has_embedding: bool       # first stage: token (+ position) embedding
    has_head: bool            # last stage: final norm, LM head (a tied copy of wte under DeepSpeed's pipeline)
    largest_module: int       # the biggest single module (ZeRO-3 gathers one module at a time)
    expert_params: int = 0    # of params, the routed experts' (sharded over the expert-data-parallel group)
    moe_layers: int = 0       # of layers, the MoE ones


def layer_params_on_rank(model: ModelSpec, tp: int) -> int:
    """A layer's matrices and column-parallel biases split over tp; norms and row-parallel biases replicated."""
    h = model.hidden
    total = model.params_per_layer
    if model.arch == "gpt2":
        replicated = 4 * h + h + h            # two LayerNorms, c_proj and mlp c_proj biases
    else:
        replicated = 2 * h + (h if model.attention_bias else 0) + (h if model.mlp_bias else 0)
    return (total - replicated) // tp + replicated


@lru_cache(maxsize=8192)
def stage_shape(model: ModelSpec, tp: int, pp: int, first: bool, vocab_parallel: bool = False,
                layers: int | None = None, ep: int = 1, etp: int = 1) -> StageShape:
    """The first (first=True) or last pipeline stage. With pp=1 both are the whole model.

    layers: the stage's transformer layers (Layout.stage_layers); None means ceil(L/pp), the fullest even
    stage. The embedding is replicated over tp (AutoTP shards nn.Linear modules only; the tied LM head is a
    matmul with wte.weight, not a Linear) unless vocab_parallel (Megatron/nanotron split the vocabulary
    rows over tp). MoE layers (which of them fall in this stage) hold their dense part split over tp and
    experts/ep routed experts split over etp (planner/moe.py).
    """
    vshard = tp if vocab_parallel else 1
    layers = ceil(model.n_layers / pp) if layers is None else layers
    per_layer = layer_params_on_rank(model, tp)
    has_emb = first or pp == 1
    has_head = (not first) or pp == 1
    params = layers * per_layer
    experts = moe = 0
    if model.is_moe:
        start = 0 if (first or pp == 1) else model.n_layers - layers
        moe = model.moe_layers_in(start, start + layers)
        dense, experts = moe_layer_on_rank(model, tp, ep, etp)
        params += moe * (dense + experts - per_layer)
        experts *= moe
    vh = model.vocab * model.hidden // vshard
    if has_emb:
        params += model.embedding_params - model.vocab * model.hidden + vh
    if has_head:
        params += model.final_norm_params
        if not model.tied_embeddings:
            params += vh
        elif pp > 1:
            params += vh   # TiedLayerSpec: the last stage keeps its own copy of wte
    h, f = model.hidden, model.ffn_hidden
    biggest_matrix = max(h * (model.n_heads + 2 * model.n_kv_heads) * model.head_dim, h * f) // tp
    largest = max(biggest_matrix, vh if (has_emb or has_head) else 0)
    if model.is_moe:
        largest = max(largest, model.expert_params // etp)
    return StageShape(params, layers, has_emb, has_head, largest, experts, moe)
