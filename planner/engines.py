"""What each engine can run: the rules that refuse a layout, in the words of the engine's own checks.

DeepSpeed (shardplan's program, deepspeed/runtime/pipe, zero/): ZeRO 0-3, PipelineModule with even or
explicit partitions and no interleaving, Ulysses for context parallelism (deepspeed/sequence/layer.py:
an all-to-all over heads, so the heads must split over tp·cp). Megatron-core (megatron/training/
arguments.py validate_args, megatron/core/parallel_state.py): the distributed optimizer shards optimizer
states (ZeRO-1) and nothing more here; uneven pipelines give only the first and last stage their own
layer counts (--decoder-first/last-pipeline-num-layers); interleaving needs equal layers per virtual
stage; context parallelism splits each sequence into 2·cp chunks for load balance.
"""
from __future__ import annotations

from .layout import Layout
from .model import ModelSpec

ENGINES = ("deepspeed", "megatron")


def check_engine_layout(model: ModelSpec, layout: Layout, engine: str, seq_len: int) -> None:
    """Raise ValueError naming the engine's rule and the fix when `engine` cannot run `layout`."""
    if engine == "megatron":
        _megatron(model, layout, seq_len)
    elif engine in ("deepspeed", "torch"):
        _deepspeed(model, layout, seq_len)
    else:
        raise ValueError(f"engine({engine!r}) must be one of {', '.join(ENGINES)}")


def _heads(model: ModelSpec, layout: Layout, split: int, what: str) -> None:
    for name, heads in (("n_heads", model.n_heads), ("n_kv_heads", model.n_kv_heads)):
        if heads % split:
            raise ValueError(f"{what}({split}) must divide {name}({heads}) of {model.name}")


def _deepspeed(model: ModelSpec, layout: Layout, seq_len: int) -> None:
    if layout.vpp > 1:
        raise ValueError(f"vpp({layout.vpp}): DeepSpeed's PipelineModule has no interleaved schedule; "
                         "use --vpp 1, or --engine megatron")
    if sum(layout.stage_layers(model.n_layers)) != model.n_layers:
        raise ValueError(f"pp_layers {list(layout.pp_layers)} add up to {sum(layout.pp_layers)}, not "
                         f"n_layers({model.n_layers}) of {model.name}")
    if layout.cp > 1:
        if layout.pp > 1:
            raise ValueError(f"cp({layout.cp}) with pp({layout.pp}): DeepSpeed-Ulysses runs on the ZeRO engine, "
                             "not the pipeline engine; use --pp 1 or --engine megatron")
        _heads(model, layout, layout.tp * layout.cp, "tp·cp (Ulysses splits the heads over tp·cp)")
        if seq_len % layout.cp:
            raise ValueError(f"seq({seq_len}) must be a multiple of cp({layout.cp}): Ulysses splits the sequence "
                             "evenly over the cp ranks")


def _megatron(model: ModelSpec, layout: Layout, seq_len: int) -> None:
    if layout.pp > model.n_layers:
        raise ValueError(f"pp({layout.pp}) exceeds n_layers({model.n_layers}) of {model.name}: Megatron gives every "
                         "pipeline stage at least one layer")
    if int(layout.zero_stage) > 1:
        raise ValueError(f"zero_stage({int(layout.zero_stage)}) with --engine megatron: Megatron's distributed "
                         "optimizer shards the optimizer states (ZeRO-1); use --zero 1, or --engine deepspeed")
    if layout.offload != "none":
        raise ValueError(f"offload({layout.offload!r}) is modelled for DeepSpeed only; use --offload none, or "
                         "--engine deepspeed")
    _heads(model, layout, layout.tp, "tp")
    if layout.cp > 1 and seq_len % (2 * layout.cp):
        raise ValueError(f"seq({seq_len}) must be a multiple of 2·cp = {2 * layout.cp}: Megatron splits each "
                         "sequence into 2·cp chunks to balance causal attention over the cp ranks")
    stages = layout.stage_layers(model.n_layers)
    if sum(stages) != model.n_layers:
        if layout.pp_layers is None:
            raise ValueError(f"pp({layout.pp}) must divide n_layers({model.n_layers}) of {model.name}, or give "
                             "--pp-layers (Megatron's --decoder-first/last-pipeline-num-layers)")
        raise ValueError(f"pp_layers {list(layout.pp_layers)} add up to {sum(stages)}, not n_layers"
                         f"({model.n_layers}) of {model.name}")
    if layout.pp_layers is None and model.n_layers % layout.pp:
        raise ValueError(f"pp({layout.pp}) does not divide n_layers({model.n_layers}) of {model.name}: Megatron "
                         f"needs --pp-layers with the first and last stage's counts, e.g. "
                         f"--pp-layers {','.join(map(str, uneven_stages(model.n_layers, layout.pp)))}")
    if layout.pp > 2 and len(set(stages[1:-1])) > 1:
        raise ValueError(f"pp_layers {list(stages)}: Megatron gives only the first and last stage their own "
                         "counts; the middle stages must hold equal layers")
    if layout.vpp > 1 and any(n % layout.vpp for n in stages):
        raise ValueError(f"vpp({layout.vpp}) must divide every stage's layers {list(stages)}: each virtual "
                         "stage holds the same number of layers")


def uneven_stages(n_layers: int, pp: int) -> tuple[int, ...]:
    """Megatron's uneven split when pp does not divide the layers: equal middle stages, the first and last
    stage take what is left (fewer layers there also leaves room for the embedding and the loss)."""
    middle = -(-n_layers // pp)
    rest = n_layers - middle * (pp - 2)
    if pp <= 2 or rest < 2:
        base, extra = divmod(n_layers, pp)
        return tuple(base + (1 if i < extra else 0) for i in range(pp))
    return (rest - rest // 2,) + (middle,) * (pp - 2) + (rest // 2,)
