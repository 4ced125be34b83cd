"""Cross-field rules a JSON Schema cannot say: batch arithmetic against the world size and tp·pp,
precision, ZeRO stage versus pipeline parallelism and offload, AutoTP degrees. Each rule reads the
config defensively (the schema reports wrong types; rules only look at well-typed values)."""
from __future__ import annotations

from typing import Any

from .problems import Problem, Topology

BATCH_KEYS = ("train_batch_size", "train_micro_batch_size_per_gpu", "gradient_accumulation_steps")
_ZERO3_ONLY = (
    "stage3_prefetch_bucket_size", "stage3_param_persistence_threshold", "stage3_model_persistence_threshold",
    "stage3_max_live_parameters", "stage3_max_reuse_distance", "stage3_gather_16bit_weights_on_model_save",
    "stage3_module_granularity_threshold", "stage3_use_all_reduce_for_fetch_params", "stage3_allgather_sequential",
    "prefetch_bucket_size", "param_persistence_threshold", "model_persistence_threshold", "max_live_parameters",
    "max_reuse_distance", "gather_16bit_weights_on_model_save", "module_granularity_threshold",
    "use_all_reduce_for_fetch_params", "allgather_sequential", "sub_group_size", "offload_param",
    "zero_quantized_weights", "zero_quantized_nontrainable_weights", "zero_hpz_partition_size",
    "memory_efficient_linear", "override_module_apply")


