"""benchmarks/torchtitan_published.py: the FSDP2 Llama 3.1 8B point is predicted through the ZeRO-3 path, and the
per-op selective recompute and the published card's slower HBM both cost time. Accuracy is reported, not asserted."""
import math
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import torchtitan_published as tt  # noqa: E402


def test_prediction_is_finite_and_the_source_differences_slow_it():
    h100, hbm2e = tt.predict("H100-80GB"), tt.predict("H100-80GB", hbm_gbps=2400.0)
    assert math.isfinite(h100["step_s"]) and 0 < h100["mfu"] < 1
    assert h100["step_s_op_sac"] > h100["step_s"] and hbm2e["step_s"] > h100["step_s"]
    assert h100["time"]["compute_s"] > 0.8 * h100["step_s"]      # compute bound: 16k tokens per GPU per step


def test_mfu_numerator_is_torchtitans():
    model = tt.PRESETS["llama-3.1-8b"]
    assert tt.model_flops_per_token(model) == 6 * (model.params - model.embedding_params) + 12 * 32 * 4096 * 8192
