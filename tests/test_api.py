"""The public planner API (shardplan.planner): names, round trips, errors that name the fix."""
import json

import pytest

import shardplan.planner as planner
from shardplan.planner import (Cluster, GPUType, Layout, ModelSpec, NothingFits, Plan, Training, compare,
                               evaluate, plan)

CARD = GPUType("TEST-80GB", 80 * 10**9, 312.0, 312.0, 19.5, 2039.0, 300.0)
GPT2XL = ModelSpec("gpt2-xl-like", "gpt2", 48, 1600, 25, 25, 6400, 50257, 1024, True)


def test_public_names_are_exported():
    for name in ("get_model", "get_cluster", "ModelSpec", "Cluster", "GPUType", "Layout", "ZeroStage", "Training",
                 "Estimate", "MemoryBreakdown", "TimeBreakdown", "evaluate", "plan", "compare", "Plan",
                 "NothingFits"):
        assert hasattr(planner, name), name
    assert issubclass(NothingFits, ValueError)


def test_evaluate_fills_the_global_batch_and_serialises_to_the_contract():
    cluster = Cluster(1, 8, CARD)
    est = evaluate(GPT2XL, cluster, Layout(dp=8, zero_stage=2, micro_batch=4, grad_accum=2), Training(1024))
    d = json.loads(json.dumps(est.to_dict()))
    assert d["training"]["global_batch"] == 64
    assert set(d) >= {"model", "cluster", "layout", "memory", "fits", "step_time_s", "tokens_per_s", "mfu"}
    assert d["layout"] == {"dp": 8, "tp": 1, "pp": 1, "zero_stage": 2, "micro_batch": 4, "grad_accum": 2,
                           "checkpointing": "none", "offload": "none", "sequence_parallel": False, "cp": 1,
                           "vpp": 1, "pp_layers": None, "ep": 1, "etp": 1}
    assert d["memory"]["peak_bytes"] == sum(d["memory"][k] for k in (
        "params_bytes", "grads_bytes", "optimizer_bytes", "activations_bytes", "other_bytes"))


@pytest.mark.parametrize("layout, training, fragment", [
    (Layout(dp=4), Training(1024), "must equal the cluster's 8 GPUs"),
    (Layout(dp=4, tp=2), Training(1024), "tp(2) must divide n_heads(25)"),
    (Layout(dp=1, tp=1, pp=8), Training(1024), None),
    (Layout(dp=8, micro_batch=2), Training(1024, global_batch=64), "change --grad-accum or --global-batch"),
])
def test_evaluate_rejects_layouts_that_cannot_run(layout, training, fragment):
    cluster = Cluster(1, 8, CARD)
    if fragment is None:
        assert evaluate(GPT2XL, cluster, layout, training).layout.pp == 8
        return
    with pytest.raises(ValueError) as err:
        evaluate(GPT2XL, cluster, layout, training)
    assert fragment in str(err.value)


def test_plan_round_trips_to_the_json_contract():
    p = plan(GPT2XL, Cluster(2, 8, CARD), Training(1024, 512))
    assert isinstance(p, Plan) and p.best.fits and p.evaluated > len(p.candidates)
    d = json.loads(json.dumps(p.to_dict()))
    assert set(d) == {"best", "candidates", "evaluated", "reasons"}
    assert d["best"]["layout"] == p.best.layout.to_dict()
    assert all(c["fits"] for c in d["candidates"])
    assert d["best"]["training"]["global_batch"] == 512


def test_plan_rejects_unknown_constraints():
    with pytest.raises(ValueError, match="unknown plan constraints"):
        plan(GPT2XL, Cluster(1, 8, CARD), Training(1024), zero=2)


def test_compare_names_each_method_once():
    rows = compare(GPT2XL, Cluster(1, 8, CARD), Training(1024, 64))
    names = [n for n, _ in rows]
    assert names[:4] == ["data parallel", "ZeRO-1", "ZeRO-2", "ZeRO-3"]
    assert len(set(names)) == len(names)
    assert "tensor parallel" not in names    # 25 heads: no tp > 1 divides them
    assert "pipeline parallel" in names and "hybrid" in names


def test_nothing_fits_carries_a_suggestion():
    huge = ModelSpec("huge", "llama", 96, 16384, 128, 8, 53248, 128256, 8192, False)
    with pytest.raises(NothingFits) as err:
        plan(huge, Cluster(1, 1, CARD), Training(4096, 8), offload="none")
    assert err.value.suggestion
    assert "--cluster" in err.value.suggestion
