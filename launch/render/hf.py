"""The same plan for Hugging Face users: hf/ds_config.json ("auto" where the Trainer fills a value),
hf/training_args.json (TrainingArguments keyword arguments), hf/accelerate_config.yaml, hf/README.md, and
model/config.json when --model was a local Hugging Face model (the training program rebuilds it from there).

Derived from the validated ds_config.json of the run, so both launch paths train the same layout.
Nothing here imports transformers, accelerate or torch; tests/test_render_hf.py hands the files to
transformers' HfTrainerDeepSpeedConfig and accelerate's config loader.
"""
from __future__ import annotations

import copy
import json
import os
from pathlib import Path

from shardplan.planner.estimate import Estimate

from .. import rundir
from ..validate.auto_fill import explain
from .ds_config import Schedule

WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "pytorch_model.bin.index.json")
# Keys the Trainer fills from TrainingArguments (and checks when they are numbers): left "auto" here. Betas and
# eps stay numbers (equal to training_args.json's adam_beta1/2, adam_epsilon): accelerate alone never fills them.
_AUTO_KEYS = (("train_micro_batch_size_per_gpu",), ("gradient_accumulation_steps",), ("gradient_clipping",),
              ("optimizer", "params", "lr"), ("optimizer", "params", "weight_decay"), ("scheduler", "params", "total_num_steps"),
              ("scheduler", "params", "warmup_num_steps"))


def hf_model_record(model_arg) -> dict | None:
    """plan.json's "hf_model" for a --model that is a local HF model directory or config.json, else None.

    source: the directory (from_pretrained reads weights from it when they are there); config: its config.json."""
    if not isinstance(model_arg, (str, os.PathLike)):
        return None
    from shardplan.planner.presets import find_preset

    name = os.fspath(model_arg)
    path = Path(name).expanduser()
    looks_like_path = os.sep in name or name.endswith(".json") or name.startswith(".")  # as get_model decides
    if not path.exists() or (not looks_like_path and find_preset(name) is not None):
        return None
    config = path / "config.json" if path.is_dir() else path
    source = config.parent.resolve()
    weights = any((source / name).is_file() for name in WEIGHT_FILES)
    return {"source": str(source), "config": str(config.resolve()), "weights": weights}


def hf_ds_config(ds_config: dict, est: Estimate) -> dict:
    """The run's DeepSpeed config as the Trainer consumes it."""
    cfg = copy.deepcopy(ds_config)
    for path in _AUTO_KEYS:
        holder = cfg
        for key in path[:-1]:
            holder = holder.get(key, {})
        if path[-1] in holder:
            holder[path[-1]] = "auto"
    # The Trainer computes train_batch_size as world size × micro × accum: right only when every rank is a
    # data-parallel rank; with AutoTP DeepSpeed derives it from micro × accum × dp itself when it is absent.
    if est.layout.tp > 1:
        cfg.pop("train_batch_size")
    else:
        cfg["train_batch_size"] = "auto"
    # bf16/fp16 stay the plan's explicit true: the Trainer checks it against TrainingArguments.bf16/fp16
    # (training_args.json says the same), and a plain accelerate loop needs no --mixed_precision for it.
    # The Trainer recomputes activations with model.gradient_checkpointing_enable() (training_args.json),
    # not DeepSpeed's activation_checkpointing API, which only Megatron-style models call.
    cfg.pop("activation_checkpointing", None)
    tp = cfg.get("tensor_parallel")
    if tp:   # shardplan's GPT-2 module names mean nothing to a transformers model: DeepSpeed uses its tp_plan
        tp.pop("partition_config", None)
    return cfg


def training_args(est: Estimate, schedule: Schedule) -> dict:
    """Keyword arguments of transformers' TrainingArguments for the plan (beside output_dir and deepspeed)."""
    lay, precision = est.layout, est.training.precision
    args = {"per_device_train_batch_size": lay.micro_batch, "gradient_accumulation_steps": lay.grad_accum,
            "bf16": precision == "bf16", "fp16": precision == "fp16",
            # Trainer has no attention-only recompute: "selective" becomes full recompute (fits; costs time).
            "gradient_checkpointing": lay.checkpointing != "none",
            "learning_rate": schedule.lr, "adam_beta1": schedule.betas[0], "adam_beta2": schedule.betas[1],
            "adam_epsilon": schedule.eps, "weight_decay": schedule.weight_decay,
            "max_grad_norm": schedule.gradient_clipping, "max_steps": schedule.steps,
            "warmup_steps": schedule.warmup_steps, "logging_steps": schedule.steps_per_print}
    if lay.checkpointing != "none":
        args["gradient_checkpointing_kwargs"] = {"use_reentrant": False}
    return args


def cli_flags(args: dict) -> tuple[str, ...]:
    """The same TrainingArguments as command-line flags (HfArgumentParser: --name value, --flag for True)."""
    out: list[str] = []
    for key, value in args.items():
        if value is False:
            continue
        if value is True:
            out.append(f"--{key}")
        else:
            out += [f"--{key}", json.dumps(value) if isinstance(value, dict) else str(value)]
    return tuple(out)


def hf_files(env, plan: dict, est: Estimate, ds_config: dict, schedule: Schedule, run, common: dict) -> dict[str, str]:
    """{file name: text} of hf/ (and model/config.json); pipeline and Ulysses (cp) plans get only hf/README.md
    saying why."""
    files: dict[str, str] = {}
    record = rundir.hf_model(plan)
    if record:
        files[rundir.MODEL_CONFIG] = Path(record["config"]).read_text()
    pipeline, ulysses = est.layout.pp > 1, est.layout.cp > 1
    no_files = pipeline or ulysses
    ds = None if no_files else hf_ds_config(ds_config, est)
    args = None if no_files else training_args(est, schedule)
    if not no_files:
        files[rundir.HF_DS_CONFIG] = json.dumps(ds, indent=2) + "\n"
        files[rundir.HF_TRAINING_ARGS] = json.dumps(args, indent=2) + "\n"
        files[rundir.HF_ACCELERATE] = env.get_template("accelerate_config.yaml.j2").render(
            ds_path=f"{run.run_dir}/{rundir.HF_DS_CONFIG}", zero3=est.layout.zero_stage == 3, **common)
    autos = [explain(p) for p in _auto_paths(ds)] if ds else []
    # Several nodes without known hosts: the first node's address comes from the shell, as in launch_torchrun.sh.
    master_addr = '"$MASTER_ADDR"' if run.nodes > 1 and not run.hosts else run.master_addr
    files[rundir.HF_README] = env.get_template("hf_README.md.j2").render(
        pipeline=pipeline, ulysses=ulysses, autos=autos, master_addr=master_addr, args=args, flags=cli_flags(args) if args else (), hf_model=record,
        ds_path=f"{run.run_dir}/{rundir.HF_DS_CONFIG}", acc_path=f"{run.run_dir}/{rundir.HF_ACCELERATE}", **common)
    return files


def _auto_paths(node, path: tuple = ()):
    items = node.items() if isinstance(node, dict) else ()
    for key, value in items:
        if value == "auto":
            yield path + (key,)
        else:
            yield from _auto_paths(value, path + (key,))
