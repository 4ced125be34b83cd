"""shardplan's Megatron-core FP8 model against NVIDIA's published FP8 pre-training runs on H100, B200 and GB200.

Sources (Tokens/sec/GPU as published; step time = GBS·seq / (tokens/s/GPU · GPUs)):
- NeMo 24.07, DGX-H100, FP8: NVIDIA/NeMo docs/source/performance/performance_summary.md (commit 070a0bb).
- NeMo 25.02, DGX-B200, FP8 and NeMo 25.04, DGX-GB200, FP8 ("per-tensor FP8 quantization, scaling factors
  computed in the current step"): docs.nvidia.com/nemo-framework/user-guide/latest/performance/
  performance_summary.html and its archive/25.04-performance-summary.html.
Dense rows with DDP + distributed optimizer only (rows with FSDP or unknown model shapes are left out, MoE rows are
benchmarks/moe_published.py's, and
Llama 3 405B on pp 8 x vp 8: 126 layers split as 128 with the embedding and the loss counted as layers, which
shardplan's Megatron layouts cannot express yet).

What the tables do not say is taken from Megatron's defaults, not fitted: the distributed optimizer with
overlapped grad reduce / param gather, sequence parallelism with tp, no activation recompute, flash attention,
per-tensor current scaling ("tensorwise"). Machines: 8 GPUs per DGX with 8x400 Gb/s (50 GB/s per GPU);
GB200 trays of 4 in NVL72 domains. GPT-3 shapes: GeLU, ffn 4h, vocabulary 50304 (GPT-2 BPE, padded).
Target (issue 11): median |step time error| within 15%.

    python benchmarks/fp8_published.py [--json]     # table, and benchmarks/results/fp8_published.json
"""
from __future__ import annotations

import statistics
import sys

from published import TARGET, dgx_cluster, error_summary, report
from shardplan.planner import get_model
from shardplan.planner.estimate import Training
from shardplan.planner.evaluate import evaluate
from shardplan.planner.layout import Layout
from shardplan.planner.model import ModelSpec

H100_2407 = "NeMo 24.07 DGX-H100 (NVIDIA/NeMo performance_summary.md @070a0bb)"
B200_2502 = "NeMo 25.02 DGX-B200 (docs.nvidia.com NeMo performance summary)"
GB200_2504 = "NeMo 25.04 DGX-GB200 (docs.nvidia.com NeMo performance summary, 25.04 archive)"


def gpt3(name: str, layers: int, hidden: int, heads: int) -> ModelSpec:
    return ModelSpec(name=name, arch="gpt2", n_layers=layers, hidden=hidden, n_heads=heads, n_kv_heads=heads,
                     ffn_hidden=4 * hidden, vocab=50304, max_seq_len=2048, tied_embeddings=True)


MODELS = {"GPT3-5B": gpt3("gpt3-5b", 24, 4096, 32), "GPT3-20B": gpt3("gpt3-20b", 44, 6144, 48),
          "GPT3-175B": gpt3("gpt3-175b", 96, 12288, 96), "LLAMA2-7B": get_model("llama-2-7b"),
          "LLAMA2-13B": get_model("llama-2-13b"), "LLAMA2-70B": get_model("llama-2-70b"),
          "LLAMA3-8B": get_model("llama-3-8b"), "LLAMA3-70B": get_model("llama-3-70b"),
          }