def _int(value: Any) -> int | None:
    """A positive whole number (5e8 written as a float counts), else None."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    if isinstance(value, float) and not value.is_integer():
        return None
    return int(value) if value >= 1 else None


def _section(config: dict[str, Any], key: str) -> dict[str, Any]:
    value = config.get(key)
    return value if isinstance(value, dict) else {}


def zero_stage(config: dict[str, Any]) -> int:
    zero = config.get("zero_optimization")
    if isinstance(zero, bool):
        return int(zero)
    stage = _section(config, "zero_optimization").get("stage", 0)
    return stage if isinstance(stage, int) and not isinstance(stage, bool) and 0 <= stage <= 3 else 0


def _enabled(section: dict[str, Any]) -> bool:
    return section.get("enabled") is True


def topology(config: dict[str, Any], world_size: int | None, tp: int, pp: int,
             heads: int | None) -> tuple[Topology, list[Problem]]:
    """Combine the command-line sizes with what the config says (autotp_size, pipeline.stages,
    sequence_parallel_size). Without a world size, the batch numbers imply one when all three are given."""
    out: list[Problem] = []
    autotp = _int(_section(config, "tensor_parallel").get("autotp_size"))
    if autotp and autotp > 1:
        if tp == 1:
            tp = autotp
        elif tp != autotp:
            out.append(Problem("$.tensor_parallel.autotp_size", f"tensor_parallel.autotp_size is {autotp} but the "
                               f"tensor-parallel degree given is --tp {tp}",
                               f"make them equal: autotp_size {tp} or --tp {autotp}"))
    stages = _int(_section(config, "pipeline").get("stages"))
    if stages and stages > 1:
        if pp == 1:
            pp = stages
        elif pp != stages:
            out.append(Problem("$.pipeline.stages", f"pipeline.stages is {stages} but --pp is {pp}",
                               f"make them equal: pipeline.stages {pp} or --pp {stages}"))
    sp = _int(config.get("sequence_parallel_size")) or 1
    model_parallel = tp * pp * sp
    if world_size is not None:
        if world_size % model_parallel:
            out.append(Problem("--world-size", f"world size {world_size} is not divisible by tp({tp}) x pp({pp})"
                               + (f" x sequence_parallel_size({sp})" if sp > 1 else "")
                               + f" = {model_parallel}, so there is no whole data-parallel size",
                               f"use a world size that is a multiple of {model_parallel}"))
        return Topology(world_size, tp, pp, sp, heads, "given"), out
    train, micro, accum = (_int(config.get(k)) for k in BATCH_KEYS)
    if train and micro and accum and train % (micro * accum) == 0:
        return Topology(train // (micro * accum) * model_parallel, tp, pp, sp, heads, "batch"), out
    return Topology(model_parallel, tp, pp, sp, heads, "default"), out


def _world_text(topo: Topology) -> str:
    parts = f"world size {topo.world_size}"
    if topo.tp * topo.pp * topo.sp > 1:
        parts += f" / (tp {topo.tp} x pp {topo.pp}" + (f" x sp {topo.sp}" if topo.sp > 1 else "") + ")"
    if topo.source == "default":
        parts += ", assumed: pass --world-size"
    return parts


def batch_arithmetic(config: dict[str, Any], topo: Topology) -> list[Problem]:
    """DeepSpeed's rule (runtime/config.py _set_batch_related_parameters + _batch_assertion): any two of
    train_batch_size, micro-batch and gradient accumulation determine the third (integer division), and
    train_batch_size == micro x grad_accum x dp must then hold exactly."""
    if any(k in config and _int(config[k]) is None for k in BATCH_KEYS):
        return []  # wrong types or values < 1: reported by the schema
    train, micro, accum = (_int(config.get(k)) for k in BATCH_KEYS)
    if topo.dp != int(topo.dp) or topo.dp < 1:
        return []  # reported by topology()
    dp = int(topo.dp)
    where = f"dp = {dp} ({_world_text(topo)})"
    if train is None and micro is None:
        return [Problem("$.train_batch_size", "neither train_batch_size nor train_micro_batch_size_per_gpu is set: "
                        "DeepSpeed cannot size a step", "set train_micro_batch_size_per_gpu (and "
                        "gradient_accumulation_steps), or train_batch_size")]
    if train is None:
        return []  # DeepSpeed derives train_batch_size = micro x accum x dp
    if micro is not None and accum is not None:
        if train == micro * accum * dp:
            return []
        fix = f"set train_batch_size to {micro * accum * dp}"
        if train % (micro * dp) == 0:
            fix += f", or gradient_accumulation_steps to {train // (micro * dp)}"
        return [Problem("$.train_batch_size", f"train_batch_size {train} != train_micro_batch_size_per_gpu {micro} "
                        f"x gradient_accumulation_steps {accum} x {where} = {micro * accum * dp}", fix)]
    if micro is not None:
        if train % (micro * dp) == 0:
            return []
        return [Problem("$.train_batch_size", f"train_batch_size {train} is not a multiple of "
                        f"train_micro_batch_size_per_gpu {micro} x {where} = {micro * dp}, so no whole "
                        "gradient_accumulation_steps exists",
                        f"use a train_batch_size that is a multiple of {micro * dp}")]
    per_rank = accum or 1
    if train % (per_rank * dp) == 0:
        return []
    key = "gradient_accumulation_steps" if accum else "data-parallel size"
    return [Problem("$.train_batch_size", f"train_batch_size {train} is not a multiple of "
                    + (f"gradient_accumulation_steps {accum} x " if accum else "") + f"{where}"
                    + (f" (it is smaller than the {key}: micro-batch would be 0)" if train < per_rank * dp else ""),
                    f"use a train_batch_size that is a multiple of {per_rank * dp}, or set "
                    "train_micro_batch_size_per_gpu instead")]


def precision(config: dict[str, Any]) -> list[Problem]:
    out = []
    fp16 = _section(config, "fp16")
    bf16_key = "bf16" if "bf16" in config else "bfloat16"
    bf16 = _section(config, bf16_key)
    if _enabled(fp16) and _enabled(bf16):
        out.append(Problem("$.fp16.enabled", f"fp16.enabled and {bf16_key}.enabled are both true: DeepSpeed trains "
                           "in one 16-bit format", "keep one: bf16 on GPUs that support it (A100, H100, ...), "
                           "fp16 otherwise"))
    stage = zero_stage(config)
    for section, name, key in ((fp16, "fp16", "fp16_master_weights_and_grads"),
                               (bf16, bf16_key, "bf16_master_weights_and_grads")):
        if section.get(key) is True and stage == 0:
            out.append(Problem(f"$.{name}.{key}", f"{name}.{key} needs ZeRO stage 1, 2 or 3, but "
                               "zero_optimization.stage is 0", "set zero_optimization.stage >= 1 or drop the key"))
    if bf16.get("bf16_optimizer_states") is True and bf16.get("bf16_master_weights_and_grads") is not True:
        out.append(Problem(f"$.{bf16_key}.bf16_optimizer_states", "bf16_optimizer_states needs "
                           "bf16_master_weights_and_grads", f"set {bf16_key}.bf16_master_weights_and_grads to true"))
    if _enabled(fp16) and fp16.get("loss_scale", 0) == 0:
        for key in ("loss_scale_window", "min_loss_scale"):
            value = fp16.get(key)
            if isinstance(value, (int, float)) and not isinstance(value, bool) and value <= 0:
                out.append(Problem(f"$.fp16.{key}", f"fp16.{key} is {value}: dynamic loss scaling "
                                   "(loss_scale 0) needs it > 0", f"set fp16.{key} to a positive integer"))
    return out


def zero_rules(config: dict[str, Any], topo: Topology) -> list[Problem]:
    out = []
    zero = _section(config, "zero_optimization")
    stage = zero_stage(config)
    if stage >= 2 and topo.pp > 1:
        out.append(Problem("$.zero_optimization.stage", f"ZeRO stage {stage} with pipeline parallelism (pp {topo.pp}): "
                           "DeepSpeed's PipelineEngine refuses ZeRO-2 and ZeRO-3 (it partitions gradients that "
                           "the pipeline accumulates per micro-batch)",
                           "use zero_optimization.stage 0 or 1 with pp > 1, or pp 1 with ZeRO-2/3"))
    if stage == 0 and any(k != "stage" for k in zero):
        keys = ", ".join(sorted(k for k in zero if k != "stage"))
        out.append(Problem("$.zero_optimization", f"zero_optimization.stage is 0 (ZeRO off), so the other keys "
                           f"in the block have no effect: {keys}", "set a stage >= 1 to use them, or remove them",
                           severity="warning"))
    offload_param = zero.get("offload_param")
    if stage in (1, 2) and isinstance(offload_param, dict) and offload_param.get("device") in ("cpu", "nvme"):
        out.append(Problem("$.zero_optimization.offload_param", f"offload_param (device "
                           f"{offload_param['device']!r}) needs ZeRO stage 3, but zero_optimization.stage is {stage}: "
                           "parameters would stay on the GPU", "set zero_optimization.stage to 3, or remove "
                           "offload_param (offload_optimizer works with stage 1 and 2)"))
    offload_optimizer = zero.get("offload_optimizer")
    if isinstance(offload_optimizer, dict):
        ratio = offload_optimizer.get("ratio", 1.0)
        if isinstance(ratio, (int, float)) and not isinstance(ratio, bool) and ratio < 1 and stage != 3:
            out.append(Problem("$.zero_optimization.offload_optimizer.ratio", f"offload_optimizer.ratio {ratio} "
                               f"(partial offload) needs ZeRO stage 3, but zero_optimization.stage is {stage}",
                               "set zero_optimization.stage to 3, or remove ratio (offload everything)"))
    for name, block in (("offload_param", offload_param), ("offload_optimizer", offload_optimizer)):
        if isinstance(block, dict) and block.get("device") == "nvme" and not block.get("nvme_path"):
            out.append(Problem(f"$.zero_optimization.{name}.nvme_path", f"{name}.device is \"nvme\" but nvme_path "
                               "is not set", f"set zero_optimization.{name}.nvme_path to a directory on the NVMe "
                               "drive (the same path on every node)"))
    if stage in (1, 2):
        stage3_keys = sorted(k for k in zero if k in _ZERO3_ONLY and k != "offload_param")
        if stage3_keys:
            out.append(Problem("$.zero_optimization", f"ZeRO-3 settings have no effect at stage {stage}: "
                               f"{', '.join(stage3_keys)}", "remove them, or set zero_optimization.stage to 3",
                               severity="warning"))
    op = config.get("gradient_allreduce_op")
    if isinstance(op, str) and op.lower() == "sum" and stage == 3:
        out.append(Problem("$.gradient_allreduce_op", "gradient_allreduce_op \"sum\" is not supported with ZeRO-3",
                           "use \"mean\" (the default) or a lower ZeRO stage"))
    return out


def tensor_parallel_rules(config: dict[str, Any], topo: Topology) -> list[Problem]:
    tp_section = _section(config, "tensor_parallel")
    autotp = _int(tp_section.get("autotp_size"))
    out = []
    if not autotp or autotp < 2:
        return out
    if topo.heads is not None and topo.heads % autotp:
        divisors = [d for d in range(1, min(topo.heads, 64) + 1) if topo.heads % d == 0]
        out.append(Problem("$.tensor_parallel.autotp_size", f"tensor_parallel.autotp_size {autotp} does not divide "
                           f"the model's {topo.heads} attention heads", "use a divisor of the head count: "
                           + ", ".join(map(str, divisors))))
    for key in ("tp", "tensor_parallel"):
        inner = _section(tp_section, key)
        size = inner.get("tp_size")
        if isinstance(size, int) and not isinstance(size, bool) and size not in (1, autotp):
            out.append(Problem(f"$.tensor_parallel.{key}.tp_size", f"tensor_parallel.{key}.tp_size {size} does not "
                               f"match tensor_parallel.autotp_size {autotp} (DeepSpeed raises at initialize)",
                               f"remove tp_size or set it to {autotp}"))
    return out


# deepspeed/runtime/engine.py _configure_basic_optimizer: these names (any case) are DeepSpeed's own; any other
# name is looked up as torch.optim.<name> (exact case). _scheduler_from_config: deepspeed.runtime.lr_schedules,
# then torch.optim.lr_scheduler.<name>. Lists from DeepSpeed 0.19.8 and torch 2.x.
DEEPSPEED_OPTIMIZERS = ("adagrad", "adam", "adamw", "lamb", "muadam", "muadamw", "musgd", "lion", "muon")
TORCH_OPTIMIZERS = ("ASGD", "Adadelta", "Adafactor", "Adagrad", "Adam", "AdamW", "Adamax", "LBFGS", "Muon", "NAdam",
                    "RAdam", "RMSprop", "Rprop", "SGD", "SparseAdam")
REMOVED_OPTIMIZERS = {"onebitadam": "1-bit Adam", "onebitlamb": "1-bit LAMB", "zerooneadam": "0/1 Adam"}
DEEPSPEED_SCHEDULERS = ("LRRangeTest", "OneCycle", "WarmupLR", "WarmupDecayLR", "WarmupCosineLR")
TORCH_SCHEDULERS = ("ChainedScheduler", "ConstantLR", "CosineAnnealingLR", "CosineAnnealingWarmRestarts", "CyclicLR",
                    "ExponentialLR", "LambdaLR", "LinearLR", "MultiStepLR", "MultiplicativeLR", "OneCycleLR",
                    "PolynomialLR", "ReduceLROnPlateau", "SequentialLR", "StepLR")


def _suggest(name: str, choices: tuple[str, ...]) -> str:
    import difflib

    lower = {c.lower(): c for c in choices}
    guesses = difflib.get_close_matches(name.lower(), list(lower), n=3, cutoff=0.6)
    return (f"did you mean {' or '.join(repr(lower[g]) for g in guesses)}?" if guesses
            else "use one of " + ", ".join(choices))


def optimizer_rules(config: dict[str, Any]) -> list[Problem]:
    out = []
    optimizer = _section(config, "optimizer")
    params = _section(optimizer, "params")
    if "max_grad_norm" in params:
        out.append(Problem("$.optimizer.params.max_grad_norm", "optimizer.params.max_grad_norm: deepspeed.initialize "
                           "raises ValueError for it when it builds the optimizer (DeepSpeed clips gradients itself)",
                           f"remove it and set the top-level \"gradient_clipping\": {params['max_grad_norm']!r}"))
    name = optimizer.get("type")
    if isinstance(name, str) and name.lower() not in DEEPSPEED_OPTIMIZERS and name not in TORCH_OPTIMIZERS:
        removed = REMOVED_OPTIMIZERS.get(name.lower())
        if removed:
            out.append(Problem("$.optimizer.type", f"optimizer {name!r}: {removed} was removed from DeepSpeed; "
                               "DeepSpeed 0.19.8's config parser still accepts the name but deepspeed.initialize "
                               f"refuses it (\"{name} is not a supported DeepSpeed Optimizer\"): will not run under "
                               "DeepSpeed 0.19.8",
                               "use \"Adam\" / \"AdamW\" (or \"Lamb\"), or pin an older DeepSpeed that ships it"))
        else:
            out.append(Problem("$.optimizer.type", f"optimizer {name!r} is neither a DeepSpeed optimizer "
                               f"({', '.join(DEEPSPEED_OPTIMIZERS)}, any case) nor torch.optim.{name}: "
                               "deepspeed.initialize refuses it",
                               _suggest(name, DEEPSPEED_OPTIMIZERS + TORCH_OPTIMIZERS)))
    scheduler = _section(config, "scheduler").get("type")
    if isinstance(scheduler, str) and scheduler not in DEEPSPEED_SCHEDULERS + TORCH_SCHEDULERS:
        out.append(Problem("$.scheduler.type", f"scheduler {scheduler!r} is neither in deepspeed.runtime.lr_schedules "
                           f"nor torch.optim.lr_scheduler: deepspeed.initialize refuses it (names are case-sensitive)",
                           _suggest(scheduler, DEEPSPEED_SCHEDULERS + TORCH_SCHEDULERS)))
    return out


def cross_field(config: dict[str, Any], topo: Topology, check_batch: bool = True) -> list[Problem]:
    return ((batch_arithmetic(config, topo) if check_batch else []) + precision(config) + zero_rules(config, topo)
            + tensor_parallel_rules(config, topo) + optimizer_rules(config))
