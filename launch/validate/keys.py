"""Key-level checks of a DeepSpeed config: "auto" placeholders, removed features, deprecated keys and
unknown keys (with typo suggestions). Cross-field arithmetic lives in validate_rules.py."""
from __future__ import annotations

from typing import Any, Iterator

from .auto_fill import explain
from .problems import Problem
from .schema import close_matches, json_path

DEEPSPEED_VERSION_CHECKED = "0.19.8"
_ISSUE = "https://github.com/deepspeedai/DeepSpeed/issues/8489"

# deepspeed/runtime/config.py _REMOVED_TOP_LEVEL_CONFIG_KEYS / _REMOVED_ZERO_CONFIG_KEYS: DeepSpeed 0.19.8
# raises DeepSpeedConfigError at DeepSpeedConfig(...) when any of these is present. Value: (what, fix).
REMOVED_TOP_LEVEL: dict[str, tuple[str, str]] = {
    "nebula": ("Nebula checkpointing was removed", "remove the block; checkpoints use torch.save"),
    "compression_training": ("the DeepSpeed compression library was removed (the block would otherwise be "
                             "ignored and the model would train unquantized)",
                             "remove the block, or pin an older DeepSpeed that still ships deepspeed.compression"),
    "amp": ("NVIDIA Apex AMP integration was removed",
            "use \"fp16\": {\"enabled\": true} or \"bf16\": {\"enabled\": true} (or \"torch_autocast\") instead"),
    "quantize_training": ("Mixture-of-Quantization ('quantize_training') was removed", "remove the block"),
    "sparse_gradients": ("sparse compression of dense embedding gradients was removed (an embedding built "
                         "with sparse=True is still reduced sparsely without this flag)", "remove the key"),
    "eigenvalue": ("eigenvalue-based Mixture-of-Quantization was removed", "remove the block"),
    "sparse_attention": ("DeepSpeed Sparse Attention was removed", "remove the block"),
    "elasticity": ("elastic training was removed",
                   "remove the block and set train_batch_size / train_micro_batch_size_per_gpu / "
                   "gradient_accumulation_steps directly"),
    "graph_harvesting": ("graph harvesting was removed", "remove the key"),
    "curriculum_learning": ("the legacy top-level 'curriculum_learning' block was removed",
                            "move it to data_efficiency.data_sampling.curriculum_learning"),
    "progressive_layer_drop": ("Progressive Layer Dropping was removed", "remove the block"),
}
REMOVED_ZERO: dict[str, tuple[str, str]] = {
    "mics_shard_size": ("MiCS ZeRO-3 sharding was removed", "remove the key (plain ZeRO-3, or zero_hpz_partition_size "
                        "for hierarchical partitioning)"),
    "mics_hierarchical_params_gather": ("MiCS ZeRO-3 sharding was removed", "remove the key"),
    "zeropp_loco_param": ("LoCo-Zero++ was removed",
                          "remove the key to use standard ZeRO++ quantized gradients without LoCo error feedback"),
}
# Accepted by DeepSpeed with a deprecation warning: (replacement, fix).
DEPRECATED = {
    ("zero_optimization", "cpu_offload"): "\"offload_optimizer\": {\"device\": \"cpu\"}",
    ("zero_optimization", "cpu_offload_param"): "\"offload_param\": {\"device\": \"cpu\"}",
    ("zero_optimization", "cpu_offload_use_pin_memory"): "\"pin_memory\" inside offload_optimizer / offload_param",
    ("zero_optimization", "stage3_gather_fp16_weights_on_model_save"): "\"stage3_gather_16bit_weights_on_model_save\"",
    ("", "bfloat16"): "\"bf16\" (same keys)",
}
# "auto" values DeepSpeed itself understands (not Hugging Face placeholders).
NATIVE_AUTO = {
    ("pipeline", "stages"),
    ("zero_optimization", "zenflow", "select_strategy"),
    ("zero_optimization", "zenflow", "select_interval"),
    ("zero_optimization", "zenflow", "update_interval"),
    ("data_types", "keep_in_fp32_modules"),
}
# Top-level sections parsed by a pydantic DeepSpeedConfigModel, which drops "auto" values (non-strict mode)
# and silently uses its default instead.
_PYDANTIC_SECTIONS = {"zero_optimization", "fp16", "bf16", "bfloat16", "tensor_parallel", "compile",
                      "comms_logger", "tensorboard", "wandb", "csv_monitor", "comet", "hybrid_engine", "timers"}


def _auto_paths(node: Any, path: tuple) -> Iterator[tuple]:
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for key, value in items:
        if value == "auto" and path + (key,) not in NATIVE_AUTO:
            yield path + (key,)
        else:
            yield from _auto_paths(value, path + (key,))


def strip_auto(config: dict[str, Any]) -> list[tuple]:
    """Remove Hugging Face "auto" placeholders from `config` in place; return their paths."""
    paths = list(_auto_paths(config, ()))
    for path in reversed(paths):  # later list items first, so earlier indexes stay valid
        parent: Any = config
        for part in path[:-1]:
            parent = parent[part]
        del parent[path[-1]]
    return paths


def _auto_effect(path: tuple) -> str:
    if len(path) == 1:
        return "DeepSpeed alone compares it with numbers and fails with a TypeError"
    if path[0] in ("optimizer", "scheduler"):
        return "DeepSpeed alone passes the string to the optimizer / scheduler, which fails"
    if path[0] in _PYDANTIC_SECTIONS:
        return "DeepSpeed alone silently drops it and uses its own default"
    return "DeepSpeed alone does not resolve it"