# (source, card, model, GPUs, GBS, MBS, seq, TP, PP, CP, VP, published tokens/s/GPU)
ROWS = (
    (H100_2407, "H100-80GB", "GPT3-5B", 64, 2048, 4, 2048, 1, 1, 1, 1, 22521),
    (H100_2407, "H100-80GB", "GPT3-20B", 64, 256, 2, 2048, 2, 1, 1, 1, 5851),
    (H100_2407, "H100-80GB", "GPT3-175B", 128, 256, 1, 2048, 4, 8, 1, 6, 726),
    (H100_2407, "H100-80GB", "GPT3-175B", 512, 2048, 2, 2048, 4, 8, 1, 6, 782),
    (H100_2407, "H100-80GB", "LLAMA2-7B", 8, 128, 1, 4096, 1, 1, 1, 1, 16847),
    (H100_2407, "H100-80GB", "LLAMA2-13B", 16, 128, 1, 4096, 1, 4, 1, 10, 8646),
    (H100_2407, "H100-80GB", "LLAMA2-70B", 64, 128, 1, 4096, 4, 4, 1, 20, 1707),
    (H100_2407, "H100-80GB", "LLAMA3-8B", 8, 128, 1, 8192, 1, 1, 2, 1, 12036),
    (H100_2407, "H100-80GB", "LLAMA3-70B", 64, 128, 1, 8192, 4, 4, 2, 5, 1533),
    (B200_2502, "B200", "GPT3-175B", 512, 2048, 2, 2048, 4, 4, 1, 6, 1600),
    (B200_2502, "B200", "LLAMA3-8B", 8, 128, 2, 8192, 1, 1, 1, 1, 26006),
    (B200_2502, "B200", "LLAMA3-70B", 64, 128, 1, 8192, 2, 4, 2, 5, 3062),
    (GB200_2504, "GB200", "GPT3-175B", 128, 256, 2, 2048, 4, 4, 1, 12, 1804),
    (GB200_2504, "GB200", "LLAMA3-8B", 8, 128, 2, 8192, 1, 1, 1, 1, 33099),
)


def predict(row: tuple) -> dict:
    source, card, name, gpus, gbs, mbs, seq, tp, pp, cp, vp, published = row
    cluster = dgx_cluster(card, gpus)
    dp = gpus // (tp * pp * cp)
    layout = Layout(dp=dp, tp=tp, pp=pp, cp=cp, vpp=vp, zero_stage=1, micro_batch=mbs,
                    grad_accum=gbs // (mbs * dp), sequence_parallel=tp > 1)
    est = evaluate(MODELS[name], cluster, layout, Training(seq_len=seq, global_batch=gbs, precision="fp8",
                                                           engine="megatron"), headroom=0.0)
    measured = gbs * seq / (published * gpus)
    return {"source": source, "gpu": card, "model": name, "gpus": gpus, "layout": layout.to_dict(), "seq": seq,
            "published_tokens_per_s_per_gpu": published, "measured_s": measured, "predicted_s": est.step_time_s,
            "error": est.step_time_s / measured - 1, "model_tflops_per_gpu": est.model_tflops_per_gpu,
            "fits": est.fits, "peak_gib": est.memory.peak_bytes / 2**30, "time": est.time.to_dict()}


def main() -> int:
    rows = [predict(r) for r in ROWS]
    summary = {**error_summary(rows), "target": TARGET}
    for card in ("H100-80GB", "B200", "GB200"):
        summary[f"median_abs_error_{card}"] = statistics.median(abs(r["error"]) for r in rows if r["gpu"] == card)
    columns = [("card", -9, lambda r: r["gpu"]), ("model", -12, lambda r: r["model"]),
               ("GPUs", 4, lambda r: str(r["gpus"]))]
    columns += [(k, 3, lambda r, k=k: str(r["layout"][k])) for k in ("tp", "pp", "cp", "vpp")]
    columns += [("|", 1, lambda r: "|"), ("published s", 11, lambda r: f"{r['measured_s']:.2f}"),
                ("predicted s", 11, lambda r: f"{r['predicted_s']:.2f}"), ("error", 7, lambda r: f"{r['error']:+.1%}"),
                ("|", 1, lambda r: "|"), ("model TF/s", 10, lambda r: f"{r['model_tflops_per_gpu']:,.0f}"),
                ("fits", -4, lambda r: "yes" if r["fits"] else "NO")]
    footer = (f"step time: median |error| {summary['median_abs_error']:.1%} (H100 "
              f"{summary['median_abs_error_H100-80GB']:.1%}, B200 {summary['median_abs_error_B200']:.1%}, GB200 "
              f"{summary['median_abs_error_GB200']:.1%}), {summary['within_15pct']}/{len(rows)} within 15%, max "
              f"{summary['max_abs_error']:.1%}")
    return report(__doc__, "fp8_published", rows, summary, columns, footer)


if __name__ == "__main__":
    sys.exit(main())
