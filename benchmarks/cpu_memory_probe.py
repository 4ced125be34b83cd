"""Measure what DeepSpeed really allocates with several data-parallel ranks, on CPU (gloo), tensor by tensor.

No GPU is needed: every tensor allocation and free of the real engine (DeepSpeed 0.19 with
DS_ACCELERATOR=cpu, shardplan's own GPT-2 from launch/train/model.py) is recorded by torch's profiler
(profile_memory=True) in each rank, and the running sum gives the exact allocated-bytes timeline — the CPU
analogue of torch.cuda.max_memory_allocated(). It checks the planner's multi-rank ZeRO logic (partitions,
buckets, gathers) that the single-GPU calibration cannot. Rows go to benchmarks/results/measured/ in the
calibration's format (memory only: CPU step times say nothing about GPUs); benchmarks/accuracy.py reads them.

    python benchmarks/cpu_memory_probe.py           # dp=2, ZeRO 0-3, micro-batch 1/4, checkpointing none/full
    python benchmarks/cpu_memory_probe.py --zero 2 --dp 2 --micro-batch 4 --checkpointing none
    python benchmarks/cpu_memory_probe.py --dp 1 --tp 2 --zero 0 1 --micro-batch 4 --checkpointing none \
        --out benchmarks/results/measured/cpu_deepspeed_tp.jsonl
    python benchmarks/cpu_memory_probe.py --dp 1 --pp 2 --grad-accum 4 --zero 0 1 --micro-batch 1 4 \
        --checkpointing none --out benchmarks/results/measured/cpu_deepspeed_pp.jsonl
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "results" / "measured" / "cpu_deepspeed_dp.jsonl"
SHAPE = dict(n_layers=4, hidden=128, n_heads=4, ffn_hidden=512, vocab=2048, max_seq_len=128)   # gpt2-demo


def ds_config(zero: int, micro_batch: int, dp: int, tp: int = 1, grad_accum: int = 1) -> dict:
    from shardplan.planner.ds_knobs import zero_knobs
    k = zero_knobs(SHAPE["hidden"], zero, "shardplan", on_gpu=False)
    zc = {"stage": zero, "overlap_comm": k.overlap_comm, "reduce_bucket_size": k.reduce_bucket,
          "allgather_bucket_size": k.allgather_bucket, "contiguous_gradients": True}
    if zero == 3:
        zc.update(stage3_prefetch_bucket_size=k.prefetch_bucket,
                  stage3_param_persistence_threshold=k.persistence_threshold)
    cfg = {"train_micro_batch_size_per_gpu": micro_batch, "gradient_accumulation_steps": grad_accum,
           "train_batch_size": micro_batch * grad_accum * dp, "bf16": {"enabled": True}, "zero_optimization": zc,
           "optimizer": {"type": "AdamW", "params": {"lr": 1e-4, "weight_decay": 0.1, "torch_adam": True}},
           "steps_per_print": 10**9, "wall_clock_breakdown": False}
    if tp > 1:   # what the training program sends AutoTP (launch/train/config.py)
        from shardplan.launch.train.model import autotp_partition_config
        cfg["tensor_parallel"] = {"autotp_size": tp, "partition_config": autotp_partition_config()}
    return cfg


def build_pipeline_engine(pp: int, dp: int, zero: int, micro_batch: int, grad_accum: int, ckpt: str):
    """The training program's PipelineModule (launch/train/pipe.py: tied wte on the first and last stage)."""
    import deepspeed
    from shardplan.launch.train.config import RunConfig
    from shardplan.launch.train.model import GPTConfig
    from shardplan.launch.train.pipe import build_pipeline
    from shardplan.planner.layout import Layout
    cfg = ds_config(zero, micro_batch, dp, 1, grad_accum)
    layout = Layout(dp=dp, pp=pp, zero_stage=zero, micro_batch=micro_batch, grad_accum=grad_accum, checkpointing=ckpt)
    run = RunConfig(run_dir=ROOT, model=GPTConfig(**SHAPE, checkpointing=ckpt), model_dict={}, layout=layout,
                    seq_len=SHAPE["max_seq_len"], precision="bf16", ds_config=cfg)
    module = build_pipeline(run, 0, None)
    engine, *_ = deepspeed.initialize(model=module, model_parameters=module.parameters(), config=run.engine_config())
    return engine


