"""Who fills each Hugging Face "auto" value of a DeepSpeed config, and from what: the Trainer
(transformers/integrations/deepspeed.py, HfTrainerDeepSpeedConfig.trainer_config_process/_finalize) and
accelerate without the Trainer (accelerate/accelerator.py, Accelerator._prepare_deepspeed; DeepSpeedPlugin).

One table, read by `validate` (to explain an "auto") and by render's hf/README.md (to say what the Trainer
will put there). Checked against transformers 5.x and accelerate 1.x; tests/test_render_hf.py lets the
Trainer fill a rendered config and compares the numbers.
"""
from __future__ import annotations

NOT_FILLED = "not filled: replace \"auto\" with a value"
_HIDDEN = "model.config.hidden_size"

# dotted key -> (the Trainer fills it from ..., accelerate without the Trainer fills it from ...)
FILLERS: dict[str, tuple[str, str]] = {
    "train_micro_batch_size_per_gpu": ("TrainingArguments.per_device_train_batch_size",
                                       "the batch_size of the DataLoader given to accelerator.prepare()"),
    "gradient_accumulation_steps": ("TrainingArguments.gradient_accumulation_steps",
                                    "Accelerator(gradient_accumulation_steps=...) (default 1)"),
    "train_batch_size": ("world size × per_device_train_batch_size × gradient_accumulation_steps",
                         "DataLoader batch_size × gradient_accumulation_steps × number of processes"),
    "gradient_clipping": ("TrainingArguments.max_grad_norm", "1.0 (accelerate's default)"),
    "optimizer.params.lr": ("TrainingArguments.learning_rate", "DummyOptim(lr=...)"),
    "optimizer.params.betas": ("[TrainingArguments.adam_beta1, adam_beta2]", NOT_FILLED),
    "optimizer.params.eps": ("TrainingArguments.adam_epsilon", NOT_FILLED),
    "optimizer.params.weight_decay": ("TrainingArguments.weight_decay", "DummyOptim(weight_decay=...)"),
    "scheduler.params.warmup_min_lr": ("0", "0"),
    "scheduler.params.warmup_max_lr": ("TrainingArguments.learning_rate", "the optimizer's lr"),
    "scheduler.params.warmup_num_steps": ("TrainingArguments.warmup_steps (or warmup ratio × total steps)",
                                          "DummyScheduler(warmup_num_steps=...)"),
    "scheduler.params.total_num_steps": ("TrainingArguments.max_steps (or epochs × steps per epoch)",
                                         "DummyScheduler(total_num_steps=...) / number of processes"),
    "fp16.enabled": ("TrainingArguments.fp16", "mixed_precision == \"fp16\" (accelerate config or --mixed_precision)"),
    "bf16.enabled": ("TrainingArguments.bf16", "mixed_precision == \"bf16\" (accelerate config or --mixed_precision)"),
    "zero_optimization.reduce_bucket_size": (f"{_HIDDEN}²", f"{_HIDDEN}²"),
    "zero_optimization.stage3_prefetch_bucket_size": (f"0.9 × {_HIDDEN}² (ZeRO-3 only)",
                                                      f"0.9 × {_HIDDEN}²"),
    "zero_optimization.stage3_param_persistence_threshold": (f"10 × {_HIDDEN} (ZeRO-3 only)", f"10 × {_HIDDEN}"),
    "zero_optimization.stage": ("the accelerate plugin's zero_stage", "zero_stage of the accelerate config"),
    "zero_optimization.offload_optimizer.device": ("the accelerate plugin's offload_optimizer_device",
                                                   "offload_optimizer_device of the accelerate config"),
    "zero_optimization.offload_param.device": ("the accelerate plugin's offload_param_device",
                                               "offload_param_device of the accelerate config"),
    "zero_optimization.stage3_gather_16bit_weights_on_model_save": (
        "the accelerate plugin's zero3_save_16bit_model", "zero3_save_16bit_model of the accelerate config"),
}


def dotted(path: tuple) -> str:
    """("optimizer", "params", "betas", 0) -> "optimizer.params.betas" (a list item is its list's key)."""
    return ".".join(str(p) for p in path if not isinstance(p, int))


def fillers(path: tuple) -> tuple[str, str] | None:
    """(Trainer's source, accelerate's source) for the "auto" at `path`, or None when neither fills it."""
    return FILLERS.get(dotted(path))


def explain(path: tuple) -> str:
    """One clause: who fills this "auto" and from what."""
    found = fillers(path)
    if found is None:
        return f"{dotted(path)}: neither the Trainer nor accelerate fills it ({NOT_FILLED})"
    trainer, accelerate = found
    return f"{dotted(path)} — Trainer: {trainer}; accelerate: {accelerate}"
