"""shardplan's mixture-of-experts model (planner/moe.py on the Megatron-core engine) against published MoE training runs.

Sources (Tokens/sec/GPU as published; step time = GBS·seq / (tokens/s/GPU · GPUs)):
- NeMo 25.04, DGX-GB200, FP8 (per-tensor current scaling), Megatron-core: docs.nvidia.com/nemo-framework/user-guide/
  latest/performance/archive/25.04-performance-summary.html: Mixtral-8x7B (64 GPUs, EP 8) and Mixtral-8x22B (256
  GPUs, seq 65536, TP 2 PP 4 CP 8 VP 14 EP 8; the page's GBS/MBS cells read "1 | 64", which only GA = 16 with
  dp = 4 makes consistent as GBS 64, MBS 1). These are the MoE FP8 rows fp8_published.py leaves to this file.
- NeMo AutoModel, DGX-H100, BF16: docs.nvidia.com/nemo/automodel/latest/performance-summary.html: DeepSeek V3 671B
  on 256 and 1024 GPUs (PP 4, EP 64, VP 8), Qwen3 MoE 30B on 8 GPUs (EP 8). AutoModel is PyTorch FSDP2 + DeepEP,
  not Megatron-core: it is predicted as the closest Megatron layout (distributed optimizer instead of FSDP, the
  same tp/pp/ep), so FSDP's parameter all-gathers are missing from the prediction and DeepEP's faster dispatch too.
- DeepSeek-V3 technical report (arXiv 2412.19437), sections 1 and 3: 2,048 H800, 180K H800 GPU-hours per
  trillion tokens (= 1,543 tokens/s/GPU), PP 16, EP 64, ZeRO-1, no TP, seq 4096, global batch 15,360 (its final
  value), FP8 mixed precision (fine-grained block scaling; predicted as Transformer Engine's tensorwise FP8),
  DualPipe (all-to-all hidden behind compute; shardplan's model does not overlap it), selective recompute.

What the tables do not say is taken from Megatron's defaults, not fitted: micro-batch 1 where unstated, the
distributed optimizer, SP with tp, no recompute except where the source says it (DeepSeek-V3: selective), uneven
first/last stages where pp does not divide the layers; VP only where every stage's layers divide by it (DeepSeek
V3's 61 layers cannot take VP 8 on 4 stages here: predicted with VP 1, a larger bubble). Machines as in
fp8_published.py. No accuracy target is claimed yet (issue 10 asks only that the figures be collected and predicted).

    python benchmarks/moe_published.py [--json]     # table, and benchmarks/results/moe_published.json
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys

from fp8_published import ROOT, cluster_for
from shardplan.planner import get_model
from shardplan.planner.engines import uneven_stages
from shardplan.planner.estimate import Training
from shardplan.planner.evaluate import evaluate
from shardplan.planner.layout import Layout

OUT = ROOT / "benchmarks" / "results" / "moe_published.json"
GB200_2504 = "NeMo 25.04 DGX-GB200 FP8 (docs.nvidia.com NeMo performance summary, 25.04 archive)"
AUTOMODEL = "NeMo AutoModel DGX-H100 BF16, FSDP2 + DeepEP (docs.nvidia.com/nemo/automodel performance summary)"
DSV3 = "DeepSeek-V3 technical report (arXiv 2412.19437): 180K H800 GPU-hours per trillion tokens"

# (source, card, model preset, GPUs, GBS, MBS, seq, TP, PP, CP, VP, EP, precision, recompute, published tok/s/GPU)
ROWS = (
    (GB200_2504, "GB200", "mixtral-8x7b", 64, 256, 2, 4096, 1, 1, 1, 1, 8, "fp8", "none", 19275),
    (GB200_2504, "GB200", "mixtral-8x22b", 256, 64, 1, 65536, 2, 4, 8, 14, 8, "fp8", "none", 2731),
    (AUTOMODEL, "H100-80GB", "deepseek-v3", 256, 512, 1, 4096, 1, 4, 1, 8, 64, "bf16", "selective", 1002),
    (AUTOMODEL, "H100-80GB", "deepseek-v3", 1024, 8192, 1, 4096, 1, 4, 1, 8, 64, "bf16", "selective", 865),
    (AUTOMODEL, "H100-80GB", "qwen3-30b-a3b", 8, 512, 4, 4096, 1, 1, 1, 1, 8, "bf16", "none", 12040),
    (DSV3, "H800", "deepseek-v3", 2048, 15360, 1, 4096, 1, 16, 1, 1, 64, "fp8", "selective", 1e12 / (180e3 * 3600)),
)


def layout_for(row: tuple) -> Layout:
    _, _, name, gpus, gbs, mbs, _, tp, pp, cp, vp, ep, _, recompute, _ = row
    model = get_model(name)
    stages = uneven_stages(model.n_layers, pp) if model.n_layers % pp else None
    if any(n % vp for n in (stages or (model.n_layers // pp,))):
        vp = 1
    dp = gpus // (tp * pp * cp)
    return Layout(dp=dp, tp=tp, pp=pp, cp=cp, vpp=vp, zero_stage=1, micro_batch=mbs, grad_accum=gbs // (mbs * dp),
                  sequence_parallel=tp > 1, ep=ep, checkpointing=recompute, pp_layers=stages)


def predict(row: tuple) -> dict:
    source, card, name, gpus, gbs, _, seq, *_, precision, _, published = row
    layout = layout_for(row)
    est = evaluate(get_model(name), cluster_for(card, gpus), layout,
                   Training(seq_len=seq, global_batch=gbs, precision=precision, engine="megatron"), headroom=0.0)
    measured = gbs * seq / (published * gpus)
    return {"source": source, "gpu": card, "model": name, "gpus": gpus, "layout": layout.to_dict(), "seq": seq,
            "precision": precision, "published_tokens_per_s_per_gpu": published, "measured_s": measured,
            "predicted_s": est.step_time_s, "error": est.step_time_s / measured - 1,
            "model_tflops_per_gpu": est.model_tflops_per_gpu, "fits": est.fits,
            "peak_gib": est.memory.peak_bytes / 2**30, "time": est.time.to_dict()}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", action="store_true", help="print the JSON instead of the table")
    args = ap.parse_args()
    rows = [predict(r) for r in ROWS]
    errors = [abs(r["error"]) for r in rows]
    summary = {"points": len(rows), "median_abs_error": statistics.median(errors), "max_abs_error": max(errors),
               "within_15pct": sum(e <= 0.15 for e in errors),
               "fit": sum(r["fits"] for r in rows)}
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps({"summary": summary, "rows": rows}, indent=1) + "\n")
    if args.json:
        print(json.dumps({"summary": summary, "rows": rows}, indent=1))
        return 0
    print(f"{'card':10}{'model':15}{'GPUs':>5}{'tp':>3}{'pp':>3}{'cp':>3}{'vp':>3}{'ep':>4} {'prec':5}| "
          f"{'published s':>11} {'predicted s':>11} {'error':>7} | {'a2a s':>6} {'peak GiB':>8} fits")
    for r in rows:
        lay = r["layout"]
        print(f"{r['gpu']:10}{r['model']:15}{r['gpus']:>5}{lay['tp']:>3}{lay['pp']:>3}{lay['cp']:>3}{lay['vpp']:>3}"
              f"{lay['ep']:>4} {r['precision']:5}| {r['measured_s']:>11.2f} {r['predicted_s']:>11.2f} "
              f"{r['error']:>+7.1%} | {r['time']['ep_comm_s']:>6.2f} {r['peak_gib']:>8.1f} "
              f"{'yes' if r['fits'] else 'NO'}")
    print(f"step time: median |error| {summary['median_abs_error']:.1%}, {summary['within_15pct']}/{len(rows)} "
          f"within 15%, max {summary['max_abs_error']:.1%}; {summary['fit']}/{len(rows)} fit")
    print(f"wrote {OUT.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
