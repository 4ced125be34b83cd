"""validate against 79 real DeepSpeed configs from 18 public repositories (../shared/reference/real_ds_configs):
never crash, agree with DeepSpeed 0.19.8's own verdict (verdicts.tsv) on the plain configs, and explain the
templates, the "auto" configs and the removed features. Skips when ../shared is absent."""
from __future__ import annotations

import csv
from functools import lru_cache
from pathlib import Path

import pytest

from shardplan.launch.validate import validate_file

REFERENCE = Path(__file__).resolve().parents[1].parent / "shared" / "reference" / "real_ds_configs"
pytestmark = pytest.mark.skipif(not (REFERENCE / "INDEX.tsv").is_file(), reason="../shared/reference is absent")


def _table(name: str) -> dict[str, dict[str, str]]:
    with open(REFERENCE / name, newline="", encoding="utf-8") as f:
        return {row["file"]: row for row in csv.DictReader(f, delimiter="\t")}


@lru_cache(maxsize=1)
def rows() -> list[dict[str, str]]:
    index = _table("INDEX.tsv")
    verdicts = _table("verdicts.tsv") if (REFERENCE / "verdicts.tsv").is_file() else {}
    return [{**row, **verdicts.get(name, {})} for name, row in sorted(index.items())]


def _names(kind: str) -> list[str]:
    if not (REFERENCE / "INDEX.tsv").is_file():
        return []
    return [r["file"] for r in rows() if kind == "all" or _kind(r) == kind]


def _kind(row: dict[str, str]) -> str:
    if row["is_template"] == "yes":
        return "template"
    return "auto" if row["uses_auto"] == "yes" else "plain"


@lru_cache(maxsize=None)
def result(name: str):
    row = next(r for r in rows() if r["file"] == name)
    world = int(row["world_size"]) if row.get("world_size") else None  # else: what the batch numbers imply
    return validate_file(REFERENCE / name, world_size=world)


@pytest.mark.parametrize("name", _names("all"))
def test_never_crashes_and_every_problem_is_complete(name):
    res = result(name)
    for p in res.problems:
        assert p.path.startswith(("$", "--")) and p.message and p.fix, p


@pytest.mark.parametrize("name", _names("plain"))
def test_agrees_with_deepspeed_on_plain_configs(name):
    row = next(r for r in rows() if r["file"] == name)
    if "verdict" not in row:
        pytest.skip("verdicts.tsv is absent")
    res = result(name)
    assert res.ok == (row["verdict"] == "accept"), (row.get("message"), [str(p) for p in res.problems])


@pytest.mark.parametrize("name", _names("template"))
def test_templates_are_reported_cleanly(name):
    res = result(name)
    assert not res.ok
    json_errors = [p for p in res.errors if p.source == "json"]
    if json_errors:  # placeholders are not JSON: one clean problem naming the file and the position
        assert "not valid JSON" in json_errors[0].message and "line" in json_errors[0].message


@pytest.mark.parametrize("name", _names("auto"))
def test_auto_configs_are_explained(name):
    res = result(name)
    assert not res.ok
    autos = [p for p in res.errors if '"auto"' in p.message]
    # A few files flagged uses_auto carry "auto" only where DeepSpeed understands it; the rest must say why.
    assert autos or any(p.source in ("schema", "rules") for p in res.errors)
    for p in autos:
        assert "will not run under DeepSpeed alone" in p.message and "Hugging Face" in p.message


@pytest.mark.parametrize("name", [r["file"] for r in (rows() if (REFERENCE / "INDEX.tsv").is_file() else [])
                                  if "removed" in r.get("message", "") and r["is_template"] == "no"])
def test_removed_features_are_named(name):
    res = result(name)
    removed = [p for p in res.errors if "removed" in p.message and "0.19.8" in p.message]
    assert removed, [str(p) for p in res.problems]
    row = next(r for r in rows() if r["file"] == name)
    key = removed[0].path.rsplit(".", 1)[-1]
    assert key.lower() in row["message"].lower()  # the same feature DeepSpeed names


def test_agreement_figures():
    """Prints the agreement table (pytest -s shows it); asserts full agreement where verdicts exist."""
    table: dict[str, list[int]] = {}
    for row in rows():
        if "verdict" not in row:
            continue
        agree = result(row["file"]).ok == (row["verdict"] == "accept")
        counts = table.setdefault(_kind(row), [0, 0])
        counts[0] += agree
        counts[1] += 1
    if not table:
        pytest.skip("verdicts.tsv is absent")
    total = [sum(c[0] for c in table.values()), sum(c[1] for c in table.values())]
    lines = [f"  {kind:9} {a}/{n}" for kind, (a, n) in sorted(table.items())] + [f"  {'all':9} {total[0]}/{total[1]}"]
    print("\nvalidate vs DeepSpeed 0.19.8 verdicts (accept/reject agreement):\n" + "\n".join(lines))
    assert total[0] == total[1]
