"""Megatron sequence parallelism in the program (launch/train/seqpar.py; pipe.py for tp × pp, sp_gpt.py for tp with
pp 1): tp 2 × pp 2, tp 2 and dp 2 × tp 2 with SP train the tiny GPT-2 to the same losses as one process, with s/tp
tokens per rank between blocks; render runs it for the DeepSpeed engine with and without a pipeline.

Real DeepSpeed (PipelineModule, ZeRO engine) + Megatron-core layers under torchrun on CPU with gloo, fp32, as
test_train_parallel.
"""
import json

import pytest
from click.testing import CliRunner

from shardplan.cli import main
from shardplan.launch.train.config import RunConfigError, load_run_config
from train_helpers import SGD_CLIPPED, assert_same_losses, make_run_dir, summary, train_losses

STEPS = 3
SP = dict(tp=2, pp=2, micro=1, accum=4)   # global batch 4 × 32 tokens, as every layout of test_train_parallel


@pytest.mark.multiproc
@pytest.mark.slow   # three runs (1 + 4 + 4 processes): ~35 s on 2 cores
def test_tp2_pp2_with_sp_matches_one_process_and_tp2_pp2_without(tmp_path):
    single = train_losses(make_run_dir(tmp_path / "one", micro=4), 1, STEPS)
    plain_dir, sp_dir = make_run_dir(tmp_path / "tp2pp2", **SP), make_run_dir(tmp_path / "sp", **SP, sp=True)
    plain, with_sp = train_losses(plain_dir, 4, STEPS), train_losses(sp_dir, 4, STEPS)
    assert_same_losses(with_sp, single, "tp2-pp2-sp vs one process", STEPS)
    assert_same_losses(with_sp, plain, "tp2-pp2-sp vs tp2-pp2", STEPS)
    # Between blocks each rank holds its 32/2 tokens as [seq/tp, batch, hidden]; without SP all 32 as [b, s, h].
    assert [r["block_input_shape"] for r in summary(sp_dir)["ranks"]] == [[16, 1, 64]] * 4
    assert [r["block_input_shape"] for r in summary(plain_dir)["ranks"]] == [[1, 32, 64]] * 4


@pytest.mark.multiproc
@pytest.mark.slow   # three runs (1 + 2 + 4 processes): ~30 s on 2 cores
def test_tp2_and_dp2_tp2_with_sp_on_the_zero_engine_match_one_process(tmp_path):
    """pp 1: the ZeRO engine on Megatron layers instead of AutoTP; dp 2 × tp 2 under ZeRO-2 with 2 micro-batches,
    whose gradient hooks reduce and free p.grad inside backward (the SP sums must come before them)."""
    single = train_losses(make_run_dir(tmp_path / "one", micro=4), 1, STEPS)
    tp_dir = make_run_dir(tmp_path / "tp2", tp=2, micro=4, sp=True)
    dp_tp_dir = make_run_dir(tmp_path / "dp2tp2", dp=2, tp=2, micro=1, accum=2, zero=2, sp=True)
    assert_same_losses(train_losses(tp_dir, 2, STEPS), single, "tp2-sp vs one process", STEPS)
    assert_same_losses(train_losses(dp_tp_dir, 4, STEPS), single, "dp2-tp2-sp zero2 vs one process", STEPS)
    # Each rank's blocks see its 32/2 tokens as [seq/tp, batch, hidden], on the ZeRO engine (no pipeline).
    assert summary(tp_dir)["method"] == summary(dp_tp_dir)["method"] == "engine"
    assert [r["block_input_shape"] for r in summary(tp_dir)["ranks"]] == [[16, 4, 64]] * 2
    assert [r["block_input_shape"] for r in summary(dp_tp_dir)["ranks"]] == [[16, 1, 64]] * 4
    assert sorted((r["dp_rank"], r["tp_rank"]) for r in summary(dp_tp_dir)["ranks"]) == [(0, 0), (0, 1), (1, 0), (1, 1)]


@pytest.fixture(scope="module")
def sgd_clipped_single(tmp_path_factory):
    return train_losses(make_run_dir(tmp_path_factory.mktemp("one"), micro=4, ds_overrides=SGD_CLIPPED), 1, STEPS)


@pytest.mark.multiproc
@pytest.mark.parametrize("name, layout, nproc", [("tp2-pp2-sp", SP, 4), ("tp2-sp", dict(tp=2, micro=4), 2)])
def test_sp_norm_gradients_are_summed_over_tp_and_clipped_once(tmp_path, sgd_clipped_single, name, layout, nproc):
    """SGD with the clip always active: a LayerNorm gradient left at one rank's tokens (not summed over tp),
    or counted twice in the norm, changes the update and so the curve."""
    with_sp = train_losses(make_run_dir(tmp_path, **layout, sp=True, ds_overrides=SGD_CLIPPED), nproc, STEPS)
    assert_same_losses(with_sp, sgd_clipped_single, f"{name} sgd-clipped vs one process", STEPS)


def test_sp_needs_a_divisible_sequence_and_leaves_autotp_out(tmp_path):
    run = load_run_config(make_run_dir(tmp_path / "a", tp=2, sp=True, prepared_data=False), 2)
    assert "tensor_parallel" not in run.engine_config()   # Megatron layers (sp_gpt.py), not AutoTP
    assert run.method == "engine"
    with pytest.raises(RunConfigError, match=r"seq_len \(31\) must be a multiple of tp \(2\)"):
        load_run_config(make_run_dir(tmp_path / "b", **SP, seq_len=31, sp=True, prepared_data=False), 4)
    run = load_run_config(make_run_dir(tmp_path / "c", **SP, sp=True, prepared_data=False), 4)
    assert run.engine_config()["pipeline"]["pipe_partitioned"] is False   # tp ranks send different tokens


@pytest.mark.parametrize("pp, dp", [(2, 1), (1, 2)])
def test_render_for_the_program_runs_sp_with_and_without_a_pipeline(tmp_path, pp, dp):
    out = CliRunner().invoke(main, ["render", "--model", "gpt2-tiny", "--cluster", "4xCPU", "--tp", "2", "--sp",
                                    "--seq-len", "32", "--pp", str(pp), "--dp", str(dp), "--out", str(tmp_path / "run")])
    assert out.exit_code == 0, out.output
    plan = json.loads((tmp_path / "run" / "plan.json").read_text())
    assert plan["best"]["layout"]["sequence_parallel"] is True and plan["best"]["layout"]["pp"] == pp
    assert plan["launch"]["megatron_layers"] is True   # CUDA_DEVICE_MAX_CONNECTIONS=1 for Megatron-core's linears
    run = load_run_config(tmp_path / "run", 4)
    assert run.layout.sequence_parallel and "tensor_parallel" not in run.engine_config()
