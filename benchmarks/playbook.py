"""shardplan's predictions against the Ultra-Scale Playbook sweep (../shared/reference/ultrascale_playbook_sweep.csv).

3,257 runs of Llama-shaped 1B/3B/8B/80B models (seq 4096, global batch 256 sequences) on 1-64 nodes of
8xH100-80GB, trained by nanotron. For every run: does shardplan predict it fits or runs out of memory
(confusion matrix against the runs that crashed, mem_gb = nan), how far its memory is from the measured
one where the run completed, and how well predicted tokens/s per GPU ranks the measured ones (Spearman).
Writes benchmarks/results/playbook.json.

    python benchmarks/playbook.py [--json] [--nanotron-csv bench_final2_mfu2.csv]

--nanotron-csv (or a "status" column in the sweep CSV) separates the crashes nanotron logged as out of
memory ("OOM") from the other failures ("Other": no memory figure, oom_error False), which no memory
model can predict; the summary then adds confusion_oom_only. A run is predicted to run when its memory fits
and nanotron's build_model gives every pipeline rank a block (nanotron_places(): with pp close to the
layer count the last ranks get none, and those runs crash with a non-OOM failure).

What mem_gb is (nanotron commit e24d2483, the playbook's sweep, Feb 2025): each run wrote one CSV row
from world rank 0 (helpers.py create_table_log / log_throughput, at iteration 3 of NANOTRON_BENCHMARK=1)
with "Mem Alloc (GB)" = torch.cuda.max_memory_allocated() / 1024**3 and "Mem Res (GB)" =
max_memory_reserved() / 1024**3. The plot shows "Mem Res": every completed run's mem_gb equals the raw
CSV's Mem Res to 0.05 (the raw benchmark/results/bench_final2_mfu2.csv that scaling_benchmarks.py reads
is published in github.com/eyao600/Rapid-LLM, validation_scripts/huggingface_data/). So mem_gb
is RESERVED memory, in GiB, of rank 0 = the FIRST pipeline stage, not the worst rank. (Mem Alloc is no
use as a peak: trainer.py calls log_memory(), which resets the peak statistics, right after
train_batch_iter, so it sees the optimizer step: up to mbs 8 it barely moves with the micro-batch.)

The models (scripts/scaling_benchmarks.py, which generated the sweep): NUM_KEY_VALUE_HEADS = None, so
every model is multi-head (kv heads = heads); vocab 131072; tied embeddings when intermediate < 10,000.
1B = (16, 2048, 32, 8192) = 1.34G, 3B = (28, 3072, 32, 8192) = 3.57G ("24heads -> 32heads"), 8B =
(32, 4096, 32, 14336) = 8.86G, and "80B" = Llama 3.1 70B's shape with 64 kv heads = 80.0G (the raw CSV's
Total Params). tp_mode REDUCE_SCATTER (sequence parallel, vocab-parallel fp32 cross-entropy),
accumulate_grad_in_fp32 True for every run, no recompute, flash-attn, 1F1B.

How nanotron maps onto shardplan's DeepSpeed model: its FP32GradientAccumulator keeps a full fp32
gradient buffer and fp32 master weights (optim/gradient_accumulator.py); ZeRO-1 shards master + Adam
moments over dp, ZeRO-0 does not. That is DeepSpeed's BF16_Optimizer with grad_accum_dtype fp32, with
dp = 1 for ZeRO-0's optimizer (memory only; time uses the real dp). Mem Alloc at mbs 1 checks the
states: 18 B/param for ZeRO-0 at dp 1, +2 (bf16 grads) at dp > 1; ZeRO-1 2+2+4 + 12/dp plus the step's
all_gather_coalesced flat buffers (2 + 2/dp), all within 2% (median). shardplan's backward phases hold the
same; its step phase differs (BF16_Optimizer's foreach sqrt instead of the gather) but is rarely the peak.
Rank 0 holds nanotron's first stage, which is deeper than ceil(L/pp): see first_stage_layers().

Reserved memory: the caching allocator keeps the blocks freed between micro-batches and splits them
again; what it reserves on top of the allocated peak grows with the memory that comes and goes each step
(activations, logits, buckets), not with the model states. The H200 calibration
(../shared/calibration/h200_gpt2_probe_train.jsonl, DeepSpeed rows) measures that excess as a fraction of
the transient memory (peak_allocated - mem_steady); its median is the planner's ALLOCATOR_EXCESS
(planner/memory.py, reserved_headroom_bytes), applied here to rank 0's activations + other bytes:
reserved = peak + ALLOCATOR_EXCESS * transient. At pp = 1 the sweep implies the same 0.38 (median of
(mem_gb - predicted peak) / transient); at pp > 1 only 0.2-0.28, hence the over-prediction there.
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import sys
from dataclasses import replace
from pathlib import Path

from shardplan.planner.cluster import CATALOG, Cluster, GiB
from shardplan.planner.estimate import Training
from shardplan.planner.evaluate import evaluate
from shardplan.planner.layout import Layout
from shardplan.planner.memory import ALLOCATOR_EXCESS, memory_phases
from shardplan.planner.model import ModelSpec
from shardplan.planner.timing import estimate_time

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
CSV = SHARED / "reference" / "ultrascale_playbook_sweep.csv"
CALIBRATION = SHARED / "calibration" / "h200_gpt2_probe_train.jsonl"
OUT = ROOT / "benchmarks" / "results" / "playbook.json"
V = 131072
MODELS = {   # nanotron scripts/scaling_benchmarks.py model_configs, NUM_KEY_VALUE_HEADS = None (multi-head)
    "1B": ModelSpec("nanotron-1b", "llama", 16, 2048, 32, 32, 8192, V, 4096, True),
    "3B": ModelSpec("nanotron-3b", "llama", 28, 3072, 32, 32, 8192, V, 4096, True),
    "8B": ModelSpec("nanotron-8b", "llama", 32, 4096, 32, 32, 14336, V, 4096, False),
    "80B": ModelSpec("nanotron-80b", "llama", 80, 8192, 64, 64, 28672, V, 4096, False),
}


def allocator_excess_fraction(path: Path = CALIBRATION) -> float:
    """The planner's ALLOCATOR_EXCESS recomputed (printed as a check): the median over the calibration's
    DeepSpeed runs of (peak_reserved - peak_allocated) / (peak_allocated - mem_steady), what the caching
    allocator reserves beyond the allocated peak per byte of transient memory."""
    fr = []
    for line in path.open():
        r = json.loads(line)
        if r.get("ok") and r.get("engine") == "deepspeed" and r["peak_allocated"] > r["mem_steady"]:
            fr.append((r["peak_reserved"] - r["peak_allocated"]) / (r["peak_allocated"] - r["mem_steady"]))
    fr.sort()
    return (fr[(len(fr) - 1) // 2] + fr[len(fr) // 2]) / 2


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


def nanotron_stages(model: ModelSpec, pp: int) -> list[list[str]]:
    """The pipeline blocks nanotron's build_model (models/base.py, commit e24d2483) gives each of the pp ranks.

    It walks the blocks in forward order (embedding, the decoder layers, final norm, lm_head, the fp32 cast,
    the loss), with the costs of models/llama.py get_block_compute_costs (a decoder layer
    4h·(heads·head_dim) + 3h·ffn, lm_head V·h, the others 0), and moves to the next rank only after a block
    whose cumulative cost passes total·(rank+1)/pp. The first stage is deeper than ceil(L/pp) because the
    LM head weighs like several layers, and when the layers run out early the last ranks get no block at all."""
    layer = 4 * model.n_heads * model.head_dim * model.hidden + 3 * model.ffn_hidden * model.hidden
    blocks = [("embedding", 0)] + [("layer", layer)] * model.n_layers + [
        ("final_norm", 0), ("lm_head", model.vocab * model.hidden), ("cast", 0), ("loss", 0)]
    total = sum(cost for _, cost in blocks)
    stages: list[list[str]] = [[] for _ in range(pp)]
    rank = cumulative = 0
    for name, cost in blocks:
        cumulative += cost
        stages[rank].append(name)
        if cumulative > total * (rank + 1) / pp:
            rank += 1
    return stages


def first_stage_layers(model: ModelSpec, pp: int) -> int:
    """Decoder layers on nanotron's first pipeline stage (world rank 0, the one the benchmark CSV reports)."""
    return nanotron_stages(model, pp)[0].count("layer")


