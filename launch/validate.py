"""Validate a DeepSpeed config: JSON Schema, cross-field rules, then DeepSpeed's own config parser.

`validate_config(config, world_size=..., tp=..., pp=..., heads=...)` is the API the render step calls on
every ds_config before writing it; `validate_file(path, ...)` adds reading the file (line/column of a JSON
syntax error, duplicate keys) and is what `shardplan validate` runs. Nothing here imports torch or
DeepSpeed at module level: the DeepSpeed check is imported lazily and skipped when it is not installed.
"""
from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any, Literal

Severity = Literal["error", "warning"]
Source = Literal["json", "schema", "rules", "deepspeed"]

SCHEMA_RESOURCE = "schemas/deepspeed_config.schema.json"


@dataclass(frozen=True)
class Problem:
    """One finding. `path` is a JSON path into the config ("$.zero_optimization.stage"; "$" is the whole
    config; a command-line option such as "--world-size" when the problem is with the given sizes)."""

    path: str
    message: str  # what is wrong, naming the keys and values
    fix: str  # how to fix it
    severity: Severity = "error"
    source: Source = "rules"

    def __post_init__(self) -> None:
        if self.severity not in ("error", "warning"):
            raise ValueError(f"severity {self.severity!r} must be 'error' or 'warning'")
        if self.source not in ("json", "schema", "rules", "deepspeed"):
            raise ValueError(f"source {self.source!r} must be one of json, schema, rules, deepspeed")

    def to_dict(self) -> dict[str, str]:
        return {"path": self.path, "message": self.message, "fix": self.fix,
                "severity": self.severity, "source": self.source}

    def __str__(self) -> str:
        return f"{self.severity}: {self.path}: {self.message} Fix: {self.fix} [{self.source}]"


@dataclass(frozen=True)
class ValidationResult:
    """The verdict on one config. `ok` is true when there is no error (warnings do not count)."""

    problems: tuple[Problem, ...] = ()
    world_size: int = 1  # the world size the batch arithmetic was checked against
    world_size_source: str = "default"  # "given", "batch" (implied by the batch numbers) or "default"
    deepspeed_checked: bool = False  # whether DeepSpeed's own parser ran
    notes: tuple[str, ...] = ()  # e.g. "DeepSpeed not installed: its own check skipped"
    file: str | None = None

    @property
    def ok(self) -> bool:
        return not self.errors

    @property
    def errors(self) -> tuple[Problem, ...]:
        return tuple(p for p in self.problems if p.severity == "error")

    @property
    def warnings(self) -> tuple[Problem, ...]:
        return tuple(p for p in self.problems if p.severity == "warning")

    def ok_strict(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict[str, Any]:
        return {"file": self.file, "ok": self.ok, "errors": len(self.errors), "warnings": len(self.warnings),
                "world_size": self.world_size, "world_size_source": self.world_size_source,
                "deepspeed_checked": self.deepspeed_checked, "notes": list(self.notes),
                "problems": [p.to_dict() for p in self.problems]}


@dataclass(frozen=True)
class Topology:
    """The sizes the batch arithmetic is checked against: dp = world_size / (tp · pp · sp)."""

    world_size: int
    tp: int = 1
    pp: int = 1
    sp: int = 1  # Ulysses sequence parallel degree (top-level "sequence_parallel_size")
    heads: int | None = None
    source: str = "given"

    @property
    def dp(self) -> float:
        return self.world_size / (self.tp * self.pp * self.sp)


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
    from shardplan.launch import validate_keys, validate_rules, validate_schema

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
        from shardplan.launch import validate_deepspeed

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


class ConfigFileError(ValueError):
    """The file cannot be read as JSON (missing, unreadable, syntax error). A usage error: exit code 2."""


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    duplicates = []
    for key, value in pairs:
        if key in out:
            duplicates.append(key)
        out[key] = value
    if duplicates:
        # DeepSpeed loads config files with dict_raise_error_on_duplicate_keys; keep the last value like
        # json does, and report the duplicates after parsing.
        out.setdefault("\0duplicates", []).extend(duplicates)
    return out


def _pop_duplicates(node: Any, path: str, found: list[Problem]) -> None:
    if isinstance(node, dict):
        for key in node.pop("\0duplicates", []):
            found.append(Problem(f"{path}.{key}", f"key {key!r} appears more than once; JSON keeps only the "
                                 "last value and DeepSpeed refuses the file (duplicate keys)",
                                 f"keep one {key!r} entry", source="json"))
        for key, value in node.items():
            _pop_duplicates(value, f"{path}.{key}", found)
    elif isinstance(node, list):
        for i, value in enumerate(node):
            _pop_duplicates(value, f"{path}[{i}]", found)


def read_config_file(path: str | Path) -> tuple[Any, list[Problem]]:
    """Parse a config file. Raises ConfigFileError naming the file (and line/column for a syntax error)."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise ConfigFileError(f"{p}: no such file") from None
    except IsADirectoryError:
        raise ConfigFileError(f"{p}: is a directory, not a JSON file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigFileError(f"{p}: cannot be read ({e})") from None
    try:
        data = json.loads(text, object_pairs_hook=_no_duplicate_keys)
    except json.JSONDecodeError as e:
        raise ConfigFileError(f"{p}: not valid JSON: {e.msg} at line {e.lineno}, column {e.colno}") from None
    except RecursionError:
        raise ConfigFileError(f"{p}: not valid JSON: nested too deeply") from None
    found: list[Problem] = []
    _pop_duplicates(data, "$", found)
    return data, found


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
