"""DeepSpeed-Ulysses in the program (launch/train/ulysses.py): cp ranks each hold seq/cp tokens of every sequence,
DeepSpeed's DistributedAttention all-to-alls q, k, v over them, and the run trains the tiny GPT-2 to the same
losses as one process; render writes sequence_parallel_size for it and refuses what the program does not run.

Real DeepSpeed 0.19.8 (DistributedAttention, its Ulysses mpu parallel_state_sp) under torchrun on CPU with gloo,
whose all_to_all_single carries the exchange; fp32, as test_train_parallel.
"""
import json

import pytest
from click.testing import CliRunner

from shardplan.cli import main
from shardplan.launch.train.config import RunConfigError, load_run_config
from train_helpers import SGD_CLIPPED, assert_same_losses, make_run_dir, summary, train_losses

STEPS = 3


@pytest.mark.multiproc
def test_cp2_matches_one_process_with_the_clip_active(tmp_path):
    """SGD with the clip always on: a loss share not divided by cp, a gradient not summed over the cp ranks or a
    norm counted on both of them changes the update, and so the curve."""
    single = train_losses(make_run_dir(tmp_path / "one", micro=4, ds_overrides=SGD_CLIPPED), 1, STEPS)
    cp_dir = make_run_dir(tmp_path / "cp2", cp=2, micro=4, ds_overrides=SGD_CLIPPED)
    assert_same_losses(train_losses(cp_dir, 2, STEPS), single, "cp2 sgd-clipped vs one process", STEPS)
    assert [(r["dp_rank"], r["cp_rank"]) for r in summary(cp_dir)["ranks"]] == [(0, 0), (0, 1)]


@pytest.mark.multiproc
@pytest.mark.slow   # 1 + 4 + 2 processes: ~30 s on 2 cores
def test_dp2_cp2_zero2_and_cp2_zero3_match_one_process(tmp_path):
    single = train_losses(make_run_dir(tmp_path / "one", micro=4), 1, STEPS)
    dp_cp = make_run_dir(tmp_path / "dp2cp2", dp=2, cp=2, micro=2, zero=2)
    assert_same_losses(train_losses(dp_cp, 4, STEPS), single, "dp2-cp2 zero2 vs one process", STEPS)
    # Ranks dp_rank·cp + cp_rank (DeepSpeed's parallel_state_sp): consecutive ranks share a sequence.
    assert [(r["dp_rank"], r["cp_rank"]) for r in summary(dp_cp)["ranks"]] == [(0, 0), (0, 1), (1, 0), (1, 1)]
    z3 = make_run_dir(tmp_path / "cp2z3", cp=2, micro=2, accum=2, zero=3, checkpointing="selective")
    assert_same_losses(train_losses(z3, 2, STEPS), single, "cp2 zero3 accum2 selective vs one process", STEPS)
    # ZeRO-3 partitions over the sequence-data-parallel group (dp·cp ranks), not over dp alone.
    held = [r["params_held"] for r in summary(z3)["ranks"]]
    assert held[0] == held[1] and abs(2 * held[0] - summary(tmp_path / "one")["ranks"][0]["params_held"]) <= 2


def test_run_config_checks_what_the_program_runs(tmp_path):
    with pytest.raises(RunConfigError, match=r"cp \(2\) with tp \(2\).*plan --tp 1 --pp 1"):
        load_run_config(make_run_dir(tmp_path / "a", tp=2, cp=2, prepared_data=False), 4)
    with pytest.raises(RunConfigError, match=r"sequence_parallel_size \(1\) disagrees with plan.json \(2\)"):
        load_run_config(make_run_dir(tmp_path / "b", cp=2, ds_overrides={"sequence_parallel_size": 1},
                                     prepared_data=False), 2)
    with pytest.raises(RunConfigError, match=r"cp \(8\) must divide n_heads \(4\)"):
        load_run_config(make_run_dir(tmp_path / "c", cp=8, prepared_data=False), 8)
    with pytest.raises(RunConfigError, match=r"needs dp\*tp\*pp\*cp = 2\*1\*1\*2 = 4"):
        load_run_config(make_run_dir(tmp_path / "d", dp=2, cp=2, prepared_data=False), 2)
    run = load_run_config(make_run_dir(tmp_path / "e", dp=2, cp=2, prepared_data=False), 4)
    assert run.layout_dict()["cp"] == 2   # a checkpoint records it: resuming with another cp is refused


def test_render_writes_sequence_parallel_size_and_refuses_cp_with_tp(tmp_path):
    base = ["render", "--model", "gpt2-tiny", "--cluster", "4xCPU", "--seq-len", "32", "--cp", "2"]
    out = CliRunner().invoke(main, [*base, "--dp", "2", "--out", str(tmp_path / "run")])
    assert out.exit_code == 0, out.output
    ds = json.loads((tmp_path / "run" / "ds_config.json").read_text())
    assert ds["sequence_parallel_size"] == 2
    # DeepSpeed counts dp = world / sequence_parallel_size: 4 ranks, cp 2 -> the batch is micro × accum × 2.
    assert ds["train_batch_size"] == ds["train_micro_batch_size_per_gpu"] * ds["gradient_accumulation_steps"] * 2
    assert load_run_config(tmp_path / "run", 4).layout.cp == 2
    out = CliRunner().invoke(main, ["validate", str(tmp_path / "run")])
    assert out.exit_code == 0, out.output
    out = CliRunner().invoke(main, [*base, "--tp", "2", "--out", str(tmp_path / "tp")])
    assert out.exit_code == 2, out.output
    assert "does not run context parallelism (cp 2, DeepSpeed-Ulysses) with tensor parallelism (tp 2)" in out.output
    assert not (tmp_path / "tp").exists()
    assert sorted(p.name for p in (tmp_path / "run" / "hf").iterdir()) == ["README.md"]   # no Trainer files for cp
    assert "DeepSpeed-Ulysses context parallelism (cp 2)" in (tmp_path / "run" / "hf" / "README.md").read_text()
