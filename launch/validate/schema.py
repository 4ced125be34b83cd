"""JSON Schema checking of a DeepSpeed config, turned into Problems that name the key and the fix."""
from __future__ import annotations

import difflib
import json
from functools import lru_cache
from typing import Any, Iterable

from .problems import Problem

_JSON_TYPES = {"integer": "an integer", "number": "a number", "boolean": "true or false", "string": "a string",
               "object": "an object {...}", "array": "a list [...]", "null": "null"}


def json_path(parts: Iterable[Any]) -> str:
    out = "$"
    for part in parts:
        out += f"[{part}]" if isinstance(part, int) else f".{part}"
    return out


def _show(value: Any) -> str:
    text = json.dumps(value, default=str)
    return text if len(text) <= 60 else text[:57] + "..."


def _type_name(value: Any) -> str:
    if isinstance(value, bool):
        return "boolean"
    if value is None:
        return "null"
    return {int: "integer", float: "number", str: "string", dict: "object", list: "array"}.get(type(value), "?")


def close_matches(word: str, choices: Iterable[str], n: int = 3) -> list[str]:
    return difflib.get_close_matches(word, sorted(choices), n=n, cutoff=0.6)


@lru_cache(maxsize=4)
def _validator(schema_text: str):
    from jsonschema import Draft202012Validator

    return Draft202012Validator(json.loads(schema_text))


def _leaf_errors(error):
    """anyOf (nullable values, zero_optimization as object or legacy bool): report the branch that matches
    the value's JSON type, so the message is about the real mistake."""
    if error.validator in ("anyOf", "oneOf") and error.context:
        branches: dict[Any, list] = {}
        for e in error.context:
            branches.setdefault(e.relative_schema_path[0], []).append(e)
        for branch_errors in branches.values():
            if not any(e.validator == "type" and not e.relative_path for e in branch_errors):
                for e in branch_errors:
                    yield from _leaf_errors(e)
                return
    yield error


def _expected(schema: dict[str, Any]) -> str:
    if "anyOf" in schema:
        return " or ".join(_expected(s) for s in schema["anyOf"])
    if "const" in schema:
        return _show(schema["const"])
    if "enum" in schema:
        return "one of " + ", ".join(_show(v) for v in schema["enum"])
    t = schema.get("type")
    if isinstance(t, list):
        return " or ".join(_JSON_TYPES.get(x, x) for x in t)
    text = _JSON_TYPES.get(t, "a valid value") if t else "a valid value"
    if "minimum" in schema and "maximum" in schema:
        text += f" from {schema['minimum']} to {schema['maximum']}"
    elif "minimum" in schema:
        text += f" >= {schema['minimum']}"
    elif "exclusiveMinimum" in schema:
        text += f" > {schema['exclusiveMinimum']}"
    return text


def _problem(error) -> list[Problem]:
    path = json_path(error.absolute_path)
    v = error.validator
    if v == "additionalProperties":
        allowed = set(error.schema.get("properties", {}))
        extra = [k for k in error.instance if k not in allowed]
        out = []
        for key in extra:
            guesses = close_matches(key, allowed)
            fix = (f"did you mean {' or '.join(repr(g) for g in guesses)}? Otherwise remove it"
                   if guesses else f"remove it (allowed keys: {', '.join(sorted(allowed))})")
            where = path[2:] or "the top level"
            out.append(Problem(f"{path}.{key}", f"{key!r} is not a key of {where}: DeepSpeed's config class for "
                               "it forbids unknown keys and refuses the config", fix, source="schema"))
        return out
    value = _show(error.instance)
    if v in ("type", "anyOf", "oneOf"):
        return [Problem(path, f"{value} is {_JSON_TYPES.get(_type_name(error.instance), 'of the wrong type')}, "
                        f"but must be {_expected(error.schema)}",
                        f"write {_expected(error.schema)}", source="schema")]
    if v in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"):
        return [Problem(path, f"{value} is out of range: must be {_expected(error.schema)}",
                        f"use {_expected(error.schema)}", source="schema")]
    if v in ("enum", "const", "pattern"):
        expected = _expected(error.schema) if v != "pattern" else error.schema.get("description", "")
        if v == "pattern":
            expected = expected or f"a string matching {error.schema['pattern']}"
        return [Problem(path, f"{value} is not accepted here: must be {expected}", f"use {expected}",
                        source="schema")]
    if v == "not":
        return [Problem(path, f"{value} is not accepted here: {error.schema.get('description', 'no value is')}",
                        "remove the key", source="schema")]
    return [Problem(path, f"{value}: {error.message}", f"use {_expected(error.schema)}", source="schema")]


def schema_problems(config: dict[str, Any], schema: dict[str, Any]) -> list[Problem]:
    validator = _validator(json.dumps(schema, sort_keys=True))
    out: list[Problem] = []
    for error in sorted(validator.iter_errors(config), key=lambda e: list(map(str, e.absolute_path))):
        for leaf in _leaf_errors(error):
            out.extend(_problem(leaf))
    return out
