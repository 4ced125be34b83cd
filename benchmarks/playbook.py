"""shardplan's predictions against the Ultra-Scale Playbook sweep (../shared/reference/ultrascale_playbook_sweep.csv).

3,257 runs of Llama-shaped 1B/3B/8B/80B models (seq 4096, global batch 256 sequences) on 1-64 nodes of
8xH100-80GB, trained by nanotron. For every run: does shardplan predict it fits or runs out of memory
(confusion matrix against the runs that crashed, mem_gb = nan), how far its peak memory is from the
measured one where the run completed, and how well predicted tokens/s per GPU ranks the measured ones
(Spearman). Writes benchmarks/results/playbook.json.

    python benchmarks/playbook.py [--json]

Caveat, stated up front: nanotron is not DeepSpeed. It keeps fp32 gradient accumulation buffers, splits
the vocabulary over tp and runs sequence-parallel norms; shardplan models its own GPT-2/Llama program on
DeepSpeed. The shapes are Llama 3.2 1B, Llama 3.2 3B, Llama 3.1 8B and, for "80B", Llama 3.1 70B's
shape (80 layers, hidden 8192) — the playbook's exact 80B config is not in the CSV. mem_gb is read as
GiB (torch's allocator statistics divided by 1024^3; the largest completed run shows 77.4 of 79.1).
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import sys
from pathlib import Path

from shardplan.planner.cluster import CATALOG, Cluster
from shardplan.planner.estimate import Training
from shardplan.planner.layout import Layout
from shardplan.planner.memory import estimate_memory
from shardplan.planner.model import ModelSpec
from shardplan.planner.timing import estimate_time

ROOT = Path(__file__).resolve().parents[1]
CSV = ROOT.parent / "shared" / "reference" / "ultrascale_playbook_sweep.csv"
OUT = ROOT / "benchmarks" / "results" / "playbook.json"
GiB = 2**30
V = 128256
MODELS = {   # Llama 3.x configs (config.json of meta-llama/Llama-3.2-1B, -3.2-3B, -3.1-8B, -3.1-70B)
    "1B": ModelSpec("llama-3.2-1b", "llama", 16, 2048, 32, 8, 8192, V, 131072, True),
    "3B": ModelSpec("llama-3.2-3b", "llama", 28, 3072, 24, 8, 8192, V, 131072, True),
    "8B": ModelSpec("llama-3.1-8b", "llama", 32, 4096, 32, 8, 14336, V, 131072, False),
    "80B": ModelSpec("llama-3.1-70b-shape", "llama", 80, 8192, 64, 8, 28672, V, 131072, False),
}


def spearman(xs: list[float], ys: list[float]) -> float:
    def ranks(v):
        order = sorted(range(len(v)), key=lambda i: v[i])
        r = [0.0] * len(v)
        i = 0
        while i < len(order):
            j = i
            while j + 1 < len(order) and v[order[j + 1]] == v[order[i]]:
                j += 1
            for k in range(i, j + 1):
                r[order[k]] = (i + j) / 2
            i = j + 1
        return r
    rx, ry = ranks(xs), ranks(ys)
    mx, my = sum(rx) / len(rx), sum(ry) / len(ry)
    cov = sum((a - mx) * (b - my) for a, b in zip(rx, ry))
    return cov / math.sqrt(sum((a - mx) ** 2 for a in rx) * sum((b - my) ** 2 for b in ry))


def predict(row: dict) -> dict:
    model = MODELS[row["model"]]
    cluster = Cluster(int(row["nodes"]), 8, CATALOG["H100-80GB"])
    layout = Layout(dp=int(row["dp"]), tp=int(row["tp"]), pp=int(row["pp"]), zero_stage=int(row["zero"]),
                    micro_batch=int(row["mbs"]), grad_accum=int(row["gas"]))
    # the DeepSpeed configuration closest to nanotron's: sequence + vocabulary parallel TP; ZeRO-1 with fp32
    # gradient accumulation (BF16_Optimizer: full fp32 grad buffer, sharded master + moments); ZeRO-0 keeps
    # the whole optimizer on every rank as nanotron does (FP16_UnfusedOptimizer when pp = 1)
    fp32_accum = layout.zero_stage == 1
    training = Training(seq_len=4096, global_batch=int(row["gbs"]), sequence_parallel=True,
                        grad_accum_dtype="fp32" if fp32_accum else "model")
    mem = estimate_memory(model, cluster, layout, training)
    t = estimate_time(model, cluster, layout, training)
    tokens = layout.global_batch * training.seq_len
    ran = row["mem_gb"] != "nan"
    return {"model": row["model"], "nodes": int(row["nodes"]), "layout": layout.to_dict(),
            "predicted_peak_gib": mem.peak_bytes / GiB, "predicted_fits": mem.peak_bytes <= mem.capacity_bytes,
            "ran": ran, "measured_gib": float(row["mem_gb"]) if ran else None,
            "predicted_tok_s_gpu": tokens / t.step_s / cluster.world_size,
            "measured_tok_s_gpu": float(row["tok_s_gpu"]) if ran else None}


def confusion(points: list[dict]) -> dict:
    c = {"fit_ran": 0, "fit_crashed": 0, "oom_ran": 0, "oom_crashed": 0}
    for p in points:
        c[("fit_" if p["predicted_fits"] else "oom_") + ("ran" if p["ran"] else "crashed")] += 1
    n = len(points)
    c["accuracy"] = (c["fit_ran"] + c["oom_crashed"]) / n if n else float("nan")
    return c


def summarize(points: list[dict]) -> dict:
    out = {}
    for name in ["all"] + list(MODELS):
        ps = [p for p in points if name == "all" or p["model"] == name]
        ran = [p for p in ps if p["ran"]]
        errs = [p["predicted_peak_gib"] / p["measured_gib"] - 1 for p in ran]
        out[name] = {"runs": len(ps), "confusion": confusion(ps),
                     "memory_mape_on_ran": sum(map(abs, errs)) / len(errs) if errs else None,
                     "memory_median_err_on_ran": sorted(errs)[len(errs) // 2] if errs else None,
                     "within_20pct": sum(abs(e) <= 0.2 for e in errs),
                     "spearman_tok_s_gpu": spearman([p["predicted_tok_s_gpu"] for p in ran],
                                                    [p["measured_tok_s_gpu"] for p in ran]) if len(ran) > 2 else None}
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    if not CSV.is_file():
        print(f"{CSV} not found (../shared next to the checkout)", file=sys.stderr)
        return 2
    rows = list(csv.DictReader(CSV.open()))
    points = [predict(r) for r in rows]
    summ = summarize(points)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    columns = ["model", "nodes", "dp", "tp", "pp", "zero", "mbs", "gas", "predicted_peak_gib", "measured_gib",
               "predicted_fits", "ran", "predicted_tok_s_gpu", "measured_tok_s_gpu"]
    table = [[p["model"], p["nodes"], p["layout"]["dp"], p["layout"]["tp"], p["layout"]["pp"],
              p["layout"]["zero_stage"], p["layout"]["micro_batch"], p["layout"]["grad_accum"],
              round(p["predicted_peak_gib"], 2), p["measured_gib"], p["predicted_fits"], p["ran"],
              round(p["predicted_tok_s_gpu"]), p["measured_tok_s_gpu"]] for p in points]
    OUT.write_text(json.dumps({"summary": summ, "models": {k: m.to_dict() for k, m in MODELS.items()},
                               "columns": columns, "points": table}) + "\n")
    if args.json:
        print(json.dumps(summ, indent=1))
        return 0
    print(f"{'model':5} {'runs':>5} | {'fit&ran':>7} {'fit&crash':>9} {'oom&ran':>7} {'oom&crash':>9} {'acc':>5} | "
          f"{'mem MAPE':>8} {'median':>7} {'<=20%':>6} | {'spearman':>8}")
    for name, s in summ.items():
        c = s["confusion"]
        mape = f"{s['memory_mape_on_ran']:.1%}" if s["memory_mape_on_ran"] is not None else "-"
        med = f"{s['memory_median_err_on_ran']:+.1%}" if s["memory_median_err_on_ran"] is not None else "-"
        rho = f"{s['spearman_tok_s_gpu']:.2f}" if s["spearman_tok_s_gpu"] is not None else "-"
        print(f"{name:5} {s['runs']:>5} | {c['fit_ran']:>7} {c['fit_crashed']:>9} {c['oom_ran']:>7} "
              f"{c['oom_crashed']:>9} {c['accuracy']:>5.1%} | {mape:>8} {med:>7} {s['within_20pct']:>6} | {rho:>8}")
    print(f"wrote {OUT.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