def rank_main(rank: int, world: int, port: int, zero: int, micro_batch: int, ckpt: str, queue, tp: int = 1,
              pp: int = 1, grad_accum: int = 1) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank), DS_ACCELERATOR="cpu")
    import torch
    from torch.profiler import ProfilerActivity, profile, record_function
    import deepspeed
    from shardplan.launch.train.model import GPT, GPTConfig
    torch.set_num_threads(1)
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        deepspeed.init_distributed(dist_backend="gloo")
        model = GPT(GPTConfig(**SHAPE, checkpointing=ckpt))
        n_params = sum(p.numel() for p in model.parameters())   # before ZeRO-3 empties the module's params
        if pp > 1:
            del model
            engine = build_pipeline_engine(pp, world // pp, zero, micro_batch, grad_accum, ckpt)
        mpu = None
        if tp > 1:   # as launch/train/parallel.py does: AutoTP's groups first, passed as mpu
            from deepspeed.utils import groups
            groups._init_tp_mesh_device(tensor_model_parallel_size=tp)
            mpu = groups
        if pp == 1:
            engine, *_ = deepspeed.initialize(model=model, config=ds_config(zero, micro_batch, world // tp, tp),
                                              model_parameters=model.parameters(), mpu=mpu)
        for step in range(3):
            with record_function(f"shardplan_step{step}"):
                # the same tokens on every rank: tensor-parallel ranks must see one batch
                x = torch.randint(0, SHAPE["vocab"], (micro_batch, SHAPE["max_seq_len"]),
                                  generator=torch.Generator().manual_seed(step))
                if pp > 1:
                    engine.train_batch(data_iter=iter([(x, torch.roll(x, -1, dims=1))] * grad_accum))
                    continue
                loss = engine(x, torch.roll(x, -1, dims=1))
                engine.backward(loss)
                engine.step()
    events = prof.profiler.kineto_results.events()
    mem = sorted((e.start_ns(), e.nbytes()) for e in events if e.name() == "[memory]")
    marks = {e.name(): (e.start_ns(), e.end_ns()) for e in events if e.name().startswith("shardplan_step")}
    start = marks["shardplan_step1"][0]
    cur = peak = 0
    for t, n in mem:
        cur += n
        if t >= start:
            peak = max(peak, cur)
    queue.put((rank, peak, n_params))


def measure(dp: int, zero: int, micro_batch: int, ckpt: str, tp: int = 1, pp: int = 1, grad_accum: int = 1) -> dict:
    import torch.multiprocessing as mp
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    world = dp * tp * pp
    procs = [ctx.Process(target=rank_main, args=(r, world, port, zero, micro_batch, ckpt, queue, tp, pp, grad_accum))
             for r in range(world)]
    for p in procs:
        p.start()
    import queue as queues
    results = []
    while len(results) < world:
        try:
            results.append(queue.get(timeout=5))
        except queues.Empty:
            if any(p.exitcode not in (None, 0) for p in procs):
                for p in procs:
                    p.kill()
                raise RuntimeError(f"a rank failed (exit codes {[p.exitcode for p in procs]}); see its traceback")
    results.sort()
    for p in procs:
        p.join(timeout=60)
    import deepspeed
    import torch
    return {"size": "gpt2-demo", "engine": "deepspeed", "stage": zero, "seq": SHAPE["max_seq_len"],
            "vocab": SHAPE["vocab"], "n_layer": SHAPE["n_layers"], "n_embd": SHAPE["hidden"],
            "n_head": SHAPE["n_heads"], "n_params": results[0][2], "gpu": "cpu", "torch": torch.__version__,
            "deepspeed": deepspeed.__version__, "mbs": micro_batch, "ckpt": ckpt == "full", "dp": dp,
            "tp": tp, "pp": pp, "grad_accum": grad_accum, "world_size": world, "zero_buckets": "shardplan",
            "precision": "bf16",
            "peak_allocated": max(r[1] for r in results), "peak_allocated_per_rank": [r[1] for r in results],
            "ok": True, "note": "profiler memory events on CPU (DS_ACCELERATOR=cpu, gloo); memory only"}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dp", type=int, default=2)
    ap.add_argument("--tp", type=int, default=1, help="AutoTP degree (world = dp x tp x pp)")
    ap.add_argument("--pp", type=int, default=1, help="pipeline stages (PipelineModule, ZeRO 0/1)")
    ap.add_argument("--grad-accum", type=int, default=1, help="micro-batches per step (1F1B needs >= pp)")
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--zero", type=int, nargs="*", default=[0, 1, 2, 3])
    ap.add_argument("--micro-batch", type=int, nargs="*", default=[1, 4])
    ap.add_argument("--checkpointing", nargs="*", default=["none", "full"])
    args = ap.parse_args()
    rows = []
    for mb in args.micro_batch:
        for ckpt in args.checkpointing:
            for zero in args.zero:
                row = measure(args.dp, zero, mb, ckpt, args.tp, args.pp, args.grad_accum)
                rows.append(row)
                print(f"dp={args.dp} tp={args.tp} pp={args.pp} zero={zero} micro_batch={mb} ckpt={ckpt}: peak "
                      f"{row['peak_allocated'] / 1e6:.2f} MB per rank "
                      f"{[round(b / 1e6, 2) for b in row['peak_allocated_per_rank']]}", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with args.out.open("w") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
