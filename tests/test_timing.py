"""Step-time model: properties that must hold (no wall-clock assertions; accuracy is in test_memory.py's
calibration test and benchmarks/accuracy.py)."""
import pytest

from shardplan.planner.cluster import CATALOG, Cluster
from shardplan.planner.comm import step_comm
from shardplan.planner.estimate import Training
from shardplan.planner.gpu_time import gemm_s
from shardplan.planner.layout import Layout
from shardplan.planner.model import ModelSpec
from shardplan.planner.timing import estimate_time

GPT2_XL = ModelSpec("gpt2-xl", "gpt2", 48, 1600, 25, 25, 6400, 50257, 1024, True)
LLAMA_8B = ModelSpec("llama-3.1-8b", "llama", 32, 4096, 32, 8, 14336, 128256, 8192, False)
H100 = CATALOG["H100-80GB"]
NODE = Cluster(1, 8, H100)
TWO_NODES = Cluster(2, 8, H100)
T = Training(seq_len=1024)


def step(model=GPT2_XL, cluster=NODE, training=T, **layout):
    return estimate_time(model, cluster, Layout(**layout), training)


def test_step_time_grows_with_grad_accum():
    times = [step(dp=8, zero_stage=1, micro_batch=4, grad_accum=m).step_s for m in (1, 2, 4, 8)]
    assert times == sorted(times) and times[-1] > 4 * times[0]


def test_bubble_is_zero_without_pipeline_and_shrinks_with_micro_batches():
    assert step(dp=8, micro_batch=2).bubble_s == 0.0
    t = Training(seq_len=4096)
    bubbles = [step(LLAMA_8B, NODE, t, dp=2, pp=4, zero_stage=1, grad_accum=m) for m in (4, 16)]
    assert all(b.bubble_s > 0 for b in bubbles)
    # (p-1)/m of the ideal time: the bubble's share falls as micro-batches grow
    shares = [b.bubble_s / b.compute_s for b in bubbles]
    assert shares[1] < shares[0] and shares[0] == pytest.approx(3 / 4, rel=0.05)


def test_data_parallel_volume_follows_nccl_conventions():
    p = GPT2_XL.params
    z0 = step(dp=8, zero_stage=0, micro_batch=1).comm_bytes
    assert z0 == pytest.approx(2 * 7 / 8 * 2 * p, rel=1e-6)               # all-reduce 2(n-1)/n·S of bf16 grads
    z2 = step(dp=8, zero_stage=2, micro_batch=1).comm_bytes
    z3 = step(dp=8, zero_stage=3, micro_batch=1).comm_bytes
    assert z2 == pytest.approx(z0, rel=1e-6) and z3 == pytest.approx(1.5 * z2, rel=1e-6)   # ZeRO paper §7
    assert step(dp=1, micro_batch=1).comm_bytes == 0


def test_tensor_parallel_all_reduces_and_node_boundaries():
    t = step(dp=4, tp=2, micro_batch=2)
    assert t.tp_comm_s > 0 and step(dp=8, micro_batch=2).tp_comm_s == 0
    expected = 4 * 48 * 2 * (1 / 2) * (2 * 1024 * 1600 * 2)    # 4 per layer, 2(t-1)/t·b·s·h bf16
    comm = step_comm(GPT2_XL, NODE, Layout(dp=4, tp=2, micro_batch=2), GPT2_XL.params, 1024, 2, 10**8)
    assert comm.tp_bytes == pytest.approx(expected, rel=1e-6)
    # a data-parallel group across two nodes: NCCL's rings cross the network once per node boundary and use
    # one NIC per channel, so 8 ranks per node share 8 NICs (k x the per-GPU network, up to NVLink) ...
    from shardplan.planner.comm import group_bandwidth
    per_gpu = TWO_NODES.inter_node_gbps * 1e9
    assert group_bandwidth(TWO_NODES, 16, 1)[0] == min(TWO_NODES.gpu.nvlink_gbps * 1e9, 8 * per_gpu)
    # ... while a group with one rank per node (dp over tp=8 nodes) has one NIC: the per-GPU network
    assert group_bandwidth(TWO_NODES, 2, 8)[0] == per_gpu
    across = step(cluster=TWO_NODES, dp=16, zero_stage=0, micro_batch=1).dp_comm_s
    inside = step(cluster=NODE, dp=8, zero_stage=0, micro_batch=1).dp_comm_s
    assert across > inside > 0


def test_small_matmuls_run_far_below_the_ceiling():
    big = 2 * 8192**3 / gemm_s(H100, 8192, 8192, 8192)
    assert big == pytest.approx(H100.bf16_tflops * 1e12 * H100.matmul_efficiency, rel=0.01)
    small = 2 * 1024 * 768 * 768 / gemm_s(H100, 1024, 768, 768)
    assert small < 0.3 * big


def test_recompute_and_offload_cost_time():
    base = step(dp=8, zero_stage=2, micro_batch=4)
    assert step(dp=8, zero_stage=2, micro_batch=4, checkpointing="full").compute_s > 1.2 * base.compute_s
    assert step(dp=8, zero_stage=2, micro_batch=4, offload="optimizer").offload_s > 0 == base.offload_s


