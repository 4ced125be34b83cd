"""Validate a DeepSpeed config: JSON Schema, cross-field rules, then DeepSpeed's own config parser.

`validate_config(config, world_size=..., tp=..., pp=..., heads=...)` is the API the render step calls on
every ds_config before writing it; `validate_file(path, ...)` adds reading the file (line/column of a JSON
syntax error, duplicate keys) and is what `shardplan validate` runs. Nothing here imports torch or
DeepSpeed at module level: the DeepSpeed check is imported lazily and skipped when it is not installed.
"""
from __future__ import annotations

import copy
import json
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

from . import deepspeed as validate_deepspeed
from . import keys as validate_keys
from . import rules as validate_rules
from . import schema as validate_schema
from .files import ConfigFileError, read_config_file
from .problems import Problem, Severity, Source, Topology, ValidationResult

__all__ = ["ConfigFileError", "Problem", "Severity", "Source", "Topology", "ValidationResult", "load_schema",
           "read_config_file", "validate_config", "validate_file"]

SCHEMA_RESOURCE = "schemas/deepspeed_config.schema.json"


@lru_cache(maxsize=1)
def load_schema() -> dict[str, Any]:
    """The DeepSpeed config JSON Schema (draft 2020-12) shipped in shardplan.templates."""
    text = resources.files("shardplan.templates").joinpath(SCHEMA_RESOURCE).read_text(encoding="utf-8")
    return json.loads(text)


def _positive(name: str, value: int | None) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise ValueError(f"{name}={value!r} must be a positive integer")


def validate_config(config: Any, *, world_size: int | None = None, tp: int = 1, pp: int = 1,
                    heads: int | None = None, use_deepspeed: bool = True,
                    allow_auto: bool = False) -> ValidationResult:
    """Check a DeepSpeed config dict. Never raises on a bad config: everything wrong is a Problem.

    world_size: total number of processes (GPUs); None derives it from the batch numbers when all three
    are given (train_batch_size / (micro · grad_accum) · tp · pp), else uses tp · pp (dp = 1).
    tp, pp: tensor and pipeline parallel degrees (the data-parallel size is world_size / (tp · pp)).
    heads: attention heads of the model, when known (tensor_parallel.autotp_size must divide it).
    use_deepspeed: also parse with DeepSpeed's own config classes when DeepSpeed is importable.
    allow_auto: the config is meant for the Hugging Face Trainer integration, which fills in "auto"
    values: report them as warnings instead of errors.
    Raises ValueError only for bad arguments (not for a bad config).
    """
    for name, value in (("world_size", world_size), ("tp", tp), ("pp", pp), ("heads", heads)):
        _positive(name, value)

    problems: list[Problem] = []
    if not isinstance(config, dict):
        problems.append(Problem("$", f"the config is a JSON {type(config).__name__}, not an object",
                                "write the DeepSpeed config as one JSON object: {\"train_batch_size\": ...}",
                                source="schema"))
        return ValidationResult(tuple(problems), world_size or 1, "given" if world_size else "default")

    checked = copy.deepcopy(config)
    # Batch sizes left to the HF integration: the batch arithmetic cannot be checked (the "auto" problem says so).
    batch_is_auto = any(config.get(key) == "auto" for key in validate_rules.BATCH_KEYS)
    problems += validate_keys.auto_values(checked, allow_auto)  # also strips them from `checked`
    problems += validate_schema.schema_problems(checked, load_schema())
    problems += validate_keys.key_problems(config, load_schema())
    topology, topo_problems = validate_rules.topology(checked, world_size, tp, pp, heads)
    problems += topo_problems
    problems += validate_rules.cross_field(checked, topology, check_batch=not batch_is_auto)

    notes: list[str] = []
    deepspeed_checked = False
    if use_deepspeed:
        ds_problems, note = validate_deepspeed.deepspeed_problems(config, topology, problems)
        if note:
            notes.append(note)
        else:
            deepspeed_checked = True
        problems += ds_problems
    return ValidationResult(tuple(_dedupe(problems)), topology.world_size, topology.source,
                            deepspeed_checked, tuple(notes))


def _dedupe(problems: list[Problem]) -> list[Problem]:
    """Drop repeats; errors first (stable: schema, rules, deepspeed order within a severity)."""
    seen: set[tuple[str, str, str]] = set()
    out = []
    for p in sorted(problems, key=lambda p: p.severity != "error"):
        key = (p.path, p.message, p.severity)
        if key not in seen:
            seen.add(key)
            out.append(p)
    return out


def validate_file(path: str | Path, **kwargs: Any) -> ValidationResult:
    """Read and validate one file. A file that cannot be parsed gives a result with one "json" error
    (use read_config_file directly to get the ConfigFileError instead)."""
    try:
        data, file_problems = read_config_file(path)
    except ConfigFileError as e:
        problem = Problem("$", str(e), "make the file valid JSON (fill in template placeholders, remove "
                          "comments and trailing commas)", source="json")
        return ValidationResult((problem,), file=str(path))
    result = validate_config(data, **kwargs)
    return ValidationResult(tuple(file_problems) + result.problems, result.world_size, result.world_size_source,
                            result.deepspeed_checked, result.notes, str(path))
