"""One training run: validate everything, then build the engine, train, checkpoint, report, tear down."""
from __future__ import annotations

import gc
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

from shardplan.launch import rundir
from shardplan.planner.layout import compile_refusal
from shardplan.planner.model import ModelSpec

from . import checkpoint as ckpt
from .config import load_run_config


@dataclass(frozen=True)
class Options:
    run_dir: Path
    steps: int = 100
    data: str | None = None
    tokenizer: str | None = None
    init_from: str | None = None
    resume: bool = False
    overwrite_checkpoints: bool = False
    checkpoint_every: int = 0        # 0: only at the end
    seed: int = 0
    compile: bool | None = None      # torch.compile the model; None: plan.json's training.compile


class UserError(ValueError):
    """Raised on any rank for bad input after the process group exists; every rank exits 2."""


def _prepare_data(opts: Options, run, local_rank: int):
    """Local rank 0 of every node tokenizes (cached in the run dir; the result is deterministic, so nodes
    with separate disks agree) while the other ranks wait; then every rank maps the token file."""
    import deepspeed.comm as dist
    from .data import DataError, load_tokenizer, open_tokens, text_files, token_file
    cache = opts.run_dir / "data"
    result: dict = {}
    if local_rank == 0:
        try:
            files = text_files(opts.data, cache)
            tokenizer, source = load_tokenizer(opts.tokenizer, files, run.model.vocab, cache)
            result = {"path": str(token_file(files, tokenizer, source, cache)), "tokenizer": source}
        except DataError as e:
            result = {"error": str(e)}
    results = [None] * dist.get_world_size()
    dist.all_gather_object(results, result)
    errors = [r["error"] for r in results if "error" in r]
    if errors:
        raise UserError(errors[0])
    preparer = results[dist.get_rank() - local_rank]   # this node's local rank 0
    path = Path(preparer["path"])
    return open_tokens(path), {"tokens_file": path.name, "tokenizer": preparer["tokenizer"]}


def run(opts: Options) -> dict | None:
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    try:   # everything checkable from files, before any process group, engine or save
        run_cfg = load_run_config(opts.run_dir, world_size)
        layout = run_cfg.layout
        ckpt_dir = ckpt.checkpoint_dir(opts.run_dir)
        resume_tag = ckpt.check_start(ckpt_dir, opts.resume, opts.overwrite_checkpoints)
        if layout.tp > 1 and (layout.pp > 1 or layout.sequence_parallel):
            try:
                import megatron.core  # noqa: F401
            except ImportError:
                what = "sequence parallelism" if layout.sequence_parallel else f"tp ({layout.tp}) × pp ({layout.pp})"
                raise UserError(f"{what} uses Megatron-core tensor-parallel layers: pip install "
                                "'shardplan[megatron]' (or re-plan with --tp 1, or --pp 1 without --sp)") from None
        if opts.steps < 1:
            raise UserError(f"--steps ({opts.steps}) must be at least 1")
        use_compile = run_cfg.compile if opts.compile is None else opts.compile
        refusal = compile_refusal(layout) if use_compile else None
        if refusal:
            raise UserError(f"--compile: {refusal}")
        init_state = None
        if opts.init_from:
            if layout.tp > 1 and layout.pp > 1:
                raise UserError("--init-from with tp > 1 and pp > 1 is not supported; fine-tune with tp 1 or pp 1")
            from .model import check_hf_shape, load_hf_state_dict, read_hf_config
            check_hf_shape(run_cfg.model, read_hf_config(Path(opts.init_from)), Path(opts.init_from))
            init_state = None if resume_tag else load_hf_state_dict(Path(opts.init_from))
    except ValueError as e:   # the config, model and checkpoint checks all raise ValueError subclasses
        raise UserError(str(e)) from None

    import torch
    from deepspeed.utils import logger as ds_logger
    ds_logger.setLevel(logging.WARNING)
    torch.manual_seed(opts.seed)
    from .parallel import build_trainer, init_distributed
    init_distributed()
    import deepspeed.comm as dist

    from .data import Sampler
    tokens, data_facts = _prepare_data(opts, run_cfg, int(os.environ.get("LOCAL_RANK", "0")))
    metadata = {"layout": run_cfg.layout_dict(), "model": run_cfg.model.shape_dict(),
                "data": {**data_facts, "seed": opts.seed}}
    if resume_tag:
        ckpt.check_compatible(ckpt.read_metadata(ckpt_dir, resume_tag), metadata, ckpt_dir, resume_tag)
    sampler = Sampler(n_tokens=len(tokens), seq_len=run_cfg.seq_len, micro_batch=layout.micro_batch,
                      grad_accum=layout.grad_accum, dp=layout.dp, seed=opts.seed)

    trainer = build_trainer(run_cfg, opts.seed, init_state)
    if use_compile:
        from .speed import compile_engine
        compile_engine(trainer.engine)
    scheduler = trainer.engine.lr_scheduler
    if getattr(scheduler, "last_batch_iteration", None) == -1 and hasattr(scheduler, "step"):
        # DeepSpeed's Warmup* schedules start at iteration -1, which gives the first optimizer step lr 0
        # (deepspeed/runtime/lr_schedules.py get_lr); start at 0 so step 1 trains at the warm-up's first rate.
        scheduler.step(0)
    start = ckpt.load(trainer.engine, ckpt_dir, resume_tag) if resume_tag else 0
    from .metrics import Metrics
    flops_per_token = ModelSpec.from_dict(run_cfg.model_dict).flops_per_token(run_cfg.seq_len)  # as estimate's
    metrics = Metrics(opts.run_dir / rundir.METRICS, rank, world_size, flops_per_token, run_cfg.precision,
                      layout.global_batch * run_cfg.seq_len, opts.steps,
                      resumed_from=start if resume_tag else None, checkpoint=resume_tag)
    saved_at = start
    for step in range(start, opts.steps):
        lr = trainer.engine.optimizer.param_groups[0]["lr"]   # the rate this step's update uses
        t0 = time.perf_counter()
        loss = trainer.train_step(step, tokens, sampler)
        seconds = time.perf_counter() - t0
        metrics.step(step + 1, loss, float(lr), seconds)
        if opts.checkpoint_every and (step + 1) % opts.checkpoint_every == 0:
            ckpt.save(trainer.engine, ckpt_dir, step + 1, metadata, rank)
            saved_at = step + 1
    if saved_at != opts.steps and start < opts.steps:
        ckpt.save(trainer.engine, ckpt_dir, opts.steps, metadata, rank)

    facts = [None] * world_size
    dist.all_gather_object(facts, {"rank": rank, **trainer.rank_facts()})
    summary = metrics.summary({"resumed_from": start, "layout": run_cfg.layout_dict(), "method": run_cfg.method,
                               "compile": bool(use_compile),
                               "ranks": facts, "checkpoint": ckpt.latest_tag(ckpt_dir)})
    _teardown(trainer)
    return summary


def _teardown(trainer) -> None:
    """ZeRO-3 and gloo can abort at interpreter exit: drop the engine and the process group explicitly."""
    import deepspeed.comm as dist
    import torch.distributed as tdist
    dist.barrier()
    trainer.engine.destroy() if hasattr(trainer.engine, "destroy") else None
    trainer.engine = None
    gc.collect()
    if tdist.is_initialized():
        tdist.destroy_process_group()
