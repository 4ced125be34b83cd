"""validate: schema, cross-field rules, DeepSpeed's own parser, the Python API and the `validate` command."""
from __future__ import annotations

import copy
import json
import subprocess
import sys

import pytest
from click.testing import CliRunner

from shardplan.cli import main
from shardplan.launch.validate import (ConfigFileError, Problem, load_schema, read_config_file, validate_config,
                                       validate_file)

GOOD = {
    "train_batch_size": 64,
    "train_micro_batch_size_per_gpu": 4,
    "gradient_accumulation_steps": 2,
    "bf16": {"enabled": True},
    "zero_optimization": {"stage": 2, "overlap_comm": True, "contiguous_gradients": True,
                          "reduce_bucket_size": 5e8, "allgather_bucket_size": 500000000},
    "optimizer": {"type": "AdamW", "params": {"lr": 3e-4, "betas": [0.9, 0.95], "eps": 1e-8, "weight_decay": 0.1}},
    "scheduler": {"type": "WarmupDecayLR", "params": {"warmup_num_steps": 100, "total_num_steps": 1000}},
    "gradient_clipping": 1.0,
    "steps_per_print": 10,
    "wall_clock_breakdown": False,
}


def with_(base: dict, **changes) -> dict:
    """A copy of base with dotted-path changes; the value None deletes the key."""
    out = copy.deepcopy(base)
    for dotted, value in changes.items():
        node = out
        *parents, last = dotted.split("__")
        for part in parents:
            node = node.setdefault(part, {})
        if value is None:
            node.pop(last, None)
        else:
            node[last] = value
    return out


def errors_at(result, path_part: str) -> list[Problem]:
    return [p for p in result.errors if path_part in p.path]


def test_schema_is_valid_draft_2020_12():
    from jsonschema import Draft202012Validator

    schema = load_schema()
    Draft202012Validator.check_schema(schema)
    assert schema["$schema"].endswith("2020-12/schema")
    assert "additionalProperties" not in schema  # DeepSpeed ignores unknown top-level keys


@pytest.mark.parametrize("world_size", [8, None])
def test_good_config_passes_all_three_layers(world_size):
    result = validate_config(GOOD, world_size=world_size)
    assert result.ok, [str(p) for p in result.problems]
    assert result.problems == ()
    assert result.deepspeed_checked
    assert result.world_size == 8  # 64 / (4 x 2), implied by the batch numbers when not given
    assert result.world_size_source == ("given" if world_size else "batch")


def test_layouts_shardplan_renders_pass():
    """The shapes render emits: tp via autotp_size, pp via pipeline.stages, ZeRO-3 with offload, fp16."""
    zero3 = with_(GOOD, zero_optimization={"stage": 3, "stage3_prefetch_bucket_size": 50000000,
                                           "stage3_max_live_parameters": 1e9,
                                           "offload_optimizer": {"device": "cpu", "pin_memory": True},
                                           "offload_param": {"device": "cpu", "pin_memory": True}})
    assert validate_config(zero3, world_size=8).ok
    fp16 = with_(GOOD, bf16=None, fp16={"enabled": True, "loss_scale": 0, "initial_scale_power": 16,
                                         "loss_scale_window": 1000, "hysteresis": 2, "min_loss_scale": 1})
    assert validate_config(fp16, world_size=8).ok
    tp_pp = with_(GOOD, train_batch_size=16, zero_optimization={"stage": 1},
                  tensor_parallel={"autotp_size": 2, "partition_config": {"use_default_specs": False, "layer_specs": [
                      {"patterns": [r".*\.c_attn\.weight$"], "partition_type": "column"},
                      {"patterns": [r".*\.c_proj\.weight$"], "partition_type": "row"}]}},
                  pipeline={"stages": 2, "partition": "parameters", "activation_checkpoint_interval": 1})
    result = validate_config(tp_pp, world_size=8, heads=12)
    assert result.ok, [str(p) for p in result.problems]
    assert (result.world_size, validate_config(tp_pp, heads=12).world_size) == (8, 8)


