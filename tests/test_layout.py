import pytest

from shardplan.planner.layout import Layout, ZeroStage


def test_derived_sizes():
    layout = Layout(dp=4, tp=2, pp=2, zero_stage=1, micro_batch=2, grad_accum=8)
    assert layout.world_size == 16
    assert layout.global_batch == 2 * 8 * 4
    assert layout.zero_stage is ZeroStage.OPTIMIZER
    assert Layout.from_dict(layout.to_dict()) == layout


@pytest.mark.parametrize("kwargs, fragment", [
    (dict(dp=0), "dp(0) must be a positive integer"),
    (dict(dp=1, zero_stage=4), "zero_stage(4) must be 0, 1, 2 or 3"),
    (dict(dp=2, pp=2, zero_stage=2), "use --zero 1 or --pp 1"),
    (dict(dp=2, zero_stage=2, offload="optimizer+params"), "needs zero_stage 3"),
    (dict(dp=2, checkpointing="some"), "checkpointing('some') must be one of none, full, selective"),
])
def test_impossible_layouts_name_the_value_and_the_fix(kwargs, fragment):
    with pytest.raises(ValueError) as err:
        Layout(**kwargs)
    assert fragment in str(err.value)


def test_unknown_keys_are_named():
    with pytest.raises(ValueError, match="unknown layout keys"):
        Layout.from_dict({"dp": 1, "zero": 2})