def auto_values(config: dict[str, Any], allow_auto: bool) -> list[Problem]:
    """Report "auto" values, one problem per object that holds them (and remove them from `config`, so that
    the schema and the rules check the rest)."""
    groups: dict[tuple, list[tuple]] = {}
    for path in strip_auto(config):
        parent = path[:-1] if len(path) > 1 else path  # top-level keys each get their own problem
        groups.setdefault(parent, []).append(path)
    out = []
    for parent, paths in groups.items():
        where = json_path(paths[0]) if len(paths) == 1 else json_path(parent)
        keys = ", ".join(f"[{p[-1]}]" if isinstance(p[-1], int) else str(p[-1]) for p in paths)
        what = f"\"auto\" in {keys}" if len(paths) > 1 else "\"auto\""
        effect = _auto_effect(paths[0])
        # Per key: who fills it and from what (the Trainer, accelerate), not only "needs the integration".
        filled_by = "; filled by: " + " | ".join(dict.fromkeys(explain(p) for p in paths))
        if allow_auto:
            out.append(Problem(where, f"{what}: left for the Hugging Face Trainer / Accelerate integration to fill "
                               f"in (without it, {effect[0].lower() + effect[1:]}){filled_by}",
                               "keep using this config only through the Hugging Face integration, or replace "
                               "\"auto\" with a value", severity="warning"))
        else:
            out.append(Problem(where, f"{what}: a placeholder that only the Hugging Face Trainer / Accelerate "
                               f"integration fills in; will not run under DeepSpeed alone ({effect}){filled_by}",
                               "replace \"auto\" with a concrete value, or pass --allow-auto if this config is only "
                               "used through the Hugging Face integration"))
    return out


def removed_features(config: dict[str, Any]) -> list[Problem]:
    out = []
    for key, (what, fix) in REMOVED_TOP_LEVEL.items():
        if key in config:
            out.append(Problem(f"$.{key}", f"{what}: DeepSpeed {DEEPSPEED_VERSION_CHECKED} refuses a config with "
                               f"{key!r} (DeepSpeedConfigError, see {_ISSUE}); the config will not run under "
                               f"DeepSpeed {DEEPSPEED_VERSION_CHECKED} alone", fix))
    zero = config.get("zero_optimization")
    if isinstance(zero, dict):
        for key, (what, fix) in REMOVED_ZERO.items():
            if key in zero:
                out.append(Problem(f"$.zero_optimization.{key}", f"{what}: DeepSpeed {DEEPSPEED_VERSION_CHECKED} "
                                   f"refuses a config with zero_optimization.{key} (see {_ISSUE})", fix))
    return out


def _object_schema(schema: Any) -> dict[str, Any] | None:
    if not isinstance(schema, dict):
        return None
    if schema.get("type") == "object":
        return schema
    for branch in schema.get("anyOf", []):
        if isinstance(branch, dict) and branch.get("type") == "object":
            return branch
    return None


def _unknown_keys(node: Any, schema: Any, path: tuple, out: list[Problem]) -> None:
    obj_schema = _object_schema(schema)
    if not isinstance(node, dict) or obj_schema is None:
        if isinstance(node, list) and isinstance(schema, dict) and isinstance(schema.get("items"), dict):
            for i, item in enumerate(node):
                _unknown_keys(item, schema["items"], path + (i,), out)
        return
    props = obj_schema.get("properties")
    if props is None:
        return  # free-form (optimizer params, weight_quantization, ...)
    closed = obj_schema.get("additionalProperties") is False
    for key, value in node.items():
        if key in props:
            _unknown_keys(value, props[key], path + (key,), out)
            continue
        if closed:
            continue  # the schema reports it as an error
        where = "the top level" if not path else json_path(path)[2:]
        if key.startswith(("_", "#", "//")) or "comment" in key.lower():
            out.append(Problem(json_path(path + (key,)), f"{key!r} looks like a comment: DeepSpeed ignores it",
                               "nothing to do (JSON has no comments; this is the usual workaround)",
                               severity="warning"))
            continue
        guesses = close_matches(key, props)
        hint = f"did you mean {' or '.join(repr(g) for g in guesses)}?" if guesses else "remove it if it is a leftover"
        out.append(Problem(json_path(path + (key,)), f"{key!r} is not a DeepSpeed key at {where}: DeepSpeed "
                           "ignores it silently", hint, severity="warning"))


def key_problems(config: dict[str, Any], schema: dict[str, Any]) -> list[Problem]:
    """Removed features (errors), deprecated keys and unknown keys in open objects (warnings)."""
    out = removed_features(config)
    for (section, key), replacement in DEPRECATED.items():
        holder = config if not section else config.get(section)
        if isinstance(holder, dict) and key in holder:
            path = f"$.{section}.{key}" if section else f"$.{key}"
            out.append(Problem(path, f"{key!r} is deprecated (DeepSpeed still accepts it with a warning)",
                               f"use {replacement}", severity="warning"))
    if isinstance(config.get("zero_optimization"), bool):
        out.append(Problem("$.zero_optimization", "zero_optimization as true/false is the deprecated form "
                           "(true means stage 1)", "write \"zero_optimization\": {\"stage\": 1} (or 0)",
                           severity="warning"))
    _unknown_keys(config, schema, (), out)
    return out