BAD = [
    # (config, world_size, tp, pp, heads, path that must be named, word the message must contain)
    (with_(GOOD, train_batch_size="64"), 8, 1, 1, None, "$.train_batch_size", "integer"),
    (with_(GOOD, train_batch_size=0), 8, 1, 1, None, "$.train_batch_size", "range"),
    (with_(GOOD, gradient_clipping=-1), 8, 1, 1, None, "$.gradient_clipping", "range"),
    (with_(GOOD, bf16__enabled="true"), 8, 1, 1, None, "$.bf16.enabled", "true or false"),
    (with_(GOOD, zero_optimization__stage=4), 8, 1, 1, None, "$.zero_optimization.stage", "range"),
    (with_(GOOD, zero_optimization__overlap_com=True), 8, 1, 1, None, "$.zero_optimization.overlap_com",
     "overlap_comm"),
    (with_(GOOD, zero_optimization__offload_optimizer={"device": "gpu"}), 8, 1, 1, None,
     "$.zero_optimization.offload_optimizer.device", "cpu"),
    (with_(GOOD, zero_optimization__offload_optimizer={"device": "cpu", "pinned": True}), 8, 1, 1, None,
     "$.zero_optimization.offload_optimizer.pinned", "pin_memory"),
    (with_(GOOD, fp16={"enabled": False, "opt_level": "O2"}), 8, 1, 1, None, "$.fp16.opt_level", "forbids"),
    (with_(GOOD, fp16={"enabled": True, "min_loss_scale": 0.5}), 8, 1, 1, None, "$.fp16.min_loss_scale", "integer"),
    (with_(GOOD, communication_data_type="int8"), 8, 1, 1, None, "$.communication_data_type", "fp16"),
    (with_(GOOD, tensor_parallel={"autotp_size": 2, "tp_size": 2}), 8, 1, 1, None, "$.tensor_parallel.tp_size",
     "forbids"),
    (with_(GOOD, compile={"disable": False, "backend": "inductor"}), 8, 1, 1, None, "$.compile.disable", "forbids"),
    # batch arithmetic: 64 != 4 x 2 x 16
    (GOOD, 16, 1, 1, None, "$.train_batch_size", "64 != train_micro_batch_size_per_gpu 4"),
    (with_(GOOD, gradient_accumulation_steps=None), 6, 1, 1, None, "$.train_batch_size", "multiple of"),
    (with_(GOOD, gradient_accumulation_steps=None, train_micro_batch_size_per_gpu=None, train_batch_size=4), 8, 1, 1,
     None, "$.train_batch_size", "micro-batch would be 0"),
    (with_(GOOD, train_batch_size=None, train_micro_batch_size_per_gpu=None), 8, 1, 1, None, "$.train_batch_size",
     "neither"),
    (GOOD, 8, 3, 1, None, "--world-size", "not divisible"),
    # precision
    (with_(GOOD, fp16={"enabled": True}), 8, 1, 1, None, "$.fp16.enabled", "bf16.enabled"),
    (with_(GOOD, bf16__bf16_optimizer_states=True), 8, 1, 1, None, "$.bf16.bf16_optimizer_states",
     "bf16_master_weights_and_grads"),
    # ZeRO versus pipeline and offload
    (with_(GOOD, train_batch_size=32, zero_optimization__stage=3), 8, 1, 2, None, "$.zero_optimization.stage",
     "pipeline"),
    (with_(GOOD, train_batch_size=32, pipeline={"stages": 2}), 8, 1, 1, None, "$.zero_optimization.stage",
     "pipeline"),
    (with_(GOOD, zero_optimization__offload_param={"device": "cpu"}), 8, 1, 1, None,
     "$.zero_optimization.offload_param", "stage 3"),
    (with_(GOOD, zero_optimization__offload_optimizer={"device": "cpu", "ratio": 0.3}), 8, 1, 1, None,
     "$.zero_optimization.offload_optimizer.ratio", "ZeRO stage 3"),
    (with_(GOOD, zero_optimization={"stage": 3, "offload_param": {"device": "nvme"}}), 8, 1, 1, None,
     "$.zero_optimization.offload_param.nvme_path", "nvme"),
    # tensor parallel
    (with_(GOOD, train_batch_size=32, tensor_parallel={"autotp_size": 2}), 8, 1, 1, 25,
     "$.tensor_parallel.autotp_size", "25 attention heads"),
    (with_(GOOD, train_batch_size=32, tensor_parallel={"autotp_size": 2}), 8, 4, 1, None,
     "$.tensor_parallel.autotp_size", "--tp 4"),
    # Hugging Face placeholders and removed features
    (with_(GOOD, train_micro_batch_size_per_gpu="auto"), 8, 1, 1, None, "$.train_micro_batch_size_per_gpu",
     "will not run under DeepSpeed alone"),
    (with_(GOOD, optimizer__params__lr="auto"), 8, 1, 1, None, "$.optimizer.params.lr", "Hugging Face"),
    (with_(GOOD, amp={"enabled": True, "opt_level": "O1"}), 8, 1, 1, None, "$.amp", "removed"),
    (with_(GOOD, curriculum_learning={"enabled": True}), 8, 1, 1, None, "$.curriculum_learning",
     "data_efficiency.data_sampling.curriculum_learning"),
    (with_(GOOD, progressive_layer_drop={"enabled": True}), 8, 1, 1, None, "$.progressive_layer_drop", "0.19.8"),
    (with_(GOOD, compression_training={}), 8, 1, 1, None, "$.compression_training", "removed"),
    (with_(GOOD, zero_optimization__mics_shard_size=8), 8, 1, 1, None, "$.zero_optimization.mics_shard_size",
     "MiCS"),
    # what the config parser accepts but deepspeed.initialize refuses (engine.py _configure_optimizer)
    (with_(GOOD, optimizer__type="OneBitAdam"), 8, 1, 1, None, "$.optimizer.type", "1-bit Adam was removed"),
    (with_(GOOD, optimizer__type="adamw8bit"), 8, 1, 1, None, "$.optimizer.type", "'AdamW'"),
    (with_(GOOD, optimizer__params__max_grad_norm=1.0), 8, 1, 1, None, "$.optimizer.params.max_grad_norm",
     "gradient_clipping"),
    (with_(GOOD, scheduler__type="WarmupCosine"), 8, 1, 1, None, "$.scheduler.type", "'WarmupCosineLR'"),
]


