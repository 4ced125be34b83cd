"""Shared helpers for the training-program tests: a tiny run directory and real multi-process launches."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from shardplan.launch.run.preflight import free_port

TINY_MODEL = {"name": "gpt2-tiny", "arch": "gpt2", "n_layers": 2, "hidden": 64, "n_heads": 4, "n_kv_heads": 4,
              "ffn_hidden": 256, "vocab": 512, "max_seq_len": 64, "tied_embeddings": True, "head_dim": 16}
TINY_PARAMS = 512 * 64 + 64 * 64 + 2 * (64 * 192 + 192 + 64 * 64 + 64 + 2 * 64 * 256 + 256 + 64 + 4 * 64) + 2 * 64


def make_run_dir(path: Path, dp=1, tp=1, pp=1, zero=0, micro=4, accum=1, seq_len=32, checkpointing="none",
                 model: dict | None = None, ds_overrides: dict | None = None, prepared_data: bool = True,
                 ep: int = 1, sp: bool = False, cp: int = 1) -> Path:
    """plan.json + ds_config.json as render writes them (fp32, AdamW, gradient clipping, warm-up + cosine LR)."""
    path.mkdir(parents=True, exist_ok=True)
    model = dict(model or TINY_MODEL)
    model.setdefault("params", TINY_PARAMS)
    layout = {"dp": dp, "tp": tp, "pp": pp, "zero_stage": zero, "micro_batch": micro, "grad_accum": accum,
              "checkpointing": checkpointing, "offload": "none", **({"ep": ep} if ep != 1 else {}),
              **({"sequence_parallel": True} if sp else {}), **({"cp": cp} if cp != 1 else {})}
    plan = {"best": {"model": model, "layout": layout,
                     "training": {"seq_len": seq_len, "global_batch": dp * micro * accum, "precision": "fp32"}},
            "candidates": [], "evaluated": 1, "reasons": [], "command": "tests/train_helpers.py"}
    ds = {"train_batch_size": dp * micro * accum, "train_micro_batch_size_per_gpu": micro,
          "gradient_accumulation_steps": accum, "gradient_clipping": 1.0, "steps_per_print": 10**9,
          "optimizer": {"type": "AdamW", "params": {"lr": 3e-3, "betas": [0.9, 0.95], "eps": 1e-8,
                                                    "weight_decay": 0.1, "torch_adam": True}},
          # As render writes it; warm-up starts at 0.1·lr so every compared step really updates the weights.
          "scheduler": {"type": "WarmupCosineLR", "params": {"total_num_steps": 100, "warmup_num_steps": 2,
                                                             "warmup_min_ratio": 0.1, "cos_min_ratio": 0.1,
                                                             "warmup_type": "linear"}},
          "zero_optimization": {"stage": zero}, "bf16": {"enabled": False}, "fp16": {"enabled": False},
          "wall_clock_breakdown": False}
    if tp > 1:
        from shardplan.launch.train.model import autotp_partition_config
        ds["tensor_parallel"] = {"autotp_size": tp, "partition_config": autotp_partition_config()}
    if pp > 1:
        ds["pipeline"] = {"stages": pp}
    if cp > 1:
        ds["sequence_parallel_size"] = cp
    for key, value in (ds_overrides or {}).items():
        ds[key] = value
    (path / "plan.json").write_text(json.dumps(plan, indent=1))
    (path / "ds_config.json").write_text(json.dumps(ds, indent=1))
    return with_prepared_data(path) if prepared_data else path


_DATA_CACHE: dict[str, Path] = {}


def with_prepared_data(run_dir: Path) -> Path:
    """Copy a tokenizer + token file prepared once per test session into run_dir/data (saves ~2 s per run)."""
    import shutil
    import tempfile
    if "dir" not in _DATA_CACHE:
        from shardplan.launch.train.data import load_tokenizer, text_files, token_file
        cache = Path(tempfile.mkdtemp(prefix="shardplan-train-data-"))
        files = text_files(None, cache)
        tok, source = load_tokenizer(None, files, TINY_MODEL["vocab"], cache)
        token_file(files, tok, source, cache)
        _DATA_CACHE["dir"] = cache
    shutil.copytree(_DATA_CACHE["dir"], run_dir / "data", dirs_exist_ok=True)
    return run_dir


def train(run_dir: Path, nproc: int, *args: str, timeout: int = 240) -> subprocess.CompletedProcess:
    """Run the training program under torchrun (nproc processes, gloo on CPU)."""
    env = dict(os.environ, DS_ACCELERATOR="cpu", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()),
               OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false", PYTHONUNBUFFERED="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(nproc),
           "--master-port", env["MASTER_PORT"], "-m", "shardplan.launch.train", "--run-dir", str(run_dir), *args]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)


def train_single(run_dir: Path, *args: str, timeout: int = 120) -> subprocess.CompletedProcess:
    """One process without a launcher (WORLD_SIZE unset = 1), as a user would run it."""
    env = dict(os.environ, DS_ACCELERATOR="cpu", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()),
               OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false", PYTHONUNBUFFERED="1")
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        env.pop(key, None)
    cmd = [sys.executable, "-m", "shardplan.launch.train", "--run-dir", str(run_dir), *args]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)


def losses(run_dir: Path) -> list[float]:
    lines = [json.loads(l) for l in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in lines if "step" in r]


def summary(run_dir: Path) -> dict:
    lines = [json.loads(l) for l in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r for r in lines if r.get("event") == "summary"][-1]


EQUIVALENCE_RTOL = 1e-5   # relative loss difference allowed between a parallel layout and one process
SGD_CLIPPED = {"optimizer": {"type": "SGD", "params": {"lr": 0.5}}, "gradient_clipping": 0.05}   # clip always on


def train_losses(run_dir: Path, nproc: int, steps: int) -> list[float]:
    """Train `steps` steps on nproc CPU processes (it must succeed) and return the logged losses."""
    result = train(run_dir, nproc, "--steps", str(steps))
    assert result.returncode == 0, result.stderr[-4000:]
    return losses(run_dir)


def assert_same_losses(got: list[float], expected: list[float], name: str, steps: int) -> None:
    """Every step's loss within EQUIVALENCE_RTOL of the reference's, and the reference moving every step (the
    comparison is not between two constant curves)."""
    worst = max(abs(a - b) / abs(b) for a, b in zip(got, expected))
    print(f"\nequivalence {name}: max relative loss difference {worst:.2e} over {steps} steps")
    assert len(got) == len(expected) == steps
    for step, (a, b) in enumerate(zip(got, expected), start=1):
        assert abs(a - b) <= EQUIVALENCE_RTOL * abs(b), f"{name} step {step}: {a} vs {b}"
    assert len(set(expected)) == steps
