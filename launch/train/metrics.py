"""metrics.jsonl on rank 0 (one line per optimizer step, a summary at the end) and the console progress line."""
from __future__ import annotations

import json
import os
import resource
import sys
import time
from pathlib import Path

import torch

from shardplan.planner.cluster import CATALOG, gpu_from_name
from shardplan.planner.model import FLOPS_FORMULA


def peak_flops(precision: str) -> tuple[float | None, str]:
    """(peak FLOP/s of one device, what it is): the planner's catalog card for this device, so measured MFU
    and `estimate`'s predicted MFU divide by the same peak. On CPU, or an unknown card, MFU is null."""
    if not torch.cuda.is_available():
        return None, "cpu: no peak, mfu null"
    name = torch.cuda.get_device_name()
    gpu = gpu_from_name(name, torch.cuda.get_device_properties(0).total_memory)
    if gpu.name not in CATALOG:
        return None, f"{name}: not in shardplan's GPU catalog, peak unknown, mfu null"
    peak = gpu.peak_tflops(precision)
    return peak * 1e12, f"{name} (catalog {gpu.name}) dense {precision} datasheet peak {peak} TFLOP/s"


def peak_memory_bytes() -> int:
    """torch.cuda.max_memory_allocated on GPU; on CPU the process's max RSS (getrusage, KiB on Linux)."""
    if torch.cuda.is_available():
        return int(torch.cuda.max_memory_allocated())
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(rss if sys.platform == "darwin" else rss * 1024)


def gather_peak_memory() -> list[int]:
    import deepspeed.comm as dist
    mine = torch.tensor([peak_memory_bytes()], dtype=torch.int64,
                        device="cuda" if torch.cuda.is_available() else "cpu")
    out = [torch.zeros_like(mine) for _ in range(dist.get_world_size())]
    dist.all_gather(out, mine)
    return [int(t.item()) for t in out]


def truncate_to_step(path: Path, step: int) -> list[dict]:
    """Cut metrics.jsonl back to `step`, where a resumed run starts: keep every line before the first step
    record past it (or before a line torn by the kill), drop the rest, and return the dropped step records.

    Without this a killed run's steps after its checkpoint would appear twice, once from each run. Atomic
    (temp file, then os.replace): a crash here leaves the old file or the new one, never part of one."""
    if not path.exists():
        return []
    kept: list[str] = []
    dropped: list[dict] = []
    cut = False
    for line in path.read_text().splitlines(keepends=True):
        try:
            row = json.loads(line)
        except ValueError:
            row = None
        if not cut and (not isinstance(row, dict) or not line.endswith("\n") or row.get("step", 0) > step):
            cut = True
        if not cut:
            kept.append(line)
        elif isinstance(row, dict) and "step" in row:
            dropped.append(row)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(kept))
    os.replace(tmp, path)
    return dropped


class Metrics:
    """Rank 0 writes; other ranks only take part in the memory gather.

    A resumed run (resumed_from = the checkpoint's step) first cuts the file back to that step, then
    records the restart as {"event": "resume", ...}: the file stays one timeline, each step once."""

    def __init__(self, path: Path, rank: int, world_size: int, flops_per_token: int, precision: str,
                 tokens_per_step: int, total_steps: int, resumed_from: int | None = None,
                 checkpoint: str | None = None):
        self.rank, self.world_size = rank, world_size
        self.flops_per_token, self.tokens_per_step, self.total_steps = flops_per_token, tokens_per_step, total_steps
        self.peak, self.peak_source = peak_flops(precision)
        self.file = None
        if rank == 0:
            dropped = truncate_to_step(path, resumed_from) if resumed_from is not None else []
            self.file = open(path, "a" if resumed_from is not None else "w")
            if resumed_from is not None:
                # The dropped steps are recomputed from the checkpoint; their first losses stay on record.
                event = {"event": "resume", "from_step": resumed_from, "checkpoint": checkpoint,
                         "discarded_steps": [{"step": r["step"], "loss": r.get("loss")} for r in dropped],
                         "world_size": world_size, "time": time.time()}
                self.file.write(json.dumps(event) + "\n")
                self.file.flush()
        self.tty = sys.stdout.isatty()
        self.records: list[dict] = []
        self.started = time.time()

    def step(self, step: int, loss: float, lr: float, seconds: float) -> None:
        per_rank = gather_peak_memory()
        if self.rank != 0:
            return
        tokens_per_s = self.tokens_per_step / seconds
        mfu = (self.flops_per_token * tokens_per_s / (self.peak * self.world_size)) if self.peak else None
        record = {"step": step, "loss": loss, "lr": lr, "tokens_per_s": tokens_per_s, "mfu": mfu,
                  "flops_formula": FLOPS_FORMULA, "flops_per_token": self.flops_per_token,
                  "peak_flops_per_device": self.peak, "peak_source": self.peak_source,
                  "peak_allocated_bytes": max(per_rank), "peak_allocated_bytes_per_rank": per_rank,
                  "world_size": self.world_size, "step_time_s": seconds, "time": time.time()}
        self.records.append(record)
        self.file.write(json.dumps(record) + "\n")
        self.file.flush()
        line = (f"step {step}/{self.total_steps}  loss {loss:.4f}  lr {lr:.2e}  {tokens_per_s:,.0f} tok/s"
                + (f"  mfu {mfu:.1%}" if mfu is not None else "") + f"  peak {max(per_rank) / 2**20:,.0f} MiB")
        if self.tty:
            print("\r" + line.ljust(100), end="" if step < self.total_steps else "\n", flush=True)
        else:
            print(line, flush=True)

    def summary(self, extra: dict) -> dict | None:
        if self.rank != 0:
            return None
        timed = self.records[1:] or self.records   # the first step includes warm-up
        record = {"event": "summary", "steps": len(self.records),
                  "final_loss": self.records[-1]["loss"] if self.records else None,
                  "tokens_per_s": (sum(r["tokens_per_s"] for r in timed) / len(timed)) if timed else None,
                  "mfu": (sum(r["mfu"] for r in timed) / len(timed)) if timed and timed[0]["mfu"] is not None else None,
                  "flops_formula": FLOPS_FORMULA, "peak_source": self.peak_source,
                  "peak_allocated_bytes": max((r["peak_allocated_bytes"] for r in self.records), default=None),
                  "peak_allocated_bytes_per_rank": self.records[-1]["peak_allocated_bytes_per_rank"]
                  if self.records else None,
                  "world_size": self.world_size, "wall_s": time.time() - self.started, "time": time.time(), **extra}
        self.file.write(json.dumps(record) + "\n")
        self.file.close()
        return record