@pytest.mark.parametrize("config, world_size, tp, pp, heads, path, word", BAD,
                         ids=[f"{i}-{case[5]}" for i, case in enumerate(BAD)])
def test_bad_config_is_rejected_naming_the_key(config, world_size, tp, pp, heads, path, word):
    result = validate_config(config, world_size=world_size, tp=tp, pp=pp, heads=heads)
    assert not result.ok
    named = [p for p in result.errors if p.path == path]
    assert named, f"no error at {path}: {[str(p) for p in result.problems]}"
    assert any(word in p.message + " " + p.fix for p in named), [str(p) for p in named]
    assert all(p.fix for p in result.problems)


@pytest.mark.parametrize("config, world_size, tp, pp, heads, path, word", BAD[:3] + BAD[13:16] + BAD[18:25])
def test_rejected_without_deepspeed_too(config, world_size, tp, pp, heads, path, word):
    result = validate_config(config, world_size=world_size, tp=tp, pp=pp, heads=heads, use_deepspeed=False)
    assert any(p.path == path for p in result.errors)
    assert not result.deepspeed_checked


def test_deepspeed_reports_what_only_it_knows():
    """compute_grad_norm=false with ZeRO-3 is refused by a pydantic validator the schema cannot express."""
    config = with_(GOOD, zero_optimization={"stage": 3, "compute_grad_norm": False})
    result = validate_config(config, world_size=8)
    from_ds = [p for p in result.errors if p.source == "deepspeed"]
    assert from_ds and from_ds[0].path == "$.zero_optimization"
    assert "compute_grad_norm" in from_ds[0].message
    assert validate_config(config, world_size=8, use_deepspeed=False).ok


def test_deepspeed_does_not_repeat_what_the_rules_said():
    result = validate_config(with_(GOOD, fp16={"enabled": True}), world_size=16)
    assert [p.source for p in result.errors] == ["rules", "rules"]  # batch + precision, not DeepSpeed's asserts
    assert result.deepspeed_checked


