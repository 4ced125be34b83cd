"""Ask DeepSpeed's own config classes (deepspeed.runtime.config.DeepSpeedConfig) about a config, in process,
without a process group.

DeepSpeedConfig.__init__ takes the data-parallel world size from torch.distributed (or falls back to 1
when no process group exists). To check the batch arithmetic at the world size the user asked for without
starting a process group, this module runs the same steps __init__ runs after that lookup -- removed-key
check, _initialize_params, _configure_train_batch_size, _do_sanity_check -- on an instance whose
world_size is set to the data-parallel size. What DeepSpeed refuses becomes a Problem with source
"deepspeed"; what shardplan's schema and rules already reported is not repeated (the offending part is
repaired and DeepSpeed asked again, so it can still find what the rules do not know about).
"""
from __future__ import annotations

import contextlib
import copy
import logging
import sys
from typing import Any

from .problems import Problem, Topology
from .keys import REMOVED_TOP_LEVEL, REMOVED_ZERO, strip_auto
from .rules import BATCH_KEYS
from .schema import json_path

_MAX_ATTEMPTS = 8
# pydantic model title -> where its fields live in the config.
_SECTION_OF_MODEL = {
    "DeepSpeedZeroConfig": ("zero_optimization",), "DeepSpeedFP16Config": ("fp16",),
    "DeepSpeedBF16Config": ("bf16",), "TPTrainingConfig": ("tensor_parallel",), "CompileConfig": ("compile",),
    "CommsLoggerConfig": ("comms_logger",), "DeepSpeedMonitorConfig": (), "HybridEngineConfig": ("hybrid_engine",),
    "DeepSpeedThroughputTimerConfig": ("timers", "throughput"), "WeightQuantConfig": ("weight_quantization",),
}
# DeepSpeed assertion texts that restate a shardplan rule: (text, path of the rule's problem).
_SAME_AS_RULE = (
    ("Check batch related parameters", "$.train_batch_size"),
    ("has to be greater than 0", "$.train_batch_size"),
    ("Either train_batch_size or train_micro_batch_size_per_gpu", "$.train_batch_size"),
    ("bfloat16 and fp16 modes cannot be simultaneously enabled", "$.fp16.enabled"),
    ("Partial offloading only supported", "$.zero_optimization.offload_optimizer.ratio"),
    ("Fp16_master_weights_and_grads is only supported", "$.fp16.fp16_master_weights_and_grads"),
    ("Bf16_master_weights_and_grads is only supported", "$.bf16.bf16_master_weights_and_grads"),
    ("bf16_optimizer_states", "$.bf16.bf16_optimizer_states"),
    ("'sum' is not supported", "$.gradient_allreduce_op"),
)


def _overlaps(a: str, b: str) -> bool:
    return a == b or a.startswith(b + ".") or b.startswith(a + ".") or a.startswith(b + "[") or b.startswith(a + "[")


def _delete(config: dict[str, Any], parts: tuple) -> bool:
    node: Any = config
    for part in parts[:-1]:
        if isinstance(node, dict) and part in node:
            node = node[part]
        else:
            return False
    if isinstance(node, dict) and parts and parts[-1] in node:
        del node[parts[-1]]
        return True
    return False


def _consistent_batch(config: dict[str, Any], dp: int) -> None:
    for key in BATCH_KEYS:
        config.pop(key, None)
    config.update(train_batch_size=dp, train_micro_batch_size_per_gpu=1, gradient_accumulation_steps=1)


def _parse(ds_config_module, config: dict[str, Any], dp: float) -> None:
    cls = ds_config_module.DeepSpeedConfig
    cfg = cls.__new__(cls)
    cfg._param_dict = config
    ds_config_module._reject_removed_config_keys(config)
    cfg.global_rank = 0
    cfg.world_size = int(dp) if float(dp).is_integer() else dp
    cfg._initialize_params(copy.deepcopy(config))
    cfg._configure_train_batch_size()
    cfg._do_sanity_check()


def _problems_from(exc: BaseException, config: dict[str, Any], version: str) -> list[tuple[Problem, tuple]]:
    """(problem, config path to delete to get past it) for each thing DeepSpeed refused."""
    from pydantic import ValidationError

    if isinstance(exc, ValidationError):
        section = _SECTION_OF_MODEL.get(exc.title, ())
        if section == ("bf16",) and "bf16" not in config and "bfloat16" in config:
            section = ("bfloat16",)
        out = []
        for err in exc.errors():
            loc = tuple(x for x in err.get("loc", ()) if x != "__root__")
            parts = section + loc
            shown = repr(err.get("input"))
            value = f" (got {shown})" if "input" in err and len(shown) <= 60 else ""
            message = f"DeepSpeed {version} refuses it: {err.get('msg', 'invalid')}{value}"
            out.append((Problem(json_path(parts), message,
                                "follow DeepSpeed's message; its config classes are in deepspeed/runtime/*config.py",
                                source="deepspeed"), parts))
        return out
    text = f"{type(exc).__name__}: {exc}".strip()
    return [(Problem("$", f"DeepSpeed {version}'s config parser refuses the config: {text}",
                     "follow DeepSpeed's message", source="deepspeed"), ())]


