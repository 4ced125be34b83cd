"""benchmarks/gpu_check.py: its --dry mode runs the device check's whole path (plan, render, `shardplan launch`,
metrics vs plan.json) on CPU with the tiny preset; the layout choice is checked against a real plan."""
import importlib.util
import json
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.py"


def _module():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_planned_layout_and_two_distinct_runner_ups_that_fit():
    from shardplan.planner import get_model, plan
    from shardplan.launch.inventory import get_cluster
    from shardplan.planner.estimate import Training
    gc = _module()
    p = plan(get_model("gpt2"), get_cluster("1xH100-80GB"), Training(seq_len=1024, global_batch=64)).to_dict()
    layouts = gc.choose_layouts(p)
    assert layouts[0] == p["best"]["layout"] and len(layouts) == 3
    assert len({json.dumps(lay, sort_keys=True) for lay in layouts}) == 3
    flags = gc.layout_flags(layouts[1])
    assert flags[flags.index("--zero") + 1] == str(layouts[1]["zero_stage"])


@pytest.mark.slow
@pytest.mark.multiproc
def test_dry_run_writes_the_contract(tmp_path):
    gc = _module()
    out = tmp_path / "gpu_check.json"
    assert gc.main(["--dry", "--out", str(out), "--work", str(tmp_path / "runs")]) == 0
    rows = json.loads(out.read_text())["rows"]
    assert len(rows) == 3 and all(set(r) >= {"model", "layout", "predicted", "measured"} for r in rows)
    for r in rows:
        assert r["model"] == "gpt2-tiny" and "error" not in r
        assert r["measured"]["steps"] == 3 and r["measured"]["step_s"] > 0 and r["measured"]["peak_bytes"] > 0
        assert r["predicted"]["step_s"] > 0 and r["predicted"]["compile"] is False   # CPU: eager