def test_warnings_do_not_fail_and_name_close_keys():
    config = with_(GOOD, zero_optimisation={"stage": 3}, activation_checkpointing={"partition_activation": True},
                   zero_optimization__cpu_offload=True, _comment="tuned for 8 GPUs")
    result = validate_config(config, world_size=8)
    assert result.ok and not result.ok_strict()
    by_path = {p.path: p for p in result.warnings}
    assert "zero_optimization" in by_path["$.zero_optimisation"].fix
    assert "partition_activations" in by_path["$.activation_checkpointing.partition_activation"].fix
    assert "offload_optimizer" in by_path["$.zero_optimization.cpu_offload"].fix
    assert "comment" in by_path["$._comment"].message


def test_zero_stage_0_keys_and_allow_auto_are_warnings():
    stage0 = with_(GOOD, zero_optimization={"stage": 0, "offload_param": {"device": "cpu"}, "reduce_bucket_size": 5})
    result = validate_config(stage0, world_size=8)
    assert result.ok and "offload_param" in result.warnings[0].message
    hf = with_(GOOD, train_batch_size="auto", gradient_accumulation_steps="auto", fp16={"enabled": "auto"})
    strict, lenient = validate_config(hf, world_size=8), validate_config(hf, world_size=8, allow_auto=True)
    assert not strict.ok and lenient.ok
    assert {p.path for p in lenient.warnings} == {"$.train_batch_size", "$.gradient_accumulation_steps",
                                                  "$.fp16.enabled"}
    assert not any("neither" in p.message for p in strict.problems)  # the batch rule stays quiet on "auto"


def test_auto_inside_lists_is_reported_once_per_list():
    config = with_(GOOD, optimizer__params__betas=["auto", "auto"], optimizer__params__lr="auto")
    result = validate_config(config, world_size=8)
    assert {p.path for p in result.errors} == {"$.optimizer.params.lr", "$.optimizer.params.betas"}
    assert '"auto" in [0], [1]' in next(p.message for p in result.errors if p.path.endswith("betas"))
    assert config["optimizer"]["params"]["betas"] == ["auto", "auto"]  # the caller's dict is left alone


def test_native_deepspeed_auto_is_not_a_placeholder():
    config = with_(GOOD, zero_optimization__stage=1, pipeline={"stages": "auto"})
    assert validate_config(config, world_size=8).problems == ()


def test_non_object_config_and_bad_arguments():
    assert validate_config([1, 2]).errors[0].path == "$"
    with pytest.raises(ValueError, match="tp=0"):
        validate_config(GOOD, tp=0)


def test_problem_and_result_serialise():
    result = validate_config(with_(GOOD, fp16={"enabled": True}), world_size=8)
    data = json.loads(json.dumps(result.to_dict()))
    assert data["ok"] is False and data["errors"] == 1
    assert set(data["problems"][0]) == {"path", "message", "fix", "severity", "source"}
    with pytest.raises(ValueError, match="severity"):
        Problem("$", "m", "f", severity="fatal")


def test_read_config_file_errors_name_file_line_and_column(tmp_path):
    bad = tmp_path / "ds.json"
    bad.write_text('{\n  "train_batch_size": 8,\n}\n')
    with pytest.raises(ConfigFileError, match=r"ds.json: not valid JSON: .* line 3, column 1"):
        read_config_file(bad)
    with pytest.raises(ConfigFileError, match="no such file"):
        read_config_file(tmp_path / "missing.json")
    assert "not valid JSON" in validate_file(bad).errors[0].message
    dup = tmp_path / "dup.json"
    dup.write_text('{"train_batch_size": 8, "bf16": {"enabled": true, "enabled": false}}')
    assert any(p.path == "$.bf16.enabled" and p.source == "json" for p in validate_file(dup).errors)


