"""Expert parallelism in the planner: the engines' rules, expert states sharded over ep and the expert-data-parallel
group, routed-token activations, the all-to-all, the search over ep, and the published DeepSeek-V3 layout."""
import json

import pytest
from click.testing import CliRunner

from shardplan.cli import main
from shardplan.planner.cluster import parse_cluster
from shardplan.planner.estimate import Training
from shardplan.planner.evaluate import evaluate
from shardplan.planner.layout import Layout
from shardplan.planner.presets import get_model
from shardplan.planner.search import run_search

MIXTRAL, H100x32 = get_model("mixtral-8x7b"), parse_cluster("4x8xH100-80GB")


def est(layout, engine="megatron", model=MIXTRAL, cluster=H100x32, seq=4096):
    return evaluate(model, cluster, layout, Training(seq_len=seq, engine=engine))


@pytest.mark.parametrize("engine,kw,msg", [
    ("megatron", dict(dp=32, ep=3), r"ep\(3\) must divide experts\(8\)"),
    ("megatron", dict(dp=16, tp=2, ep=8), "needs sequence parallelism"),
    ("deepspeed", dict(dp=32, ep=64), r"ep\(64\) must divide experts"),
    ("deepspeed", dict(dp=16, tp=2, ep=2), "splits experts over ep only"),
    ("deepspeed", dict(dp=32, ep=8, zero_stage=3), "ZeRO-3"),
])
def test_engine_rules_name_the_value_and_the_fix(engine, kw, msg):
    with pytest.raises(ValueError, match=msg):
        est(Layout(grad_accum=1, **kw), engine)


def test_dense_models_refuse_ep():
    with pytest.raises(ValueError, match="is dense"):
        est(Layout(dp=32, ep=2), model=get_model("llama-2-7b"))


def test_expert_states_shard_over_ep_and_the_expert_data_parallel_group():
    one = est(Layout(dp=32, zero_stage=1, ep=1, checkpointing="full"))
    eight = est(Layout(dp=32, zero_stage=1, ep=8, checkpointing="full"))
    experts = 32 * 8 * 3 * 4096 * 14336          # routed-expert parameters of Mixtral
    # bf16 weights: 7/8 of the experts leave each rank
    assert one.memory.params_bytes - eight.memory.params_bytes == pytest.approx(2 * experts * 7 / 8, rel=1e-6)
    # distributed optimizer: experts over world/(etp·ep·pp) = 4 ranks at ep 8, over 32 at ep 1: the same share
    assert eight.memory.optimizer_bytes == pytest.approx(one.memory.optimizer_bytes, rel=1e-6)
    assert eight.time.ep_comm_s > 0 and one.time.ep_comm_s == 0


def test_routed_activations_grow_with_top_k():
    base = est(Layout(dp=32, zero_stage=1, ep=8))
    top4 = est(Layout(dp=32, zero_stage=1, ep=8), model=get_model("mixtral-8x7b").__class__(
        **{**{k: v for k, v in vars(MIXTRAL).items()}, "top_k": 4}))
    assert top4.memory.activations_bytes > base.memory.activations_bytes * 1.3


def test_all_to_all_across_nodes_costs_more_than_inside():
    inside = est(Layout(dp=32, zero_stage=1, ep=8, checkpointing="full"))   # ep group: one node of 8
    across = est(Layout(dp=32, zero_stage=1, ep=8, checkpointing="full"), cluster=parse_cluster("8x4xH100-80GB"))
    assert across.time.ep_comm_s > 2 * inside.time.ep_comm_s


def test_mfu_counts_active_parameters():
    e = est(Layout(dp=32, zero_stage=1, ep=8, checkpointing="full"))
    flops = (6 * MIXTRAL.active_params + 12 * 32 * 4096 * 4096) * e.tokens_per_s
    assert e.mfu == pytest.approx(flops / (989e12 * 32))


def test_search_explores_ep():
    r = run_search(MIXTRAL, H100x32, Training(seq_len=4096, global_batch=256, engine="megatron"), 0.1, {})
    eps = {e.layout.ep for e in r.fits}
    assert {1, 2, 4, 8} <= eps and r.fits
    ds = run_search(MIXTRAL, H100x32, Training(seq_len=4096, global_batch=256), 0.1, {"ep": 4})
    assert ds.fits and all(e.layout.ep == 4 and e.layout.tp == 1 for e in ds.fits)


def test_deepseek_v3_published_layout_fits():
    # DeepSeek-V3 report, section 3.2: 2048 H800, PP 16, EP 64 over 8 nodes, ZeRO-1 DP, no TP, seq 4096;
    # recomputes RMSNorm and the MLA up-projections (selective); 61 layers as 16 stages with uneven ends
    v3 = get_model("deepseek-v3")
    layout = Layout(dp=128, pp=16, zero_stage=1, micro_batch=1, grad_accum=120, ep=64, checkpointing="selective",
                    pp_layers=(3,) + (4,) * 14 + (2,))
    e = est(layout, model=v3, cluster=parse_cluster("256x8xH800"))
    assert e.fits, e.memory.to_dict()
    assert layout.expert_dp("megatron") == 2   # 2048 / (64 · 16)


def test_estimate_json_contract_for_moe_and_dense():
    r = CliRunner().invoke(main, ["estimate", "--model", "gpt2-tiny-moe", "--cluster", "2xCPU", "--dp", "2",
                                  "--ep", "2", "--zero", "1", "--json"])
    assert r.exit_code == 0, r.output
    d = json.loads(r.stdout)
    assert (d["model"]["experts"], d["model"]["top_k"], d["layout"]["ep"], d["layout"]["etp"]) == (4, 2, 2, 1)
    assert d["model"]["active_params"] < d["model"]["params"]
    r = CliRunner().invoke(main, ["estimate", "--model", "gpt2", "--cluster", "1xH100-80GB", "--json"])
    d = json.loads(r.stdout)
    assert (d["model"]["experts"], d["model"]["top_k"], d["layout"]["ep"], d["layout"]["etp"]) == (0, None, 1, 1)
    r = CliRunner().invoke(main, ["estimate", "--model", "gpt2-tiny-moe", "--cluster", "2xCPU", "--dp", "2",
                                  "--ep", "3"])
    assert r.exit_code == 2 and "ep(3) must divide experts(4)" in r.output
    line = json.dumps({"model": "mixtral-8x7b", "cluster": "4x8xH100-80GB", "engine": "megatron",
                       "layout": {"ep": 8, "etp": 1, "zero": 1, "checkpointing": "full"}})
    r = CliRunner().invoke(main, ["estimate", "--batch", "-", "--seq", "4096"], input=line + "\n")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout.splitlines()[0])["layout"]["ep"] == 8
