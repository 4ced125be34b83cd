"""The planner's model of DeepSpeed-Ulysses (cp > 1 on the DeepSpeed engine, planner/ulysses.py): ZeRO over the
dp·cp ranks, layers on seq/cp tokens, attention over the whole sequence on heads/cp, synchronous all-to-alls."""
import pytest

from shardplan.planner.activations import layer_saved_bytes
from shardplan.planner.cluster import CATALOG, Cluster
from shardplan.planner.estimate import Training
from shardplan.planner.evaluate import evaluate
from shardplan.planner.layout import Layout
from shardplan.planner.memory import memory_phases
from shardplan.planner.model import ModelSpec
from shardplan.planner import ulysses
from shardplan.planner.gpu_time import microbatch_gpu_s

LLAMA2_7B = ModelSpec("llama-2-7b", "llama", 32, 4096, 32, 32, 11008, 32000, 4096, False)
H100 = CATALOG["H100-80GB"]
SEQ = 32768


def _estimate(cluster, dp, cp, zero=3, ckpt="full", micro=1, accum=1, model=LLAMA2_7B, seq=SEQ):
    layout = Layout(dp=dp, tp=1, pp=1, zero_stage=zero, micro_batch=micro, grad_accum=accum, checkpointing=ckpt,
                    cp=cp)
    return evaluate(model, cluster, layout, Training(seq_len=seq, global_batch=0))


@pytest.mark.parametrize("zero", [1, 2, 3])
def test_cp2_halves_the_sharded_model_states_at_the_same_dp(zero):
    """engine.py hands ZeRO the sequence-data-parallel group: dp 4 x cp 2 shards over 8 ranks, like dp 8."""
    one, two = _estimate(Cluster(1, 4, H100), 4, 1, zero), _estimate(Cluster(1, 8, H100), 4, 2, zero)
    dp8 = _estimate(Cluster(1, 8, H100), 8, 1, zero)
    # (ZeRO-3 keeps the small vectors whole: 0.02% of this model)
    assert two.memory.optimizer_bytes == pytest.approx(one.memory.optimizer_bytes / 2, rel=1e-3)
    assert two.memory.optimizer_bytes == dp8.memory.optimizer_bytes
    if zero == 3:   # the weights' and gradients' partitions too (params_bytes adds the gathered modules)
        assert two.memory.grads_bytes == pytest.approx(one.memory.grads_bytes / 2, rel=1e-3)
        assert two.memory.params_bytes < one.memory.params_bytes
        assert two.memory.params_bytes == dp8.memory.params_bytes


def test_dp1_cp2_still_reduces_gradients_over_the_cp_ranks():
    est = _estimate(Cluster(1, 2, H100), 1, 2, zero=0)
    single = _estimate(Cluster(1, 1, H100), 1, 1, zero=0)
    grads = 2 * LLAMA2_7B.params                      # bf16 gradients, one all-reduce: 2·(n-1)/n·S = S at n = 2
    assert single.time.comm_bytes == 0 and single.time.dp_comm_s == 0
    assert est.time.dp_comm_s > 0
    assert est.time.comm_bytes > grads * 0.99


def test_the_all_to_all_shows_in_the_bytes_and_costs_more_across_nodes():
    """4 exchanges forward, 4 backward, 4 in the recomputed forward: (cp-1)/cp of q, k, v and the output."""
    tokens = SEQ // 8
    per_layer = 4 * tokens * 4096 * 2 * 7 / 8
    inside, across = _estimate(Cluster(1, 8, H100), 1, 8, zero=0), _estimate(Cluster(2, 4, H100), 1, 8, zero=0)
    dp_bytes = 2 * 7 / 8 * 2 * LLAMA2_7B.params
    assert inside.time.comm_bytes == pytest.approx(dp_bytes + 3 * 32 * per_layer, rel=1e-3)
    assert inside.time.tp_comm_s > 0     # where the exchanges are reported
    assert across.time.tp_comm_s > 3 * inside.time.tp_comm_s
    # selective checkpointing recomputes only the SDPA call, after the exchange: no third round
    selective = _estimate(Cluster(1, 8, H100), 1, 8, zero=0, ckpt="selective")
    assert selective.time.comm_bytes == pytest.approx(dp_bytes + 2 * 32 * per_layer, rel=1e-3)