def test_zero3_on_one_gpu_is_slower_than_zero2():
    """Calibration (H200): ZeRO-3's per-module gather/release hooks cost ~40 ms per step for GPT-2 124M."""
    small = ModelSpec("gpt2", "gpt2", 12, 768, 12, 12, 3072, 50304, 1024, True)
    h200 = Cluster(1, 1, CATALOG["H200"])
    assert step(small, h200, dp=1, zero_stage=3).step_s > 1.3 * step(small, h200, dp=1, zero_stage=2).step_s


def test_zero3_hooks_repeat_every_micro_batch():
    """stage3's fetch/release and gradient hooks fire in each micro-batch's forward and backward: on one host-bound
    GPU, three more micro-batches cost at least three more rounds of per-tensor hook work."""
    from shardplan.planner.timing import DS_OPS_PER_TENSOR, TENSOR_OP_S, n_param_tensors
    small = ModelSpec("gpt2", "gpt2", 12, 768, 12, 12, 3072, 50304, 1024, True)
    h200 = Cluster(1, 1, CATALOG["H200"])
    one, four = (step(small, h200, dp=1, zero_stage=3, grad_accum=m).step_s for m in (1, 4))
    hooks = n_param_tensors(small, 12, True, True) * DS_OPS_PER_TENSOR[3] * TENSOR_OP_S
    assert four - one > 3 * hooks


def test_zero3_optimizer_runs_after_the_overflow_sync():
    """stage3.step() begins with has_overflow's .item(): the optimizer's HBM traffic cannot hide behind the
    forward/backward host work, so a cheaper optimizer (fused AdamW, 28 instead of 84 B/param) saves all of it."""
    from shardplan.planner.timing import ADAMW_FOREACH_BYTES, ADAMW_FUSED_BYTES
    small = ModelSpec("gpt2", "gpt2", 12, 768, 12, 12, 3072, 50304, 1024, True)
    h200 = Cluster(1, 1, CATALOG["H200"])
    foreach, fused = (step(small, h200, Training(seq_len=1024, fused_step=f), dp=1, zero_stage=3).step_s
                      for f in (False, True))
    bw = h200.gpu.hbm_gbps * 1e9 * h200.gpu.hbm_efficiency
    assert foreach - fused == pytest.approx(small.params * (ADAMW_FOREACH_BYTES - ADAMW_FUSED_BYTES) / bw, rel=1e-6)


def test_zero2_step_counts_deepspeed_gradient_path_bytes():
    """stage_1_and_2.py at dp=1 still copies every grad into the IPG bucket, divides it, copies it into the
    partition, checks overflow, takes a float64 norm, flattens, upcasts, clips, steps and downcasts."""
    from shardplan.planner.gpu_time import HBM_EFFICIENCY
    h200 = Cluster(1, 1, CATALOG["H200"])
    t = step(GPT2_XL, h200, dp=1, zero_stage=2, micro_batch=16)
    bw = CATALOG["H200"].hbm_gbps * 1e9 * HBM_EFFICIENCY
    per_param = 8 + 4 + 4 + 18 + 24 + 84        # bucket copy+div, partition copy, overflow, fp64 norm, flat, AdamW
    assert t.optimizer_s >= GPT2_XL.params * per_param / bw
    # two micro-batches run the per-micro-batch bucket copies twice: the step grows by more than the compute
    t2 = step(GPT2_XL, h200, dp=1, zero_stage=2, micro_batch=16, grad_accum=2)
    assert t2.optimizer_s - t.optimizer_s >= GPT2_XL.params * 12 / bw * 0.99


def test_zero12_host_work_grows_with_parameter_tensors():
    """Same parameter count, more (smaller) tensors: DeepSpeed's per-tensor loops cost more host time."""
    h200 = Cluster(1, 1, CATALOG["H200"])
    wide = ModelSpec("wide", "gpt2", 12, 2048, 16, 16, 8192, 50304, 1024, True)
    deep = ModelSpec("deep", "gpt2", 48, 1024, 16, 16, 4096, 50304, 1024, True)
    assert abs(wide.params / deep.params - 1) < 0.1
    for z in (1, 2):
        w = step(wide, h200, dp=1, zero_stage=z, micro_batch=1)
        d = step(deep, h200, dp=1, zero_stage=z, micro_batch=1)
        assert d.overhead_s + d.optimizer_s > w.overhead_s + w.optimizer_s


def test_partial_output_tiles_cost_a_whole_tile():
    """N=1600 needs 7 tiles of 256 columns, like N=1792; N=1536 needs 6 (hidden 1600 runs below 1536's rate)."""
    m, k = 16384, 6400
    assert gemm_s(H100, m, 1600, k) == pytest.approx(gemm_s(H100, m, 1792, k), rel=1e-9)
    rate = lambda n: 2 * m * n * k / gemm_s(H100, m, n, k)   # noqa: E731
    assert rate(1600) < 0.93 * rate(1536)