def deepspeed_problems(config: dict[str, Any], topo: Topology,
                       known: list[Problem]) -> tuple[list[Problem], str | None]:
    """Returns (problems, note); the note says why DeepSpeed's check did not run, if it did not.

    DeepSpeed logs to stdout (its handler binds the stream when it is first imported): importing and
    running it with stdout sent to stderr keeps every command's stdout for its own output (--json)."""
    with contextlib.redirect_stdout(sys.stderr):
        return _deepspeed_problems(config, topo, known)


def _deepspeed_problems(config: dict[str, Any], topo: Topology,
                        known: list[Problem]) -> tuple[list[Problem], str | None]:
    try:
        import deepspeed
        from deepspeed.runtime import config as ds_config_module
    except Exception as e:  # ImportError, or a broken install (missing torch, CUDA mismatch)
        reason = "not installed" if isinstance(e, ImportError) else f"not importable ({type(e).__name__}: {e})"
        return [], f"DeepSpeed {reason}: its own check skipped (schema and rules only)"
    if topo.dp < 1 or not float(topo.dp).is_integer():
        return [], "DeepSpeed's own check skipped: the sizes give no whole data-parallel size"
    version = getattr(deepspeed, "__version__", "?")
    needed = ("_initialize_params", "_configure_train_batch_size", "_do_sanity_check")
    if not all(hasattr(ds_config_module.DeepSpeedConfig, name) for name in needed) \
            or not hasattr(ds_config_module, "_reject_removed_config_keys"):
        return [], f"DeepSpeed {version}'s DeepSpeedConfig has a different shape: its own check skipped"
    errors = [p.path for p in known if p.severity == "error"]
    work = copy.deepcopy(config)
    strip_auto(work)
    for key in REMOVED_TOP_LEVEL:
        work.pop(key, None)
    if isinstance(work.get("zero_optimization"), dict):
        for key in REMOVED_ZERO:
            work["zero_optimization"].pop(key, None)
    if any(path == "$" or any(_overlaps(path, f"$.{k}") for k in BATCH_KEYS) for path in errors) \
            or any(isinstance(config.get(k), str) for k in BATCH_KEYS):
        _consistent_batch(work, int(topo.dp))

    logger = logging.getLogger("DeepSpeed")
    level = logger.level
    logger.setLevel(logging.ERROR)  # its info/warning lines would interleave with our report
    out: list[Problem] = []
    try:
        for _ in range(_MAX_ATTEMPTS):
            try:
                _parse(ds_config_module, copy.deepcopy(work), topo.dp)
                break
            except Exception as exc:  # DeepSpeed raises many types; each is a finding, never a crash
                repaired = False
                for problem, parts in _problems_from(exc, work, version):
                    rule_path = next((path for text, path in _SAME_AS_RULE if text in problem.message), None)
                    duplicate = any(_overlaps(problem.path, e) for e in errors if problem.path != "$") or (
                        rule_path is not None and any(_overlaps(rule_path, e) for e in errors))
                    if not duplicate:
                        out.append(problem)
                    if parts and _delete(work, parts):
                        repaired = True
                    elif rule_path is not None:
                        repaired = _repair(work, rule_path, topo) or repaired
                if not repaired:
                    break
    finally:
        logger.setLevel(level)
    return out, None


def _repair(work: dict[str, Any], rule_path: str, topo: Topology) -> bool:
    """Undo what a known DeepSpeed assertion is about, so the next attempt can look further."""
    if rule_path == "$.train_batch_size":
        before = {k: work.get(k) for k in BATCH_KEYS}
        _consistent_batch(work, int(topo.dp))
        return before != {k: work.get(k) for k in BATCH_KEYS}
    if rule_path == "$.fp16.enabled":
        return _delete(work, ("fp16", "enabled"))
    if rule_path == "$.zero_optimization.offload_optimizer.ratio":
        return _delete(work, ("zero_optimization", "offload_optimizer", "ratio"))
    if rule_path == "$.gradient_allreduce_op":
        return _delete(work, ("gradient_allreduce_op",))
    section, key = rule_path[2:].split(".", 1)
    return _delete(work, (section, key)) or _delete(work, ("bfloat16", key))
