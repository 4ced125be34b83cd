"""A local Hugging Face decoder as the training program's model: what the run directory says about it
(plan.json's "hf_model", model/config.json, the planned shape) and what the program can do with it.

Torch-free, like config.py, so `shardplan launch` runs the same checks before it starts any process;
hf_model.py builds the transformers model from it.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from shardplan.launch import rundir
from shardplan.planner.layout import Layout

# DeepSpeed AutoTP partition presets (deepspeed/module_inject/autotp_config.py AutoTPPresets) per model_type:
# llama's q/k/v/o, gate/up/down names also fit mistral, qwen3, gemma, granite, smollm3; qwen2 and phi3 have
# their own. transformers' GPT-2 projects with Conv1D, which AutoTP does not shard (it replaces nn.Linear).
AUTOTP_PRESET = {"llama": "llama", "mistral": "llama", "ministral": "llama", "qwen3": "llama", "gemma": "llama",
                 "granite": "llama", "smollm3": "llama", "qwen2": "qwen2", "phi3": "phi3"}


@dataclass(frozen=True)
class HFModelConfig:
    """The planned shape (plan.json best.model) of a model transformers builds from model/config.json."""

    config_dir: Path             # the run directory's model/ (config.json): from_config reads it
    source: str                  # the model directory given to --model: from_pretrained reads weights there
    weights: bool                # whether that directory held weights at render time
    model_type: str
    n_layers: int
    hidden: int
    n_heads: int
    n_kv_heads: int
    ffn_hidden: int
    vocab: int
    max_seq_len: int
    checkpointing: str = "none"  # none | full | selective (both recompute whole decoder layers in transformers)
    is_hf: bool = field(default=True, repr=False)

    @classmethod
    def from_plan(cls, run_dir: Path, record: dict, m: dict, layout: Layout) -> "HFModelConfig":
        config_file = Path(run_dir) / rundir.MODEL_CONFIG
        try:
            model_type = json.loads(config_file.read_text()).get("model_type", "")
        except (OSError, ValueError) as e:
            raise ValueError(f"{config_file}: cannot read the model's config.json ({e}); re-render the run "
                             "directory with --model <the model directory>") from None
        if layout.pp > 1:
            raise ValueError(f"pp ({layout.pp}) with a Hugging Face model: pipeline parallelism needs the model cut "
                             "into a DeepSpeed PipelineModule, which a transformers model is not; re-plan with --pp 1 "
                             "(ZeRO-3 and tensor parallel split it instead)")
        if layout.sequence_parallel:
            raise ValueError(f"sequence_parallel with a Hugging Face model ({model_type}): the program runs Megatron "
                             "sequence parallelism on its own GPT-2's Megatron layers only; re-plan with --no-sp")
        if layout.tp > 1 and model_type not in AUTOTP_PRESET:
            raise ValueError(f"tp ({layout.tp}) with model_type {model_type!r}: DeepSpeed AutoTP has no partition "
                             f"preset for it here (supported: {', '.join(sorted(AUTOTP_PRESET))}); re-plan with --tp 1")
        return cls(config_dir=config_file.parent, source=str(record.get("source", "")),
                   weights=bool(record.get("weights")), model_type=model_type, n_layers=m["n_layers"],
                   hidden=m["hidden"], n_heads=m["n_heads"], n_kv_heads=m.get("n_kv_heads", m["n_heads"]),
                   ffn_hidden=m["ffn_hidden"], vocab=m["vocab"], max_seq_len=m["max_seq_len"],
                   checkpointing=layout.checkpointing)

    def shape_dict(self) -> dict:
        """The facts a checkpoint must share with the run resuming it."""
        return {"model_type": self.model_type, "n_layers": self.n_layers, "hidden": self.hidden,
                "n_heads": self.n_heads, "n_kv_heads": self.n_kv_heads, "ffn_hidden": self.ffn_hidden,
                "vocab": self.vocab, "max_seq_len": self.max_seq_len}

    def tensor_parallel(self, section: dict) -> None:
        """ds_config's tensor_parallel for AutoTP on this model: DeepSpeed's preset for its family."""
        section.pop("partition_config", None)   # shardplan's GPT-2 names are not this model's
        section["preset_model"] = AUTOTP_PRESET[self.model_type]
