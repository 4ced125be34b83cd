"""What one training run is: plan.json's model and layout, ds_config.json for the engine, checked against each other.

Torch-free, so `shardplan launch` can run the same checks before it starts any process.
"""
from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from pathlib import Path

from shardplan.launch import rundir
from shardplan.planner.layout import Layout
from .spec import GPTConfig, autotp_partition_config


class RunConfigError(ValueError):
    """A run directory whose files are missing or disagree: the message names both values and the fix."""


@dataclass(frozen=True)
class RunConfig:
    run_dir: Path
    model: GPTConfig
    model_dict: dict            # plan.json best.model (ModelSpec.to_dict), for FLOPs and checkpoint metadata
    layout: Layout              # plan.json best.layout: the planner's own type, so its validation applies here too
    seq_len: int
    precision: str
    ds_config: dict             # what is handed to deepspeed.initialize (see engine_config)
    compile: bool = False       # plan.json training.compile: render's choice (--compile/--no-compile override it)

    @property
    def method(self) -> str:
        """How the model is split: 'engine' (ZeRO / AutoTP on a plain module) or 'pipeline' (PipelineModule)."""
        return "pipeline" if self.layout.pp > 1 else "engine"

    def layout_dict(self) -> dict:
        """The facts a checkpoint must share with the run resuming it (same keys as before: old checkpoints match)."""
        lay = self.layout
        return {"dp": lay.dp, "tp": lay.tp, "pp": lay.pp, "zero_stage": int(lay.zero_stage),
                "micro_batch": lay.micro_batch, "grad_accum": lay.grad_accum, "seq_len": self.seq_len,
                **({"ep": lay.ep} if getattr(self.model, "experts", 0) else {}),
                **({"cp": lay.cp} if lay.cp > 1 else {})}

    def engine_config(self) -> dict:
        """ds_config for deepspeed.initialize: AutoTP only for plain tp with pp 1 (3D and SP use Megatron layers)."""
        cfg = copy.deepcopy(self.ds_config)
        if self.layout.pp > 1 or self.layout.sequence_parallel:
            cfg.pop("tensor_parallel", None)
            if self.layout.pp > 1 and self.layout.sequence_parallel:   # each tp rank sends its own tokens
                cfg.setdefault("pipeline", {}).update(pipe_partitioned=False, grad_partitioned=False)
        elif self.layout.tp > 1:
            tp_section = cfg.setdefault("tensor_parallel", {})
            if getattr(self.model, "is_hf", False):
                self.model.tensor_parallel(tp_section)
            else:
                tp_section.setdefault("partition_config", autotp_partition_config())
        return cfg


def _disagree(name: str, ds_value, plan_value, fix: str = "re-render the run directory from the plan") -> None:
    if ds_value != plan_value:
        raise RunConfigError(f"ds_config.json {name} ({ds_value}) disagrees with plan.json ({plan_value}); {fix}")


def load_run_config(run_dir: Path, world_size: int) -> RunConfig:
    run_dir = Path(run_dir)
    try:
        plan = rundir.read_plan(run_dir, need=("model", "layout", "training"))
        ds = rundir.read_json(run_dir / rundir.DS_CONFIG)
        layout = rundir.plan_layout(plan, run_dir)
    except rundir.RunDirError as e:
        raise RunConfigError(str(e)) from None
    model_dict, training = plan["best"]["model"], plan["best"]["training"]
    record = rundir.hf_model(plan)   # --model was a local Hugging Face model: transformers builds it (hf_model.py)
    try:
        if record is not None:
            from .hf_spec import HFModelConfig
            model = HFModelConfig.from_plan(run_dir, record, model_dict, layout)
        else:
            model = GPTConfig.from_model_dict(model_dict, layout.checkpointing, layout.ep)
    except ValueError as e:
        raise RunConfigError(str(e)) from None
    run = RunConfig(run_dir=run_dir, model=model, model_dict=model_dict, layout=layout,
                    seq_len=training["seq_len"], precision=training.get("precision", "fp32"), ds_config=ds,
                    compile=bool(training.get("compile", False)))
    _check(run, ds, world_size, training)
    return run


