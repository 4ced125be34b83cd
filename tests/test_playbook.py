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
