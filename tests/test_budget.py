"""Time to train and cost: the pure math (planner/budget.py), `plan --tokens/--price`, the node sweep
(`--nodes`, `--deadline`, `--objective`) and `compare --tokens`, with the JSON keys scripts rely on."""
import json

import pytest
from click.testing import CliRunner

from shardplan.cli import main
from shardplan.planner import Training, get_model
from shardplan.planner.budget import (choose, cheapest, fastest, parse_amount, parse_duration, parse_nodes, sweep,
                                      time_to_train)
from shardplan.planner.cluster import parse_cluster
from shardplan.planner.plan import plan

BUDGET = {"time_to_train_s", "gpu_hours", "cost"}


def run(*args):
    return CliRunner().invoke(main, list(args))


def test_parsing():
    assert parse_amount("300B") == 300 * 10**9 and parse_amount("1.5T") == 1_500_000_000_000
    assert parse_duration("30d") == 30 * 86400 and parse_duration("36h") == 36 * 3600
    assert parse_nodes("1-4,8") == [1, 2, 3, 4, 8]
    for bad, fn in (("300X", parse_amount), ("soon", parse_duration), ("4-1", parse_nodes), ("0", parse_nodes)):
        with pytest.raises(ValueError):
            fn(bad)


def test_time_to_train_math():
    e = plan(get_model("gpt2-xl"), parse_cluster("8xH100"), Training()).best
    b = time_to_train(e, 10**10, 2.0)
    assert b["time_to_train_s"] == pytest.approx(10**10 / e.tokens_per_s)
    assert b["gpu_hours"] == pytest.approx(b["time_to_train_s"] * 8 / 3600)
    assert b["cost"] == pytest.approx(2.0 * b["gpu_hours"])
    assert time_to_train(e, 10**10)["cost"] is None


def test_sweep_picks_cheapest_fastest_and_respects_the_deadline():
    entries = sweep(get_model("llama-3-8b"), parse_cluster("8xH100"), Training(seq_len=4096), [1, 2, 4, 8],
                    tokens=300 * 10**9, price=2.49)
    assert [x.nodes for x in entries] == [1, 2, 4, 8]
    cheap, fast = cheapest(entries), fastest(entries)
    assert cheap.budget["gpu_hours"] == min(x.budget["gpu_hours"] for x in entries)
    assert fast.budget["time_to_train_s"] == min(x.budget["time_to_train_s"] for x in entries)
    deadline = sorted(x.budget["time_to_train_s"] for x in entries)[1] * 1.001   # two entries make it
    pick = choose(entries, "cost", deadline)
    assert pick.budget["time_to_train_s"] <= deadline
    assert pick.budget["gpu_hours"] == min(x.budget["gpu_hours"] for x in entries
                                           if x.budget["time_to_train_s"] <= deadline)
    with pytest.raises(ValueError, match="no node count finishes by the deadline"):
        choose(entries, "cost", 1.0)


def test_plan_tokens_price_json_on_best_and_candidates():
    r = run("plan", "--model", "gpt2-xl", "--cluster", "8xH100", "--tokens", "30B", "--price", "2.49", "--json")
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert out["candidates"]
    for e in [out["best"], *out["candidates"]]:
        assert BUDGET <= set(e)
        assert e["time_to_train_s"] == pytest.approx(30e9 / e["tokens_per_s"])
        assert e["cost"] == pytest.approx(e["gpu_hours"] * 2.49)
    text = run("plan", "--model", "gpt2-xl", "--cluster", "8xH100", "--tokens", "30B", "--price", "2.49").output
    assert "time to train" in text and "GPU-hours" in text and "days" in text


def test_plan_nodes_sweep_json():
    r = run("plan", "--model", "gpt2-xl", "--cluster", "8xH100", "--tokens", "30B", "--price", "2.49",
            "--nodes", "1-3", "--json")
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert [x["nodes"] for x in out["sweep"]] == [1, 2, 3]
    for x in out["sweep"]:
        assert {"nodes", "gpus", "best", "time_to_train_s", "gpu_hours", "cost"} <= set(x)
    assert out["cheapest"] in out["sweep"] and out["fastest"] in out["sweep"]
    assert out["cheapest"]["gpu_hours"] == min(x["gpu_hours"] for x in out["sweep"])
    assert out["fastest"]["time_to_train_s"] == min(x["time_to_train_s"] for x in out["sweep"])
    assert out["objective"] == "time" and out["chosen"] == out["fastest"]


def test_compare_tokens_json_and_table():
    r = run("compare", "--model", "gpt2-xl", "--cluster", "8xH100", "--tokens", "30B", "--price", "2", "--json")
    assert r.exit_code == 0, r.output
    assert all(BUDGET <= set(row) for row in json.loads(r.stdout))
    text = run("compare", "--model", "gpt2-xl", "--cluster", "8xH100", "--tokens", "30B").output
    assert "days" in text and "GPU-h" in text


@pytest.mark.parametrize("args, needle", [
    (["--tokens", "lots"], "--tokens('lots')"),
    (["--price", "2"], "--price needs --tokens"),
    (["--tokens", "1B", "--price", "-1"], "--price(-1.0)"),
    (["--deadline", "30d"], "give --nodes too"),
    (["--tokens", "1B", "--nodes", "8-2"], "--nodes('8-2')"),
    (["--tokens", "300T", "--nodes", "1-2", "--deadline", "1h"], "no node count finishes by the deadline"),
    (["--nodes", "1-2", "--objective", "cost"], "needs --tokens"),
])
def test_bad_input_exit_2_one_line(args, needle):
    r = run("plan", "--model", "gpt2", "--cluster", "8xH100", *args)
    assert r.exit_code == 2 and needle in r.output and len(r.output.strip().splitlines()) == 1, r.output