def nanotron_places(model: ModelSpec, pp: int) -> bool:
    """Whether every pipeline rank gets a block. build_model sets output_pp_rank to the rank holding the
    last block; the ranks after it hold nothing, and such runs do not train: in the sweep 175 of the 177
    runs with an empty rank crashed, 168 of them with a non-OOM failure (nanotron's status "Other")."""
    return all(nanotron_stages(model, pp))


def predict(row: dict, excess: float = ALLOCATOR_EXCESS) -> dict:
    model = MODELS[row["model"]]
    cluster = Cluster(int(row["nodes"]), 8, CATALOG["H100-80GB"])
    dp, zero = int(row["dp"]), int(row["zero"])
    tp = int(row["tp"])
    # nanotron: fp32 gradient accumulation in every run, sequence + vocabulary parallel TP
    layout = Layout(dp=dp, tp=tp, pp=int(row["pp"]), zero_stage=zero, micro_batch=int(row["mbs"]),
                    grad_accum=int(row["gas"]), sequence_parallel=tp > 1)
    training = Training(seq_len=4096, global_batch=int(row["gbs"]), grad_accum_dtype="fp32",
                        tp_linear="nanotron_async")
    # BF16_Optimizer shards master + moments over dp; nanotron's ZeRO-0 keeps them whole: dp = 1 for memory
    mem_layout = Layout(**{**layout.to_dict(), "dp": 1}) if zero == 0 else layout
    # rank 0 (the only one nanotron's benchmark CSV reports) sits on the first pipeline stage, which holds
    # first_stage_layers(): shardplan's stages take ceil(L'/pp) layers, so L' = that times pp
    mem_model = replace(model, n_layers=first_stage_layers(model, layout.pp) * layout.pp) if layout.pp > 1 else model
    phases = [parts for name, parts in memory_phases(mem_model, cluster, mem_layout, training)
              if name.startswith(("first/", "all/"))]
    params, grads, optim, acts, other = max(phases, key=sum)
    peak = params + grads + optim + acts + other
    reserved = peak + excess * (acts + other)
    t = estimate_time(model, cluster, layout, training)
    tokens = layout.global_batch * training.seq_len
    try:   # what `estimate --batch` does with the row: accepted unless the engine's rules refuse the layout
        # (global batch 0 = the layout's own: 137 rows' gbs column is not their mbs x gas x dp)
        evaluate(model, cluster, layout, replace(training, global_batch=0))
        refusal = None
    except ValueError as e:
        refusal = str(e)
    ran = row["mem_gb"] != "nan"
    placed = nanotron_places(model, layout.pp)
    return {"model": row["model"], "nodes": int(row["nodes"]), "layout": layout.to_dict(),
            "predicted_peak_gib": peak / GiB, "predicted_reserved_gib": reserved / GiB,
            "predicted_fits": reserved <= cluster.gpu.memory_bytes, "nanotron_places": placed,
            "predicted_runs": placed and reserved <= cluster.gpu.memory_bytes,
            "ran": ran, "measured_gib": float(row["mem_gb"]) if ran else None,
            "predicted_tok_s_gpu": tokens / t.step_s / cluster.world_size,
            "measured_tok_s_gpu": float(row["tok_s_gpu"]) if ran else None, "refusal": refusal}


