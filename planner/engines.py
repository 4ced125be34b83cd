"""What each engine can run: the rules that refuse a layout, in the words of the engine's own checks.

DeepSpeed (shardplan's program, deepspeed/runtime/pipe, zero/): ZeRO 0-3, PipelineModule with even or
explicit partitions and no interleaving, Ulysses for context parallelism (deepspeed/sequence/layer.py:
an all-to-all over heads, so the heads must split over tp·cp); Megatron sequence parallelism runs in the
program on its Megatron-core layers, with tp × pp (the pipeline engine) and with tp alone (the ZeRO engine,
instead of AutoTP). Megatron-core (megatron/training/
arguments.py validate_args, megatron/core/parallel_state.py): zero_stage 1 is the distributed optimizer
(optimizer states sharded); 2 and 3 are Megatron-FSDP (--use-megatron-fsdp, planner/megatron/fsdp.py) with
--data-parallel-sharding-strategy optim_grads (optimizer states and gradients) and optim_grads_params (also the
weights), which validate_args allows only with --ckpt-format fsdp_dtensor and CUDA_DEVICE_MAX_CONNECTIONS
not 1; Megatron-FSDP has no CPU offload, and is planned with pp 1 only (Layout keeps ZeRO-2/3 off pipelines:
the combination is not validated upstream); uneven pipelines give only the first and last stage their own
layer counts (--decoder-first/last-pipeline-num-layers); interleaving needs equal layers per virtual
stage; context parallelism splits each sequence into 2·cp chunks for load balance.
"""
from __future__ import annotations

from .layout import Layout, divisors, even_stages
from .model import ModelSpec

ENGINES = ("deepspeed", "megatron")


def megatron_sharding(zero_stage: int) -> str:
    """What a ZeRO stage is on the Megatron engine, in Megatron-LM's words."""
    return ("no optimizer sharding (DDP)", "distributed optimizer", "Megatron-FSDP optim_grads",
            "Megatron-FSDP optim_grads_params")[int(zero_stage)]


def check_engine_layout(model: ModelSpec, layout: Layout, engine: str, seq_len: int,
                        cp_comm_type: str = "p2p") -> None:
    """Raise ValueError naming the engine's rule and the fix when `engine` cannot run `layout`."""
    if engine == "megatron":
        _megatron(model, layout, seq_len)
        split = layout.tp * layout.cp
        if layout.cp > 1 and cp_comm_type == "a2a" and not model.splits_heads(split):
            raise ValueError(f"--cp-comm-type a2a splits each tp rank's heads over cp: tp·cp = {split} must divide "
                             f"n_heads({model.n_heads}) and n_kv_heads({model.n_kv_heads}) of {model.name}; use "
                             "--cp-comm-type p2p, or a smaller --cp")
    elif engine in ("deepspeed", "torch"):
        _deepspeed(model, layout, seq_len)
    else:
        raise ValueError(f"engine({engine!r}) must be one of {', '.join(ENGINES)}")
    _experts(model, layout, engine)


def _experts(model: ModelSpec, layout: Layout, engine: str) -> None:
    """Expert parallelism: Megatron's validate_args and parallel_state (experts % ep, world % (etp·ep·pp),
    sequence parallelism with tp), DeepSpeed-MoE's groups.py and engine.py (ep_size divides the data-parallel
    group, experts % ep, no ZeRO-3 for native MoE layers)."""
    if not model.is_moe:
        if layout.ep > 1 or layout.etp > 1:
            raise ValueError(f"ep({layout.ep})/etp({layout.etp}) split experts, and {model.name} is dense; use "
                             "--ep 1 --etp 1, or an MoE model")
        return
    if model.experts % layout.ep:
        raise ValueError(f"ep({layout.ep}) must divide experts({model.experts}) of {model.name}; use --ep in "
                         f"{[d for d in divisors(model.experts) if d <= layout.world_size]}")
    if engine == "megatron":
        split = layout.etp * layout.ep * layout.pp
        if layout.world_size % split:
            raise ValueError(f"etp({layout.etp})·ep({layout.ep})·pp({layout.pp}) = {split} must divide the "
                             f"{layout.world_size} GPUs (Megatron's expert-data-parallel group is world/(etp·ep·pp))")
        if model.moe_ffn_hidden % layout.etp:
            raise ValueError(f"etp({layout.etp}) must divide the expert FFN width ({model.moe_ffn_hidden})")
        if layout.tp > 1 and not layout.sequence_parallel:
            raise ValueError(f"tp({layout.tp}) with MoE on Megatron needs sequence parallelism (the token "
                             "dispatcher works on the sequence-parallel shards); use --sp")
        return
    if layout.etp > 1 or layout.tp > 1:
        raise ValueError(f"tp({layout.tp})/etp({layout.etp}) with MoE: shardplan's DeepSpeed program splits experts "
                         "over ep only (deepspeed.moe.layer.MoE); use --tp 1 --etp 1, or --engine megatron")
    if layout.dp % layout.ep:
        raise ValueError(f"ep({layout.ep}) must divide dp({layout.dp}): DeepSpeed-MoE builds its expert-parallel "
                         "groups inside the data-parallel group; use --ep in "
                         f"{[d for d in divisors(layout.dp) if model.experts % d == 0]}")
    if int(layout.zero_stage) == 3:
        raise ValueError("zero_stage(3) with MoE: DeepSpeed refuses native MoE layers under ZeRO-3 "
                         "(engine._validate_zero3_moe_compatibility); use --zero 1 or 2")
    if layout.pp > 1 or layout.cp > 1:
        raise ValueError(f"pp({layout.pp})/cp({layout.cp}) with MoE: shardplan's DeepSpeed program runs MoE on the "
                         "ZeRO engine only; use --pp 1 --cp 1, or --engine megatron")


def _heads(model: ModelSpec, layout: Layout, split: int, what: str) -> None:
    if model.splits_heads(split):
        return
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
        return even_stages(n_layers, pp)
    return (rest - rest // 2,) + (middle,) * (pp - 2) + (rest // 2,)
