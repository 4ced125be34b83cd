"""Checkpoints under <run-dir>/checkpoints: one DeepSpeed tag per save, a `latest` pointer moved only after all ranks saved.

A crash mid-save leaves `latest` on the previous complete tag. Each tag carries shardplan.json (layout,
model shape, seed, data), compared before anything is loaded, so a checkpoint from another layout is a
clear error instead of a shape mismatch deep inside DeepSpeed.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from shardplan.launch import rundir

META = "shardplan.json"
POINTER = "latest"   # same name and format as DeepSpeed's own pointer, so load_checkpoint(tag=None) agrees


class CheckpointError(ValueError):
    """A checkpoint that cannot be used (or must not be overwritten): the message says why and the fix."""


def checkpoint_dir(run_dir: Path) -> Path:
    return Path(run_dir) / rundir.CHECKPOINTS


def latest_tag(ckpt_dir: Path) -> str | None:
    pointer = ckpt_dir / POINTER
    if not pointer.is_file():
        return None
    tag = pointer.read_text().strip()
    return tag if (ckpt_dir / tag / META).is_file() else None


def read_metadata(ckpt_dir: Path, tag: str) -> dict:
    return json.loads((ckpt_dir / tag / META).read_text())


def check_start(ckpt_dir: Path, resume: bool, overwrite: bool) -> str | None:
    """Before anything else: the tag to resume from, or None for a fresh start that may write here."""
    tag = latest_tag(ckpt_dir)
    if resume:
        if tag is None:
            raise CheckpointError(f"--resume: no complete checkpoint in {ckpt_dir} (no `{POINTER}` pointer to a "
                                  "saved tag); drop --resume to start fresh")
        return tag
    if not overwrite and ckpt_dir.is_dir() and any(ckpt_dir.iterdir()):
        raise CheckpointError(f"{ckpt_dir} already holds checkpoints (latest: {tag}); pass --resume to continue "
                              "them or --overwrite-checkpoints to start fresh over them")
    return None


def check_compatible(saved: dict, now: dict, ckpt_dir: Path, tag: str) -> None:
    """Every layout, model and data fact must match, or the resumed run would not continue the same curve."""
    diffs = []
    for section in ("layout", "model", "data"):
        for key in sorted(set(saved.get(section, {})) | set(now.get(section, {}))):
            a, b = saved.get(section, {}).get(key), now.get(section, {}).get(key)
            if a != b:
                diffs.append(f"{section}.{key}: checkpoint {a} vs this run {b}")
    if diffs:
        raise CheckpointError(f"checkpoint {ckpt_dir / tag} was written by another run ({'; '.join(diffs)}); "
                              "resume with the run directory and flags that wrote it, or start fresh with "
                              "--overwrite-checkpoints")


def save(engine, ckpt_dir: Path, step: int, metadata: dict, rank: int) -> str:
    """All ranks write their shards; then rank 0 writes the metadata and moves the pointer atomically."""
    import deepspeed.comm as dist
    tag = f"step_{step}"
    engine.save_checkpoint(str(ckpt_dir), tag=tag, client_state={"step": step}, save_latest=False)
    dist.barrier()
    if rank == 0:
        meta_tmp = ckpt_dir / tag / (META + ".tmp")
        meta_tmp.write_text(json.dumps({**metadata, "step": step}, indent=1))
        os.replace(meta_tmp, ckpt_dir / tag / META)
        pointer_tmp = ckpt_dir / (POINTER + ".tmp")
        pointer_tmp.write_text(tag)
        os.replace(pointer_tmp, ckpt_dir / POINTER)
    dist.barrier()
    return tag


def load(engine, ckpt_dir: Path, tag: str) -> int:
    """Restore weights, optimizer and LR schedule; returns the number of steps already done."""
    path, client_state = engine.load_checkpoint(str(ckpt_dir), tag=tag)
    if path is None:
        raise CheckpointError(f"checkpoint {ckpt_dir / tag}: DeepSpeed could not load it (files missing?); "
                              f"point {ckpt_dir / POINTER} at an earlier tag or start fresh")
    return int(client_state["step"])