def _check(run: RunConfig, ds: dict, world_size: int, training: dict) -> None:
    """What Layout cannot know by itself: the model's shape, the process count and ds_config.json."""
    m, lay = run.model, run.layout
    if getattr(m, "experts", 0) or lay.ep > 1:
        _check_moe(m, lay, run.model_dict.get("name"))
    if run.seq_len > m.max_seq_len:
        raise RunConfigError(f"plan seq_len ({run.seq_len}) exceeds the model's max_seq_len ({m.max_seq_len}); "
                             "plan a shorter --seq-len")
    if world_size != lay.world_size:
        names, sizes = ("dp*tp*pp*cp", (lay.dp, lay.tp, lay.pp, lay.cp)) if lay.cp > 1 else \
            ("dp*tp*pp", (lay.dp, lay.tp, lay.pp))
        raise RunConfigError(f"launched with {world_size} processes but the plan's layout needs {names} = "
                             f"{'*'.join(map(str, sizes))} = {lay.world_size}; launch with the run dir's launch.sh "
                             "or re-plan for this world size")
    if lay.cp > 1:
        _check_ulysses(run, ds)
    if lay.sequence_parallel:
        _check_sequence_parallel(lay, run.seq_len)
    if m.n_heads % lay.tp or m.ffn_hidden % lay.tp:
        raise RunConfigError(f"tp ({lay.tp}) must divide n_heads ({m.n_heads}) and ffn_hidden ({m.ffn_hidden})")
    if m.n_layers % lay.pp:
        raise RunConfigError(f"pp ({lay.pp}) must divide n_layers ({m.n_layers}) so every stage holds "
                             "the same number of blocks")
    _disagree("train_micro_batch_size_per_gpu", ds.get("train_micro_batch_size_per_gpu", lay.micro_batch),
              lay.micro_batch)
    _disagree("gradient_accumulation_steps", ds.get("gradient_accumulation_steps", lay.grad_accum), lay.grad_accum)
    _disagree("train_batch_size", ds.get("train_batch_size", lay.global_batch), lay.global_batch)
    if training.get("global_batch") not in (None, 0, lay.global_batch):
        raise RunConfigError(f"plan.json training.global_batch ({training['global_batch']}) is not "
                             f"micro*accum*dp ({lay.global_batch}); re-plan")
    _disagree("zero_optimization.stage", int(ds.get("zero_optimization", {}).get("stage", 0)), int(lay.zero_stage))
    autotp = int(ds.get("tensor_parallel", {}).get("autotp_size", 1) or 1)
    if lay.pp == 1 or autotp != 1:
        _disagree("tensor_parallel.autotp_size", autotp, lay.tp)
    stages = ds.get("pipeline", {}).get("stages", "auto")
    if isinstance(stages, int):
        _disagree("pipeline.stages", stages, lay.pp)
    precision = "bf16" if ds.get("bf16", {}).get("enabled") else "fp16" if ds.get("fp16", {}).get("enabled") \
        else "fp32"
    _disagree("precision (bf16/fp16 enabled)", precision, run.precision)


def _check_sequence_parallel(lay: Layout, seq_len: int) -> None:
    """Megatron sequence parallelism runs on the program's GPT-2 with Megatron layers (seqpar.py: pipe.py for
    pp > 1, sp_gpt.py for pp 1; hf_spec.py refuses it for a Hugging Face model)."""
    if seq_len % lay.tp:
        raise RunConfigError(f"sequence_parallel: seq_len ({seq_len}) must be a multiple of tp ({lay.tp}), each "
                             "tensor rank holds seq_len/tp tokens; plan another --seq-len or --tp")


def _check_ulysses(run: RunConfig, ds: dict) -> None:
    """DeepSpeed-Ulysses as the program runs it (ulysses.py): the GPT-2's attention over cp ranks, tp 1, pp 1."""
    m, lay = run.model, run.layout
    if lay.tp > 1 or lay.pp > 1:
        raise RunConfigError(f"cp ({lay.cp}) with tp ({lay.tp}) / pp ({lay.pp}): the program runs DeepSpeed-Ulysses "
                             "with data parallelism only (DeepSpeed's Ulysses groups have no tensor or pipeline "
                             "axis); plan --tp 1 --pp 1, or render --engine megatron")
    if getattr(m, "is_hf", False) or getattr(m, "experts", 0):
        raise RunConfigError(f"cp ({lay.cp}): the program runs DeepSpeed-Ulysses on its own dense GPT-2 only, not "
                             "on a Hugging Face or MoE model; plan --cp 1, or render --engine megatron")
    if m.n_heads % lay.cp or run.seq_len % lay.cp:
        raise RunConfigError(f"cp ({lay.cp}) must divide n_heads ({m.n_heads}) and seq_len ({run.seq_len}): each "
                             "rank holds seq_len/cp tokens and attends with n_heads/cp heads; plan another --cp")
    _disagree("sequence_parallel_size", ds.get("sequence_parallel_size", 1), lay.cp)


def _check_moe(m, lay: Layout, name) -> None:
    """DeepSpeed-MoE as the program runs it (launch/train/moe.py): experts split over ep | dp, ZeRO 0-2, no tp/pp."""
    if not getattr(m, "experts", 0):
        raise RunConfigError(f"ep ({lay.ep}) > 1 but {name} has no experts; plan --ep 1 or an MoE model")
    if m.experts % lay.ep:
        raise RunConfigError(f"ep ({lay.ep}) must divide experts ({m.experts}); plan --ep with a divisor of it")
    if lay.dp % lay.ep:
        raise RunConfigError(f"ep ({lay.ep}) must divide dp ({lay.dp}): DeepSpeed-MoE splits the data-parallel "
                             "group into expert-parallel groups; plan another --ep")
    if lay.tp > 1 or lay.pp > 1:
        raise RunConfigError(f"tp ({lay.tp}) / pp ({lay.pp}): the program's MoE GPT-2 runs data and expert "
                             "parallel only; plan --tp 1 --pp 1, or use Megatron-LM (render --engine megatron)")
    if int(lay.zero_stage) == 3:
        raise RunConfigError("zero_stage (3): DeepSpeed-MoE does not run with ZeRO-3; plan --zero 2 or lower")
