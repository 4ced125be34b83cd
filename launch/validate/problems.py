"""What validation finds: a Problem (JSON path, what is wrong, the fix), the sizes it checks against
(Topology), and the verdict on one config (ValidationResult)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

Severity = Literal["error", "warning"]
Source = Literal["json", "schema", "rules", "deepspeed"]


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
