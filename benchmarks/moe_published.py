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

import sys

from published import dgx_cluster, error_summary, report
from shardplan.planner import get_model
from shardplan.planner.engines import uneven_stages
from shardplan.planner.estimate import Training
from shardplan.planner.evaluate import evaluate
from shardplan.planner.layout import Layout

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
    est = evaluate(get_model(name), dgx_cluster(card, gpus), layout,
                   Training(seq_len=seq, global_batch=gbs, precision=precision, engine="megatron"), headroom=0.0)
    measured = gbs * seq / (published * gpus)
    return {"source": source, "gpu": card, "model": name, "gpus": gpus, "layout": layout.to_dict(), "seq": seq,
            "precision": precision, "published_tokens_per_s_per_gpu": published, "measured_s": measured,
            "predicted_s": est.step_time_s, "error": est.step_time_s / measured - 1,
            "model_tflops_per_gpu": est.model_tflops_per_gpu, "fits": est.fits,
            "peak_gib": est.memory.peak_bytes / 2**30, "time": est.time.to_dict()}


def main() -> int:
    rows = [predict(r) for r in ROWS]
    summary = {**error_summary(rows), "fit": sum(r["fits"] for r in rows)}
    columns = [("card", -9, lambda r: r["gpu"]), ("model", -14, lambda r: r["model"]),
               ("GPUs", 4, lambda r: str(r["gpus"]))]
    columns += [(k, 3, lambda r, k=k: str(r["layout"][k])) for k in ("tp", "pp", "cp", "vpp", "ep")]
    columns += [("prec", -4, lambda r: r["precision"]), ("|", 1, lambda r: "|"),
                ("published s", 11, lambda r: f"{r['measured_s']:.2f}"),
                ("predicted s", 11, lambda r: f"{r['predicted_s']:.2f}"), ("error", 7, lambda r: f"{r['error']:+.1%}"),
                ("|", 1, lambda r: "|"), ("a2a s", 6, lambda r: f"{r['time']['ep_comm_s']:.2f}"),
                ("peak GiB", 8, lambda r: f"{r['peak_gib']:.1f}"), ("fits", -4, lambda r: "yes" if r["fits"] else "NO")]
    footer = (f"step time: median |error| {summary['median_abs_error']:.1%}, {summary['within_15pct']}/{len(rows)} "
              f"within 15%, max {summary['max_abs_error']:.1%}; {summary['fit']}/{len(rows)} fit")
    return report(__doc__, "moe_published", rows, summary, columns, footer)


if __name__ == "__main__":
    sys.exit(main())
