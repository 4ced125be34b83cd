"""What the published-run benchmarks (megatron_published, fp8_published, moe_published) share: the machines the
published runs used, the step-time error summary, and the report — a table on stdout (or the JSON with --json)
and the JSON result in benchmarks/results/<name>.json.

A column is (header, width, cell): cell(row) gives the text, padded to width (a negative width pads on the
right, for names); a row is one benchmark's dict with at least "error" (predicted/measured - 1).
"""
from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path
from typing import Callable, Iterable

from shardplan.planner.cluster import Cluster, parse_cluster

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
TARGET = 0.15        # issue 9's step-time target for published runs: within 15%

Column = tuple[str, int, Callable[[dict], str]]


def dgx_cluster(card: str, gpus: int) -> Cluster:
    """The published machine: DGX nodes of 8 (GB200/GB300: trays of 4 in NVL72 domains)."""
    per_node = 4 if card.startswith("GB") else 8
    return parse_cluster(f"{gpus // per_node}x{per_node}x{card}")


def error_summary(rows: Iterable[dict]) -> dict:
    """points, how many within TARGET, median and max |error| of the rows' step times."""
    errors = [abs(r["error"]) for r in rows]
    return {"points": len(errors), "within_15pct": sum(e <= TARGET for e in errors),
            "median_abs_error": statistics.median(errors), "max_abs_error": max(errors)}


def _pad(text: str, width: int) -> str:
    return text.ljust(-width) if width < 0 else text.rjust(width)


def report(doc: str, name: str, rows: list[dict], summary: dict, columns: list[Column], footer: str) -> int:
    """Parse --json, write benchmarks/results/<name>.json, print the table (or the JSON); the exit code."""
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", action="store_true", help="print the JSON instead of the table")
    args = ap.parse_args()
    out = RESULTS / f"{name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    document = {"summary": summary, "rows": rows}
    out.write_text(json.dumps(document, indent=1) + "\n")
    if args.json:
        print(json.dumps(document, indent=1))
        return 0
    print(" ".join(_pad(header, width) for header, width, _ in columns).rstrip())
    for row in rows:
        print(" ".join(_pad(cell(row), width) for _, width, cell in columns).rstrip())
    print(footer)
    print(f"wrote {out.relative_to(ROOT)}")
    return 0
