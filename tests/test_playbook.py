"""benchmarks/playbook.py's mapping of nanotron's pipeline placement (models/base.py build_model) onto the sweep."""
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import playbook  # noqa: E402


def test_every_block_is_placed_once_in_forward_order():
    for name, model in playbook.MODELS.items():
        for pp in (1, 2, 4, 8, 16, 32, 64):
            stages = playbook.nanotron_stages(model, pp)
            flat = [b for stage in stages for b in stage]
            assert flat[0] == "embedding" and flat[-1] == "loss", (name, pp)
            assert flat.count("layer") == model.n_layers and len(stages) == pp


def test_first_stage_is_deeper_than_an_even_split_because_the_head_weighs_like_layers():
    one_b = playbook.MODELS["1B"]              # lm_head 131072·2048 = 4 layers of 67M
    assert playbook.first_stage_layers(one_b, 2) == 11 > 16 // 2
    assert playbook.first_stage_layers(one_b, 1) == 16


@pytest.mark.parametrize("model,pp,placed", [("1B", 8, True), ("1B", 16, False), ("1B", 32, False),
                                             ("3B", 16, True), ("3B", 32, False), ("8B", 32, True),
                                             ("8B", 64, False), ("80B", 64, True), ("80B", 128, False)])
def test_ranks_after_the_last_block_are_empty(model, pp, placed):
    stages = playbook.nanotron_stages(playbook.MODELS[model], pp)
    assert playbook.nanotron_places(playbook.MODELS[model], pp) is placed
    if not placed:       # the empty ranks are the trailing ones: build_model never skips a rank
        first_empty = next(i for i, s in enumerate(stages) if not s)
        assert all(not s for s in stages[first_empty:]) and "loss" in stages[first_empty - 1]


def test_an_unplaceable_run_is_predicted_to_crash_even_when_its_memory_fits():
    row = {"model": "1B", "nodes": "8", "mbs": "1", "gas": "64", "gbs": "256", "dp": "4", "pp": "16", "tp": "1",
           "zero": "1", "mfu": "nan", "tok_s_gpu": "nan", "tok_s": "nan", "mem_gb": "nan"}
    p = playbook.predict(row)
    assert p["predicted_fits"] and not p["nanotron_places"] and not p["predicted_runs"]
    assert playbook.confusion([p])["oom_crashed"] == 1


def test_a_ring_collective_waits_one_hop_per_ring_step():
    """NCCL's ring cost model (src/graph/tuning.cc): base + (n-1) hops, nodes-1 of them over the network."""
    from shardplan.planner.comm import NCCL_NET_HOP_S, NCCL_NVLINK_HOP_S, NCCL_RING_BASE_S, ring_latency_s
    from shardplan.planner.cluster import CATALOG, Cluster
    four_nodes = Cluster(4, 8, CATALOG["H100-80GB"])
    assert ring_latency_s(four_nodes, 1, 1, 1) == 0.0
    assert ring_latency_s(four_nodes, 2, 1, 1) == pytest.approx(NCCL_RING_BASE_S + NCCL_NVLINK_HOP_S)
    tp32 = ring_latency_s(four_nodes, 32, 1, 1)
    assert tp32 == pytest.approx(NCCL_RING_BASE_S + 28 * NCCL_NVLINK_HOP_S + 3 * NCCL_NET_HOP_S)
    assert ring_latency_s(four_nodes, 32, 1, 2) > 1.9 * tp32 > 4 * ring_latency_s(four_nodes, 8, 1, 1)


def _row(**kw):
    row = {"model": "1B", "nodes": "1", "mbs": "1", "gas": "256", "gbs": "256", "dp": "1", "pp": "1", "tp": "8",
           "zero": "0", "mfu": "nan", "tok_s_gpu": "nan", "tok_s": "nan", "mem_gb": "nan"}
    return {**row, **{k: str(v) for k, v in kw.items()}}


def test_nanotron_async_tp_linears_cost_host_time_only_when_tp_splits_the_layer():
    from dataclasses import replace
    from shardplan.planner.cluster import CATALOG, Cluster
    from shardplan.planner.estimate import Training
    from shardplan.planner.layout import Layout
    from shardplan.planner.timing import estimate_time
    node, model = Cluster(1, 8, CATALOG["H100-80GB"]), playbook.MODELS["1B"]
    plain = Training(seq_len=4096, grad_accum_dtype="fp32")
    nanotron = replace(plain, tp_linear="nanotron_async")
    tp8 = Layout(dp=1, tp=8, micro_batch=1, grad_accum=16, sequence_parallel=True)
    assert estimate_time(model, node, tp8, nanotron).step_s > estimate_time(model, node, tp8, plain).step_s
    dp8 = Layout(dp=8, micro_batch=1, grad_accum=16)
    assert estimate_time(model, node, dp8, nanotron) == estimate_time(model, node, dp8, plain)
    with pytest.raises(ValueError, match="tp_linear"):
        Training(tp_linear="async")
    # the sweep's 1B at tp 8 on one node: 6,907 tokens/s per GPU at mbs 1 (host bound), 28,101 at mbs 16
    assert playbook.predict(_row())["predicted_tok_s_gpu"] < playbook.predict(_row(mbs=16, gas=16))["predicted_tok_s_gpu"]


@pytest.mark.skipif(not playbook.CSV.is_file(), reason="the sweep CSV lives in ../shared/reference")
def test_predicted_speed_ranks_the_completed_runs_with_spearman_above_0_8():
    import csv
    points = [playbook.predict(r) for r in csv.DictReader(playbook.CSV.open())]
    summary = playbook.summarize(points)["all"]
    assert summary["spearman_tok_s_gpu"] >= 0.8
    assert summary["confusion"]["accuracy"] >= 0.95