def confusion(points: list[dict]) -> dict:
    """"fit" = predicted to run: the memory fits and nanotron gives every pipeline rank a block."""
    c = {"fit_ran": 0, "fit_crashed": 0, "oom_ran": 0, "oom_crashed": 0}
    for p in points:
        c[("fit_" if p["predicted_runs"] else "oom_") + ("ran" if p["ran"] else "crashed")] += 1
    n = len(points)
    c["accuracy"] = (c["fit_ran"] + c["oom_crashed"]) / n if n else float("nan")
    return c


def _median(xs: list[float]) -> float | None:
    xs = sorted(xs)
    return (xs[(len(xs) - 1) // 2] + xs[len(xs) // 2]) / 2 if xs else None


def summarize(points: list[dict]) -> dict:
    out = {}
    for name in ["all"] + list(MODELS):
        ps = [p for p in points if name == "all" or p["model"] == name]
        ran = [p for p in ps if p["ran"]]
        errs = [p["predicted_reserved_gib"] / p["measured_gib"] - 1 for p in ran]
        peak_errs = [p["predicted_peak_gib"] / p["measured_gib"] - 1 for p in ran]
        oom_only = [p for p in ps if p.get("status", "OOM" if not p["ran"] else "Success") != "Other"]
        out[name] = {"runs": len(ps), "accepted_by_estimate": sum(p["refusal"] is None for p in ps),
                     "nanotron_cannot_place": sum(not p["nanotron_places"] for p in ps),
                     "confusion": confusion(ps),
                     "confusion_oom_only": confusion(oom_only) if len(oom_only) < len(ps) else None,
                     "memory_mape_on_ran": sum(map(abs, errs)) / len(errs) if errs else None,
                     "memory_median_err_on_ran": _median(errs),
                     "allocated_peak_median_err_on_ran": _median(peak_errs),
                     "within_20pct": sum(abs(e) <= 0.2 for e in errs),
                     "spearman_tok_s_gpu": spearman([p["predicted_tok_s_gpu"] for p in ran],
                                                    [p["measured_tok_s_gpu"] for p in ran]) if len(ran) > 2 else None}
    return out


def crash_status(path: Path) -> dict:
    """(model, dp, tp, pp, zero, mbs, gas) -> nanotron's status ("OOM" or "Other": a crash that was not out
    of memory) from the raw benchmark CSV (bench_final2_mfu2.csv), for multi-head vocab-131k runs."""
    hidden = {m.hidden: k for k, m in MODELS.items()}
    out = {}
    for r in csv.DictReader(path.open()):
        name = r["name"]
        if "gqa" in name or "vocab131k" not in name or int(r["hidden_size"]) not in hidden:
            continue
        key = (hidden[int(r["hidden_size"])], int(r["dp"]), int(r["tp"]), int(r["pp"]), int(r["zero_stage"]),
               int(r["mbs"]), int(float(r["batch_accum"])))
        if out.get(key) != "OOM":         # a configuration that ran out of memory once counts as OOM
            out[key] = r["status"]
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--nanotron-csv", type=Path, help="nanotron's raw benchmark CSV (bench_final2_mfu2.csv): "
                    "splits the crashes into out-of-memory and other failures")
    args = ap.parse_args()
    if not CSV.is_file():
        print(f"{CSV} not found (../shared next to the checkout)", file=sys.stderr)
        return 2
    rows = list(csv.DictReader(CSV.open()))
    points = [predict(r) for r in rows]
    status = crash_status(args.nanotron_csv) if args.nanotron_csv else {}
    for r, p in zip(rows, points):
        if not p["ran"] and (status or r.get("status")):   # a status column in the sweep CSV works too
            key = (r["model"], *(int(r[k]) for k in ("dp", "tp", "pp", "zero", "mbs", "gas")))
            p["status"] = status.get(key) or r.get("status") or "OOM"
    summ = summarize(points)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    columns = ["model", "nodes", "dp", "tp", "pp", "zero", "mbs", "gas", "predicted_peak_gib",
               "predicted_reserved_gib", "measured_gib", "predicted_fits", "nanotron_places", "ran", "predicted_tok_s_gpu",
               "measured_tok_s_gpu"]
    table = [[p["model"], p["nodes"], p["layout"]["dp"], p["layout"]["tp"], p["layout"]["pp"],
              p["layout"]["zero_stage"], p["layout"]["micro_batch"], p["layout"]["grad_accum"],
              round(p["predicted_peak_gib"], 2), round(p["predicted_reserved_gib"], 2), p["measured_gib"],
              p["predicted_fits"], p["nanotron_places"], p["ran"],
              round(p["predicted_tok_s_gpu"]), p["measured_tok_s_gpu"]] for p in points]
    OUT.write_text(json.dumps({"summary": summ, "allocator_excess": ALLOCATOR_EXCESS,
                               "models": {k: m.to_dict() for k, m in MODELS.items()},
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
    check = f", calibration median {allocator_excess_fraction():.2f}" if CALIBRATION.is_file() else ""
    print(f"memory = predicted reserved (allocated peak of rank 0 + {ALLOCATOR_EXCESS} x its activations + other"
          f"{check}) vs mem_gb; the allocated peak alone: median "
          f"{summ['all']['allocated_peak_median_err_on_ran']:+.1%}")
    print(f"{summ['all']['nanotron_cannot_place']} runs leave a pipeline rank without a block (nanotron_places()): "
          f"predicted to crash whatever their memory")
    refused = [p for p in points if p["refusal"]]
    print(f"estimate accepts {summ['all']['accepted_by_estimate']} of {summ['all']['runs']} runs (the same evaluate() "
          f"as `estimate --batch`)" + (f"; first refusal: {refused[0]['refusal']}" if refused else ""))
    oom = summ["all"]["confusion_oom_only"]
    if oom:
        print(f"crashes that were out of memory only ({oom['fit_crashed'] + oom['oom_crashed']} of "
              f"{summ['all']['confusion']['fit_crashed'] + summ['all']['confusion']['oom_crashed']}): fit&crash "
              f"{oom['fit_crashed']}, oom&crash {oom['oom_crashed']}, accuracy {oom['accuracy']:.1%}")
    print(f"wrote {OUT.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