def test_without_deepspeed_installed_schema_and_rules_still_run():
    """A fresh interpreter where `import deepspeed` fails (as on a machine without it)."""
    code = ("import sys; sys.modules['deepspeed'] = None\n"
            "from shardplan.launch.validate import validate_config\n"
            f"r = validate_config({GOOD!r}, world_size=16)\n"
            "print(r.ok, r.deepspeed_checked, r.notes[0], r.errors[0].path)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip() == ("False False DeepSpeed not installed: its own check skipped (schema and rules "
                                  "only) $.train_batch_size")


def _run(args):
    return CliRunner().invoke(main, ["validate", *args])


def test_cli_exit_codes_and_messages(tmp_path):
    good, bad, broken = tmp_path / "good.json", tmp_path / "bad.json", tmp_path / "broken.json"
    good.write_text(json.dumps(GOOD))
    bad.write_text(json.dumps(with_(GOOD, fp16={"enabled": True})))
    broken.write_text("{'train_batch_size': 8}")
    ok = _run([str(good), "--world-size", "8"])
    assert ok.exit_code == 0 and "OK" in ok.output
    failed = _run([str(bad), "--world-size", "8"])
    assert failed.exit_code == 1
    assert "$.fp16.enabled" in failed.output and "fix:" in failed.output
    usage = _run([str(broken)])
    assert usage.exit_code == 2 and "broken.json: not valid JSON" in usage.output and "line 1, column 2" in usage.output
    assert _run([str(tmp_path / "nope.json")]).exit_code == 2
    assert _run([str(good), "--tp", "0"]).exit_code == 2


def test_cli_strict_and_json(tmp_path):
    warned = tmp_path / "warned.json"
    warned.write_text(json.dumps(with_(GOOD, zero_optimisation={"stage": 3})))
    assert _run([str(warned), "--no-deepspeed"]).exit_code == 0
    strict = _run([str(warned), "--strict", "--json", "--no-deepspeed"])
    assert strict.exit_code == 1
    [report] = json.loads(strict.stdout)
    assert report["ok"] is True and report["passed"] is False and report["warnings"] == 1
    assert report["problems"][0]["fix"] == "did you mean 'zero_optimization'?"


def test_cli_json_stdout_is_pure_json_with_deepspeed(tmp_path):
    """DeepSpeed prints to stdout when imported; the report on stdout must still parse."""
    path = tmp_path / "ds.json"
    path.write_text(json.dumps(GOOD))
    code = ("import sys; from shardplan.cli import main\n"
            f"sys.argv = ['shardplan', 'validate', {str(path)!r}, '--json']\nmain()")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)[0]["deepspeed_checked"] is True


def test_schema_matches_deepspeeds_config_classes():
    """Every closed object in the schema lists exactly the fields (and aliases) of DeepSpeed's pydantic model:
    the schema neither refuses a key DeepSpeed takes nor misses one it added."""
    pytest.importorskip("deepspeed")
    from deepspeed.comm.config import CommsLoggerConfig
    from deepspeed.compile.config import CompileConfig
    from deepspeed.monitor.config import CometConfig, CSVConfig, TensorBoardConfig, WandbConfig
    from deepspeed.runtime.config import HybridEngineConfig
    from deepspeed.runtime.precision_config import DeepSpeedBF16Config, DeepSpeedFP16Config
    from deepspeed.runtime.tensor_parallel.config import TPConfig, TPTrainingConfig
    from deepspeed.runtime.zero.config import DeepSpeedZeroConfig
    from deepspeed.runtime.zero.leaf_module_config import DeepSpeedZeroLeafModuleConfig
    from deepspeed.runtime.zero.offload_config import (DeepSpeedZeroOffloadOptimizerConfig,
                                                        DeepSpeedZeroOffloadParamConfig)
    from deepspeed.runtime.zenflow.zenflow_config import ZenFlowConfig
    from deepspeed.utils.config import DeepSpeedThroughputTimerConfig

    props = load_schema()["properties"]
    zero = props["zero_optimization"]["anyOf"][0]

    def nullable_object(schema):
        return next(s for s in schema["anyOf"] if s.get("type") == "object") if "anyOf" in schema else schema

    pairs = {
        "zero_optimization": (zero, DeepSpeedZeroConfig),
        "offload_param": (nullable_object(zero["properties"]["offload_param"]), DeepSpeedZeroOffloadParamConfig),
        "offload_optimizer": (nullable_object(zero["properties"]["offload_optimizer"]),
                              DeepSpeedZeroOffloadOptimizerConfig),
        "zenflow": (nullable_object(zero["properties"]["zenflow"]), ZenFlowConfig),
        "leaf_module": (zero["properties"]["leaf_module"], DeepSpeedZeroLeafModuleConfig),
        "fp16": (props["fp16"], DeepSpeedFP16Config), "bf16": (props["bf16"], DeepSpeedBF16Config),
        "tensor_parallel": (props["tensor_parallel"], TPTrainingConfig),
        "tensor_parallel.tp": (props["tensor_parallel"]["properties"]["tp"], TPConfig),
        "compile": (props["compile"], CompileConfig), "comms_logger": (props["comms_logger"], CommsLoggerConfig),
        "tensorboard": (props["tensorboard"], TensorBoardConfig), "wandb": (props["wandb"], WandbConfig),
        "csv_monitor": (props["csv_monitor"], CSVConfig), "comet": (props["comet"], CometConfig),
        "hybrid_engine": (props["hybrid_engine"], HybridEngineConfig),
        "timers.throughput": (props["timers"]["properties"]["throughput"], DeepSpeedThroughputTimerConfig),
    }
    removed_zero_keys = {"mics_shard_size", "mics_hierarchical_params_gather", "zeropp_loco_param"}
    for name, (schema, model) in pairs.items():
        assert schema.get("additionalProperties") is False, name
        accepted = set(model.model_fields) | {f.alias for f in model.model_fields.values() if f.alias}
        assert set(schema["properties"]) - removed_zero_keys == accepted, name


