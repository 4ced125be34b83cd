"""Megatron-FSDP as the Megatron engine's ZeRO-2/3 (planner/megatron/fsdp.py): what it allocates, what its
gathers and reduce-scatters cost, when the search takes it, and rendered arguments that Megatron-LM's own
parse_args + validate_args accept (and refuse when its rules are broken)."""
import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from shardplan.cli import main
from shardplan.planner import Layout, Training, evaluate, get_cluster, get_model, plan
from shardplan.planner.megatron.fsdp import PREFETCH
from shardplan.planner.megatron.memory import megatron_memory

MEGATRON_LM = Path(__file__).resolve().parents[2] / "shared" / "reference" / "megatron-lm-core_v0.16.1"
MG = Training(seq_len=8192, global_batch=64, engine="megatron")


def test_model_states_are_what_megatron_fsdp_allocates():
    """Stage 3: 18 B/param over dp·cp plus the gathered layers in flight and the whole embedding/output layer;
    stage 2 keeps the bf16 weights whole (2 + 16/(dp·cp) B/param)."""
    model, cluster = get_model("llama-3-8b"), get_cluster("2x8xH100-80GB")
    n = 16
    z1, z2, z3 = (megatron_memory(model, cluster, Layout(dp=n, zero_stage=z, grad_accum=4, checkpointing="full"), MG)
                  for z in (1, 2, 3))
    p = z1.params_bytes // 2                                         # the whole model on one rank (tp 1, pp 1)
    assert z2.params_bytes == z1.params_bytes
    assert z2.optimizer_bytes == z3.optimizer_bytes == z1.optimizer_bytes == 12 * p // n
    layer = model.params_per_layer
    rest = p - model.n_layers * layer                                # embedding, final norm, output layer
    in_flight = 1 + -(-PREFETCH // layer)                            # the layer in use + 500M elements prefetched
    assert z3.params_bytes == pytest.approx(2 * (p / n + rest + in_flight * layer), rel=1e-3)
    sharded_states = 2 * p / n + 4 * p / n + z3.optimizer_bytes
    assert sharded_states == pytest.approx(18 * p / n, rel=1e-3)
    # fp32 gradient buckets wait in the reduce-scatter queue (up to 1e9 elements) while full recompute frees
    # little: between the sharded grads and the whole fp32 gradient
    assert 4 * p / n < z3.grads_bytes < 4 * p / n + 4 * (1e9 + 3 * layer)
    assert z3.peak_bytes < z2.peak_bytes < z1.peak_bytes


def test_engine_rules_for_megatron_fsdp():
    model, cluster = get_model("llama-3-8b"), get_cluster("2x8xH100-80GB")
    assert evaluate(model, cluster, Layout(dp=16, zero_stage=2, grad_accum=4), MG).fits in (True, False)
    with pytest.raises(ValueError, match=r"offload\('optimizer\+params'\) is modelled for DeepSpeed only"):
        evaluate(model, cluster, Layout(dp=16, zero_stage=3, grad_accum=4, offload="optimizer+params"), MG)
    with pytest.raises(ValueError, match=r"zero_stage\(3\) with pp\(2\)"):
        Layout(dp=8, pp=2, zero_stage=3)


def test_stage_3_exposes_its_gathers_when_the_compute_is_short():
    """Every micro-batch gathers each layer twice and reduce-scatters its gradients across the nodes: at 512
    tokens a micro-batch the layers' compute cannot hide them, at 8192 it does."""
    model, cluster = get_model("llama-3-8b"), get_cluster("4x8xH100-80GB")

    def run(seq, zero):
        return evaluate(model, cluster, Layout(dp=32, zero_stage=zero, grad_accum=4, checkpointing="full"),
                        Training(seq_len=seq, global_batch=128, engine="megatron"))
    short, long = run(512, 3), run(8192, 3)
    assert short.time.dp_comm_s > 0.5 * short.time.compute_s
    assert short.time.dp_comm_s > 3 * run(512, 1).time.dp_comm_s
    assert long.time.dp_comm_s < 0.02 * long.time.compute_s
    # bytes: per micro-batch two bf16 gathers of the layers and one fp32 reduce-scatter of everything; the
    # embedding and output layer gathered once per step
    p = megatron_memory(model, cluster, Layout(dp=32, zero_stage=1), MG).params_bytes // 2
    layers = model.n_layers * model.params_per_layer
    step = 4 * ((2 + 2) * layers + 4 * p) + 2 * (p - layers)
    assert long.time.comm_bytes == pytest.approx(step * 31 / 32, rel=1e-3)


def test_the_search_takes_fsdp_only_where_memory_asks_for_it():
    training = Training(seq_len=4096, engine="megatron")
    roomy = plan(get_model("llama-3-8b"), get_cluster("2x8xH100-80GB"), training)
    assert all(int(e.layout.zero_stage) <= 1 for e in [roomy.best, *roomy.candidates])
    tight = plan(get_model("llama-3-8b"), get_cluster("1x8xA100-40GB"), training)
    assert int(tight.best.layout.zero_stage) == 3 and tight.best.fits and tight.best.layout.pp == 1
    line = next(r for r in tight.reasons if r.startswith("ZeRO-3 over"))
    assert "ZeRO-1 needs" in line and "Megatron-FSDP optim_grads_params" in line


@pytest.fixture(scope="module")
def fsdp_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("fsdp") / "run"
    out = CliRunner().invoke(main, ["render", "--engine", "megatron", "--model", "llama-3-8b", "--cluster",
                                    "2x8xH100-80GB", "--tp", "2", "--sp", "--zero", "2", "--global-batch", "64",
                                    "--out", str(run)])
    assert out.exit_code == 0, out.output
    return run


def test_render_writes_megatron_fsdp_arguments(fsdp_run):
    text = (fsdp_run / "megatron_args.sh").read_text()
    for flag in ("--use-megatron-fsdp --data-parallel-sharding-strategy optim_grads --use-distributed-optimizer "
                 "--no-gradient-accumulation-fusion --ckpt-format fsdp_dtensor",
                 "--overlap-grad-reduce --overlap-param-gather", "unset CUDA_DEVICE_MAX_CONNECTIONS"):
        assert flag in text, flag
    assert "CUDA_DEVICE_MAX_CONNECTIONS=1" not in text


@pytest.mark.skipif(not MEGATRON_LM.is_dir(), reason="shared/reference/megatron-lm-core_v0.16.1 not beside the checkout")
def test_megatron_lm_refuses_fsdp_with_one_hardware_queue(fsdp_run, tmp_path):
    """Megatron-LM's validate_args: Megatron-FSDP needs CUDA_DEVICE_MAX_CONNECTIONS other than 1 (which tensor
    parallelism otherwise demands): the rendered script passes, the same with the variable exported does not."""
    ok = CliRunner().invoke(main, ["validate", str(fsdp_run), "--megatron-lm", str(MEGATRON_LM), "--json"])
    assert ok.exit_code == 0, ok.output
    assert json.loads(ok.stdout)[0]["megatron"]["facts"]["data_parallel_size"] == 8
    broken = tmp_path / "broken"
    broken.mkdir()
    for f in fsdp_run.iterdir():
        if f.is_file():
            (broken / f.name).write_text(f.read_text())
    args = broken / "megatron_args.sh"
    args.write_text(args.read_text().replace("unset CUDA_DEVICE_MAX_CONNECTIONS", "export CUDA_DEVICE_MAX_CONNECTIONS=1"))
    out = CliRunner().invoke(main, ["validate", str(broken), "--megatron-lm", str(MEGATRON_LM), "--json"])
    assert out.exit_code == 1, out.output
    assert "FSDP always requires CUDA_DEVICE_MAX_CONNECTIONS" in json.loads(out.stdout)[0]["megatron"]["message"]
