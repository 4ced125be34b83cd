"""The run-directory contract: the names of the files `render` writes and `launch`, `validate` and the
training program read, and the one reader of plan.json (and of the run's other JSON files).

A run directory holds plan.json (the plan: best.model, best.cluster, best.layout, best.training, and
"launch", the RunSpec the scripts were rendered from), ds_config.json, the scripts, hostfile (multi-node),
README.md, hf/ (the Trainer / accelerate files), model/config.json (when --model was a local Hugging Face
model; plan.json's "hf_model" says where it came from), logs/, and after a launch job.json, metrics.jsonl
and checkpoints/.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from shardplan.planner.layout import Layout

PLAN = "plan.json"
DS_CONFIG = "ds_config.json"
HOSTFILE = "hostfile"
LAUNCH_SH = "launch.sh"                  # the deepspeed launcher
LAUNCH_TORCHRUN_SH = "launch_torchrun.sh"
JOB_SBATCH = "job.sbatch"
MEGATRON_ARGS = "megatron_args.sh"      # pretrain_gpt.py arguments: --engine megatron, or a layout Megatron runs
LAUNCH_MEGATRON = "launch_megatron.sh"  # --engine megatron: torchrun pretrain_gpt.py from a Megatron-LM checkout
JOB_MEGATRON = "job_megatron.sbatch"    # --engine megatron under SLURM: launch_megatron.sh on every node
README = "README.md"
HF_DIR = "hf"                            # the same plan for Hugging Face Trainer / accelerate users
HF_DS_CONFIG = "hf/ds_config.json"       # "auto" where the Trainer fills a value
HF_TRAINING_ARGS = "hf/training_args.json"   # TrainingArguments keyword arguments
HF_ACCELERATE = "hf/accelerate_config.yaml"
HF_README = "hf/README.md"
MODEL_CONFIG = "model/config.json"       # a copy of the local HF model's config.json (--model DIR), for training
SCRIPTS = (LAUNCH_SH, LAUNCH_TORCHRUN_SH, JOB_SBATCH, MEGATRON_ARGS, LAUNCH_MEGATRON, JOB_MEGATRON)
LOG_DIR = "logs"                         # launcher, per-rank and SLURM outputs
JOB_FILE = "job.json"                    # the record of the last launch (launch/run/jobs.py)
METRICS = "metrics.jsonl"                # one line per optimizer step, written by rank 0
CHECKPOINTS = "checkpoints"
PLAN_SECTIONS = ("model", "cluster", "layout", "training")  # what plan.json's "best" must hold


class RunDirError(ValueError):
    """A run directory whose files are missing or unreadable; the message names the file and the fix."""


def read_json(path: str | os.PathLike) -> dict:
    """One JSON file of a run directory, or a RunDirError naming it and the fix."""
    path = Path(path)
    if not path.is_file():
        raise RunDirError(f"{path}: missing; render the run directory first (shardplan render ... --out "
                          f"{path.parent})")
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise RunDirError(f"{path} is not valid JSON ({e}); re-render it") from None


def plan_file(path: str | os.PathLike) -> Path:
    """plan.json of a run directory, or the path itself when it names a file."""
    path = Path(path)
    return path if path.suffix == ".json" or path.is_file() else path / PLAN


def read_plan(path: str | os.PathLike, need: tuple[str, ...] = PLAN_SECTIONS) -> dict:
    """plan.json (of a run directory, or a file `shardplan plan --json` wrote), with the sections of its
    "best" that the reader `need`s checked (the training program needs no cluster, for one)."""
    path = plan_file(path)
    plan = read_json(path)
    best = plan.get("best") if isinstance(plan, dict) else None
    missing = [k for k in need if not isinstance(best, dict) or k not in best]
    if missing:
        raise RunDirError(f"{path}: best.{', best.'.join(missing)} missing; give the plan.json that "
                          "`shardplan plan --json` or `shardplan render` wrote")
    return plan


def has_checkpoint(run_dir: str | os.PathLike) -> bool:
    """Whether checkpoints/ holds anything to resume from (`launch --resume` needs it)."""
    ckpt = Path(run_dir) / CHECKPOINTS
    return ckpt.is_dir() and any(ckpt.iterdir())


def plan_layout(plan: dict, path: str | os.PathLike = PLAN) -> Layout:
    """The planned Layout (its own validation applies), or a RunDirError naming the file."""
    try:
        return Layout.from_dict(plan["best"]["layout"])
    except (ValueError, TypeError, KeyError) as e:  # TypeError: a required key (dp) missing, or not a mapping
        raise RunDirError(f"{plan_file(path)}: best.layout is not a valid layout: {e}; re-plan and re-render "
                          "the run directory") from None


def hf_model(plan: dict) -> dict | None:
    """plan.json's "hf_model" (source directory, config file, whether weights are there), or None for a preset."""
    found = plan.get("hf_model") if isinstance(plan, dict) else None
    return found if isinstance(found, dict) else None
