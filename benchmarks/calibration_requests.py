"""The measured rows benchmarks/accuracy.py reads, as `shardplan calibrate --measurements` lines: each an
`estimate --batch` request plus "measured" {peak_bytes, step_time_s}. Writes
benchmarks/results/h200_gpt2_measurements.jsonl: the H200 rows of ../shared/calibration (torch.compile rows
left out: the planner models eager).

    python benchmarks/calibration_requests.py
    shardplan calibrate --measurements benchmarks/results/h200_gpt2_measurements.jsonl --out h200.json
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from accuracy import ROOT, load_rows, point_inputs  # noqa: E402  (the same rows, read the same way)

OUT = ROOT / "benchmarks" / "results" / "h200_gpt2_measurements.jsonl"


def request(r: dict) -> dict:
    """One measured row as a request line; the planner inputs it resolves to are point_inputs(r)'s."""
    model, cluster, layout, training = point_inputs(r)
    h = r["n_embd"]
    return {"model": "gpt2", "cluster": cluster.spec,
            "overrides": {"layers": r["n_layer"], "hidden": h, "heads": r["n_head"], "kv_heads": r["n_head"],
                          "ffn_hidden": 4 * h, "vocab": r["vocab"], "seq_len": r["seq"]},
            "layout": {"dp": layout.dp, "tp": layout.tp, "pp": layout.pp, "zero": int(layout.zero_stage),
                       "micro_batch": layout.micro_batch, "grad_accum": layout.grad_accum,
                       "checkpointing": layout.checkpointing, "offload": layout.offload},
            "training": {"seq": training.seq_len, "precision": training.precision, "engine": training.engine,
                         "zero_buckets": training.zero_buckets},
            "measured": {"peak_bytes": r["peak_allocated"], "step_time_s": r.get("step_s")},
            "note": f"{r['size']} {r['engine']} ZeRO-{r['stage']} mbs {r['mbs']} ckpt {bool(r['ckpt'])}, "
                    f"{r['gpu']}, torch {r.get('torch', '?')}"}


def main() -> int:
    rows = [(src, r) for src, r in load_rows() if "H200" in r["gpu"]]   # the H200 rows; CPU ones are memory only
    OUT.write_text("".join(json.dumps(request(r)) + "\n" for _, r in rows))
    print(f"wrote {len(rows)} lines to {OUT.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
