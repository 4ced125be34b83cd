"""Build a local Hugging Face causal LM for the training program: from_config (random init, seeded) or
from_pretrained when the model directory holds weights — local files only, never a download — with the
training program's calling convention, model(tokens, targets) -> mean next-token loss.

The engine, data, metrics, checkpoints and resume are the GPT-2 program's (parallel.py, loop.py).
"""
from __future__ import annotations

from pathlib import Path

import torch

from shardplan.planner.model import ModelSpec

from .config import RunConfigError
from .hf_spec import HFModelConfig
from .model import lm_loss

_CLASSES: dict[type, type] = {}


def _with_token_loss(cls: type) -> type:
    """A subclass whose forward is (input_ids, targets) -> loss (fp32 cross-entropy, as the GPT-2 program),
    keeping the class name and its tensor-parallel plan (DeepSpeed AutoTP reads both)."""
    if cls not in _CLASSES:
        def forward(self, input_ids, targets=None):
            logits = cls.forward(self, input_ids=input_ids, use_cache=False).logits
            return logits if targets is None else lm_loss(logits, targets)

        _CLASSES[cls] = type(cls.__name__, (cls,), {"forward": forward, "__module__": cls.__module__})
    return _CLASSES[cls]


def build_hf_model(spec: HFModelConfig, model_dict: dict, seed: int) -> torch.nn.Module:
    import transformers
    from transformers import AutoConfig, AutoModelForCausalLM

    transformers.logging.set_verbosity_error()
    config = AutoConfig.from_pretrained(str(spec.config_dir), local_files_only=True)
    config.use_cache = False
    if spec.weights and Path(spec.source).is_dir():
        model = AutoModelForCausalLM.from_pretrained(spec.source, config=config, local_files_only=True,
                                                     dtype=torch.float32)
    else:
        torch.manual_seed(seed)   # every rank (and any world size) starts from the same weights
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    planned = ModelSpec.from_dict(model_dict).params
    built = sum(p.numel() for p in model.parameters())
    if built != planned:
        raise RunConfigError(f"{spec.config_dir}/config.json builds a {built:,}-parameter model but plan.json's "
                             f"model has {planned:,}; re-render the run directory from the model directory "
                             "without shape overrides (--layers, --hidden, ...)")
    if spec.checkpointing != "none":
        # transformers recomputes whole decoder layers; it has no attention-only ("selective") variant.
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.__class__ = _with_token_loss(type(model))
    model.train()
    return model