def test_optimizer_and_scheduler_names_match_what_deepspeed_initialize_accepts():
    """The rule's name lists against DeepSpeed's own engine predicate (engine.py _is_supported_optimizer) and
    scheduler lookup (lr_schedules, then torch.optim.lr_scheduler), without building an engine."""
    pytest.importorskip("deepspeed")
    import torch
    from deepspeed.runtime import config as ds_config, lr_schedules
    from deepspeed.runtime.engine import DeepSpeedEngine

    from shardplan.launch.validate import rules

    assert tuple(ds_config.DEEPSPEED_OPTIMIZERS) == rules.DEEPSPEED_OPTIMIZERS
    engine_accepts = lambda name: DeepSpeedEngine._is_supported_optimizer(None, name)  # noqa: E731 (self unused)
    for name in ("Adam", "ADAMW", "lamb", "SGD", "Adafactor", "OneBitAdam", "OnebitAdam", "ZeroOneAdam", "sgd", "x"):
        flagged = any(p.path == "$.optimizer.type" for p in rules.optimizer_rules({"optimizer": {"type": name}}))
        assert flagged == (not engine_accepts(name.lower() if name.lower() in rules.DEEPSPEED_OPTIMIZERS else name))
    for name in rules.TORCH_OPTIMIZERS:
        assert engine_accepts(name), name
    for name in rules.DEEPSPEED_SCHEDULERS + rules.TORCH_SCHEDULERS + ("warmupLR", "Cosine"):
        known = hasattr(lr_schedules, name) or hasattr(torch.optim.lr_scheduler, name)
        assert bool(rules.optimizer_rules({"scheduler": {"type": name}})) == (not known), name


def test_cli_run_directory_takes_sizes_from_plan_json(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "ds_config.json").write_text(json.dumps(GOOD))  # 64 = 4 x 2 x dp 8
    plan = {"best": {"layout": {"dp": 8, "tp": 1, "pp": 1}, "model": {"n_heads": 12}}, "command": "shardplan render"}
    (run / "plan.json").write_text(json.dumps(plan))
    assert _run([str(run), "--no-deepspeed"]).exit_code == 0
    plan["best"]["layout"]["dp"] = 4  # the plan says 4 GPUs: the batch numbers no longer add up
    (run / "plan.json").write_text(json.dumps(plan))
    result = _run([str(run), "--no-deepspeed", "--json"])
    assert result.exit_code == 1
    [report] = json.loads(result.stdout)
    assert report["world_size"] == 4 and report["problems"][0]["path"] == "$.train_batch_size"
    assert _run([str(run), "--no-deepspeed", "--world-size", "8"]).exit_code == 0  # the option wins
    (run / "plan.json").write_text("{}")
    assert "not a shardplan plan.json" in _run([str(run)]).output
