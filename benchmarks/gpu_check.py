"""The one-command device check: plan for this machine's GPU, render, launch shardplan's own program through
`shardplan launch` for the planned layout and two runner-ups, and compare measured with predicted peak
memory, step time and MFU.

    python benchmarks/gpu_check.py --wheels DIR           # on a GPU machine with torch; DIR holds the wheels
    python benchmarks/gpu_check.py --dry --out /tmp/x.json # the same path on CPU with a tiny model

Writes benchmarks/results/gpu_check.json (or --out FILE): {"rows": [{"model", "layout", "predicted": {...},
"measured": {...}}, ...]} and prints a table. Budget: 3 models x 3 layouts x --steps steps (default 12), the
first steps paying for compile; sized for about 8 minutes on one H100/H200.

Only torch needs to be installed: with --wheels DIR the missing packages (deepspeed, pydantic, jinja2, click,
jsonschema, ...) are installed from DIR with pip --no-index, then this checkout itself (--no-deps, editable).
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "results" / "gpu_check.json"
MODELS = ("gpt2", "gpt2-medium", "gpt2-xl")
# import name -> pip requirement: what shardplan and its training program import
NEEDED = {"deepspeed": "deepspeed", "pydantic": "pydantic", "jinja2": "jinja2", "click": "click",
          "jsonschema": "jsonschema", "rich": "rich", "tokenizers": "tokenizers", "numpy": "numpy"}


def install(wheels: Path) -> None:
    """pip install the missing imports from the wheel directory only (the device may have no index)."""
    missing = [req for mod, req in NEEDED.items() if importlib.util.find_spec(mod) is None]
    pip = [sys.executable, "-m", "pip", "install", "--no-index", "--find-links", str(wheels)]
    if missing:
        subprocess.run(pip + missing, check=True)
    if importlib.util.find_spec("shardplan") is None:
        subprocess.run(pip + ["--no-deps", "--no-build-isolation", "-e", str(ROOT)], check=True)


def shardplan(*args: str, timeout: float = 900) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-c", "import sys; from shardplan.cli import main; sys.exit(main())", *map(str, args)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


def choose_layouts(plan: dict, n: int = 3) -> list[dict]:
    """The planned layout, then the next distinct runner-ups that fit (ZeRO stage, micro-batch, recompute)."""
    seen, out = set(), []
    for est in [plan["best"]] + plan.get("candidates", []):
        if not est.get("fits", True):
            continue
        key = json.dumps(est["layout"], sort_keys=True)
        if key not in seen:
            seen.add(key)
            out.append(est["layout"])
        if len(out) == n:
            break
    return out


def layout_flags(layout: dict) -> list[str]:
    flags = []
    for name in ("dp", "tp", "pp", "micro_batch", "grad_accum", "checkpointing", "offload"):
        flags += ["--" + name.replace("_", "-"), str(layout[name])]
    return flags + ["--zero", str(layout["zero_stage"])]


def measured(run_dir: Path) -> dict:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    steps = [r for r in rows if "step" in r]
    timed = steps[2:] or steps[-1:]          # the first steps include compile and warm-up
    step_s = sorted(r["step_time_s"] for r in timed)[len(timed) // 2]
    mfu = [r["mfu"] for r in timed if r.get("mfu") is not None]
    summary = [r for r in rows if r.get("event") == "summary"][-1]
    return {"peak_bytes": max(r["peak_allocated_bytes"] for r in steps), "step_s": step_s,
            "mfu": sorted(mfu)[len(mfu) // 2] if mfu else None, "tokens_per_s": summary["tokens_per_s"],
            "compile": summary.get("compile"), "optimizer": summary["ranks"][0].get("optimizer"),
            "steps": len(steps)}


def predicted(run_dir: Path) -> dict:
    best = json.loads((run_dir / "plan.json").read_text())["best"]
    return {"peak_bytes": best["memory"]["peak_bytes"], "step_s": best["step_time_s"], "mfu": best["mfu"],
            "compile": best["training"].get("compile"), "fits": best["fits"]}


def check_model(model: str, cluster: str, work: Path, steps: int, extra: list[str]) -> list[dict]:
    plan_file = work / f"{model}.plan.json"
    res = shardplan("plan", "--model", model, "--cluster", cluster, "--json", *extra)
    if res.returncode:
        return [{"model": model, "layout": None, "predicted": {}, "measured": {}, "error": res.stderr.strip()[-500:]}]
    plan_file.write_text(res.stdout)
    rows = []
    for i, layout in enumerate(choose_layouts(json.loads(res.stdout))):
        run_dir = work / f"{model}-{i}"
        row = {"model": model, "layout": layout, "predicted": {}, "measured": {}}
        r = shardplan("render", "--from", plan_file, *layout_flags(layout), "--out", run_dir, "--force",
                      "--steps", str(steps))
        if r.returncode:
            row["error"] = "render: " + r.stderr.strip()[-500:]
            rows.append(row)
            continue
        row["predicted"] = predicted(run_dir)
        t0 = time.time()
        r = shardplan("launch", run_dir, "--steps", str(steps))
        row["wall_s"] = round(time.time() - t0, 1)
        if r.returncode:
            row["error"] = f"launch exit {r.returncode}: " + (r.stderr.strip() or r.stdout.strip())[-800:]
        else:
            row["measured"] = measured(run_dir)
        rows.append(row)
    return rows


def print_table(rows: list[dict]) -> None:
    def gb(b):
        return f"{b / 2**30:7.2f}" if b is not None else "      -"

    def pct(x):
        return f"{x:6.1%}" if isinstance(x, float) else "     -"

    print(f"{'model':12} {'layout':34} | {'peak GiB meas':>13} {'pred':>7} | {'step s meas':>11} {'pred':>7} | "
          f"{'MFU meas':>8} {'pred':>6}")
    for r in rows:
        lay = r["layout"]
        name = ("-" if lay is None else f"dp{lay['dp']} tp{lay['tp']} pp{lay['pp']} Z{lay['zero_stage']} "
                f"mb{lay['micro_batch']}x{lay['grad_accum']} {lay['checkpointing']}")
        m, p = r["measured"], r["predicted"]
        if "error" in r:
            print(f"{r['model']:12} {name:34} | error: {r['error'].splitlines()[-1][:80]}")
            continue
        print(f"{r['model']:12} {name:34} | {gb(m.get('peak_bytes')):>13} {gb(p.get('peak_bytes'))} | "
              f"{m.get('step_s', 0):11.4f} {p.get('step_s', 0):7.4f} | {pct(m.get('mfu')):>8} {pct(p.get('mfu'))}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=OUT, help="where the JSON goes")
    ap.add_argument("--dry", action="store_true", help="the same path on CPU with a tiny model (tests)")
    ap.add_argument("--wheels", type=Path, help="directory of wheels for what the device lacks (pip --no-index)")
    ap.add_argument("--steps", type=int, default=12, help="optimizer steps per launch")
    ap.add_argument("--work", type=Path, default=None, help="run directories (default: a new temporary folder)")
    args = ap.parse_args(argv)
    if args.wheels:
        install(args.wheels)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if args.dry:   # one CPU process, fp32, the tiny preset: seconds per launch
        models, cluster, extra, steps = ("gpt2-tiny",), "1xCPU", ["--precision", "fp32", "--global-batch", "4"], 3
    else:
        models, cluster, extra, steps = MODELS, "auto", [], args.steps
    work = args.work or Path(tempfile.mkdtemp(prefix="shardplan-gpu-check-"))
    work.mkdir(parents=True, exist_ok=True)
    rows = []
    for model in models:
        rows += check_model(model, cluster, work, steps, extra)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"rows": rows, "cluster": cluster, "dry": args.dry, "steps": steps}, indent=1) + "\n")
    print_table(rows)
    print(f"wrote {args.out}")
    return 1 if any("error" in r for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