def test_attention_runs_over_the_whole_sequence_on_heads_over_cp():
    """Per rank: the matmuls halve with cp 2, causal attention over the whole sequence on half the heads halves
    too (b·s²·q/cp), where a model of seq/cp tokens would quarter it."""
    one, two = _estimate(Cluster(1, 1, H100), 1, 1, zero=0), _estimate(Cluster(1, 2, H100), 1, 2, zero=0)
    assert 0.45 * one.time.compute_s < two.time.compute_s < 0.55 * one.time.compute_s
    naive = microbatch_gpu_s(H100, LLAMA2_7B, 32, 1, SEQ // 2, 1, "bf16", "deepspeed", True,
                                              "full")
    assert two.time.compute_s > 1.2 * naive


def test_activations_shrink_with_cp_but_attention_is_not_halved():
    """cp 2 holds seq/2 tokens per layer, and SDPA's saved output sits beside the exchanged one (the out-projection's
    input): the saved layer is more than half of cp 1's; the working set keeps the whole sequence's dq, dk, dv."""
    one, two = _estimate(Cluster(1, 1, H100), 1, 1, ckpt="none"), _estimate(Cluster(1, 2, H100), 1, 2, ckpt="none")
    assert two.memory.activations_bytes < one.memory.activations_bytes
    half = layer_saved_bytes(LLAMA2_7B, SEQ // 2, 1, 2)
    whole = layer_saved_bytes(LLAMA2_7B, SEQ, 1, 2)
    extra = SEQ // 2 * 4096 * 2
    assert two.memory.activations_bytes > 32 * (half + extra) > whole * 32 / 2
    assert ulysses.attention_backward_working_bytes(LLAMA2_7B, SEQ // 2, 1, 2) == SEQ // 2 * 6 * 4096 * 2


def test_cp_1_is_the_plain_model():
    """No Ulysses term at cp 1: the same estimate as before any of it (checked against benchmarks too)."""
    cluster = Cluster(1, 8, H100)
    est = _estimate(cluster, 8, 1, zero=2, ckpt="none")
    phases = dict(memory_phases(LLAMA2_7B, cluster, est.layout, est.training))
    assert est.memory.peak_bytes == max(sum(v) for v in phases.values())
    assert ulysses.comm_s(cluster, LLAMA2_7B, est.layout, SEQ, 2, "full") == (0.0, 0.0)


@pytest.mark.multiproc
@pytest.mark.parametrize("zero", [1, 3])
def test_real_deepspeed_partitions_over_the_dp_cp_ranks(zero, tmp_path):
    """DeepSpeed 0.19.8 on CPU (2 processes, gloo, ~7 s each), given the program's Ulysses mpu with cp 2 and dp 1:
    ZeRO's group has 2 ranks, and each holds the half of the fp32 master (and at ZeRO-3 of the weights) that the
    planner's model states count at the planner's sharding degree."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    from shardplan.planner.ds_knobs import ZeroKnobs
    from shardplan.planner.model_states import deepspeed_states
    from shardplan.planner.stage import StageShape
    from train_helpers import free_port

    port = str(free_port())
    env = dict(os.environ, DS_ACCELERATOR="cpu", OMP_NUM_THREADS="1", MASTER_ADDR="127.0.0.1", MASTER_PORT=port)
    worker = Path(__file__).with_name("ulysses_partition_worker.py")
    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port",
                          port, str(worker), str(tmp_path), str(zero)], env=env, capture_output=True, text=True,
                         timeout=120)
    assert run.returncode == 0, run.stderr[-4000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    group = Layout(dp=1, tp=1, pp=1, zero_stage=zero, micro_batch=1, grad_accum=1, cp=2).dp_cp
    knobs = ZeroKnobs(reduce_bucket=0, allgather_bucket=0, overlap_comm=False, prefetch_bucket=0,
                      persistence_threshold=0, sub_group=10**12, max_live=0, max_reuse_distance=0)
    total = ranks[0]["total"]                     # 64·256 + 256 + 256·64 + 64
    shape = StageShape(params=total, layers=0, has_embedding=False, has_head=False, largest_module=64 * 256 + 256)
    planned = deepspeed_states(LLAMA2_7B, shape, group, zero, "none", "fp32", 1, knobs)
    for r in ranks:
        assert r["seq_dp_world_size"] == group == 2
        assert r["master_partition"] == planned.optimizer // 12 == total // 2
        if zero == 3:
            assert r["params_held"] == planned.params // 4 == total // 2     # the resident shard (fp32)
