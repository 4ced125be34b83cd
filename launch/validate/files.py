"""Reading a config file as DeepSpeed does: JSON syntax errors with line and column, duplicate keys reported."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .problems import Problem


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
