"""render's hf/ files, checked by the libraries that consume them: transformers' TrainingArguments and
HfTrainerDeepSpeedConfig fill the "auto" values to the plan's numbers with no mismatch, HfArgumentParser reads
the command-line flags to the same arguments, accelerate's config loader and launch path read the YAML.
Also: validate explains each "auto", and a local HF model is recorded for the training program."""
import json
import os
from pathlib import Path

import pytest

from shardplan.launch import rundir
from shardplan.launch.render.artifacts import RenderOptions, render
from shardplan.launch.render.ds_config import Schedule
from shardplan.launch.render.hf import hf_model_record
from shardplan.launch.validate import validate_config
from shardplan.planner import Layout, Training, evaluate, get_cluster, get_model

pytest.importorskip("accelerate")
PLAN = {"candidates": [], "evaluated": 1, "reasons": ["test"]}
CASES = {   # name: (model, cluster, precision, layout)
    "llama8b-2x8-tp2": ("llama-3-8b", "2x8xH100-80GB", "bf16",
                        dict(dp=8, tp=2, zero_stage=1, micro_batch=1, grad_accum=8)),
    "llama8b-z3-ckpt": ("llama-3-8b", "2x8xH100-80GB", "bf16",
                        dict(dp=16, zero_stage=3, micro_batch=2, grad_accum=4, checkpointing="full",
                             offload="optimizer")),
    "gpt2-fp16-sel": ("gpt2-large", "8xA100-80GB", "fp16",
                      dict(dp=8, zero_stage=2, micro_batch=2, grad_accum=2, checkpointing="selective")),
    "cpu-2proc-z2": ("gpt2-tiny", "2xCPU", "fp32", dict(dp=2, zero_stage=2, micro_batch=2, grad_accum=2)),
}
SCHEDULE = Schedule(steps=300, lr=3e-4)


def _render(tmp_path, model, cluster, precision, layout, **kw):
    m, c, lay = get_model(model), get_cluster(cluster), Layout(**layout)
    est = evaluate(m, c, lay, Training(seq_len=min(2048, m.max_seq_len), global_batch=lay.global_batch,
                                       precision=precision))
    result = render(kw.pop("plan", PLAN), est, RenderOptions(out=tmp_path / "run", schedule=SCHEDULE, python="python3",
                                                             **kw))
    return result.run_dir, est


@pytest.fixture(scope="module", params=sorted(CASES))
def rendered(request, tmp_path_factory):
    return (request.param,) + _render(tmp_path_factory.mktemp(request.param), *CASES[request.param])


def _training_args(run_dir: Path, **extra):
    from transformers import TrainingArguments

    kwargs = json.loads((run_dir / rundir.HF_TRAINING_ARGS).read_text())
    # use_cpu: this test machine has no GPU (bf16/fp16 TrainingArguments refuse a CPU-only setup otherwise)
    return TrainingArguments(output_dir=str(run_dir / "out"), deepspeed=str(run_dir / rundir.HF_DS_CONFIG),
                             use_cpu=True, report_to="none", **kwargs, **extra), kwargs


def _tiny_model():
    from transformers import LlamaConfig, LlamaForCausalLM

    return LlamaForCausalLM(LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                        num_attention_heads=4, num_key_value_heads=2, vocab_size=64))


def test_trainer_fills_every_auto_with_the_plans_numbers(rendered):
    name, run_dir, est = rendered
    lay = est.layout
    args, _ = _training_args(run_dir)
    hf = args.hf_deepspeed_config          # HfTrainerDeepSpeedConfig: trainer_config_process already ran
    hf.trainer_config_finalize(args, _tiny_model(), args.max_steps)   # raises on any mismatch
    cfg = hf.config
    assert '"auto"' not in json.dumps(cfg)
    assert cfg["train_micro_batch_size_per_gpu"] == lay.micro_batch
    assert cfg["gradient_accumulation_steps"] == lay.grad_accum
    if lay.tp == 1:   # the Trainer's world size × micro × accum; this test process is a world of one
        assert cfg["train_batch_size"] == args.world_size * lay.micro_batch * lay.grad_accum
    else:
        assert "train_batch_size" not in cfg
    opt = cfg["optimizer"]["params"]
    assert (opt["lr"], opt["betas"], opt["eps"], opt["weight_decay"]) == \
        (SCHEDULE.lr, list(SCHEDULE.betas), SCHEDULE.eps, SCHEDULE.weight_decay)
    assert cfg["gradient_clipping"] == SCHEDULE.gradient_clipping
    sched = cfg["scheduler"]["params"]
    assert (sched["total_num_steps"], sched["warmup_num_steps"]) == (SCHEDULE.steps, SCHEDULE.warmup_steps)
    assert cfg.get("bf16", {}).get("enabled", False) == (est.training.precision == "bf16")   # explicit, matched
    assert cfg.get("fp16", {}).get("enabled", False) == (est.training.precision == "fp16")
    main = json.loads((run_dir / rundir.DS_CONFIG).read_text())
    assert cfg["zero_optimization"] == main["zero_optimization"]     # buckets, stage, offload: the plan's
    assert args.gradient_checkpointing == (lay.checkpointing != "none")
    # The filled config is the run's own DeepSpeed config again (except the batch size it derives itself).
    for key in ("train_micro_batch_size_per_gpu", "gradient_accumulation_steps", "gradient_clipping", "optimizer"):
        assert cfg[key] == main[key], key
    assert cfg["scheduler"] == main["scheduler"]


def test_a_number_that_disagrees_is_caught_by_the_trainer(tmp_path):
    """The check above is live: the Trainer refuses an explicit value that differs from TrainingArguments."""
    run_dir, _ = _render(tmp_path, *CASES["gpt2-fp16-sel"])
    path = run_dir / rundir.HF_DS_CONFIG
    cfg = json.loads(path.read_text())
    cfg["gradient_accumulation_steps"] = 3
    path.write_text(json.dumps(cfg))
    args, _ = _training_args(run_dir)
    with pytest.raises(ValueError, match="gradient_accumulation_steps"):
        args.hf_deepspeed_config.trainer_config_finalize(args, _tiny_model(), args.max_steps)


def test_command_line_flags_give_the_same_training_arguments(rendered):
    from transformers import HfArgumentParser, TrainingArguments

    from shardplan.launch.commands import shell_join
    from shardplan.launch.render.hf import cli_flags

    _, run_dir, _ = rendered
    args, kwargs = _training_args(run_dir)
    flags = cli_flags(kwargs)
    assert shell_join(flags) in (run_dir / rundir.HF_README).read_text()   # the flags the README shows
    (parsed,) = HfArgumentParser(TrainingArguments).parse_args_into_dataclasses(
        args=["--output_dir", str(run_dir / "out"), "--deepspeed", str(run_dir / rundir.HF_DS_CONFIG), "--use_cpu",
              "--report_to", "none", *flags])
    for key in kwargs:
        assert getattr(parsed, key) == getattr(args, key), key


def test_accelerate_reads_the_config_and_launches_deepspeed(rendered, monkeypatch):
    from accelerate.commands.config.config_args import load_config_from_file
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser
    from accelerate.utils import DistributedType
    from accelerate.utils.launch import prepare_deepspeed_cmd_env

    _, run_dir, est = rendered
    path = run_dir / rundir.HF_ACCELERATE
    cfg = load_config_from_file(str(path))
    assert cfg.distributed_type == DistributedType.DEEPSPEED
    assert (cfg.num_processes, cfg.num_machines) == (est.layout.world_size, est.cluster.nodes)
    assert Path(cfg.deepspeed_config["deepspeed_config_file"]) == run_dir / rundir.HF_DS_CONFIG
    assert cfg.deepspeed_config["zero3_init_flag"] == (est.layout.zero_stage == 3)
    assert cfg.mixed_precision is None   # accelerate refuses it beside a deepspeed_config_file
    argv = ["--config_file", str(path), "train.py"]
    if est.cluster.nodes > 1:
        argv[2:2] = ["--machine_rank", "1", "--main_process_ip", "10.0.0.1"]
    args, defaults, mp_from_config = _validate_launch_command(launch_command_parser().parse_args(argv))
    assert args.use_deepspeed and args.num_processes == est.layout.world_size
    if est.cluster.gpu.is_cpu:
        return   # accelerate's DeepSpeed launcher path needs a GPU launcher; the loader check above still ran
    # as accelerate's launch_command does before deepspeed_launcher
    args.deepspeed_fields_from_accelerate_config = ",".join(list(defaults.deepspeed_config) +
                                                            (["mixed_precision"] if mp_from_config else []))
    cmd, env = prepare_deepspeed_cmd_env(args)   # what `accelerate launch` would run
    assert env["ACCELERATE_DEEPSPEED_CONFIG_FILE"] == str(run_dir / rundir.HF_DS_CONFIG)
    from accelerate.utils import DeepSpeedPlugin   # the plugin accelerate builds from that environment
    for key, value in env.items():
        if key.startswith("ACCELERATE_"):
            monkeypatch.setenv(key, value)
    plugin = DeepSpeedPlugin()    # runs accelerate's checks of a deepspeed_config_file setup
    assert plugin.zero_stage == int(est.layout.zero_stage)
    assert plugin.gradient_accumulation_steps == "auto"   # filled later from Accelerator / TrainingArguments
    plugin.set_mixed_precision(env.get("ACCELERATE_MIXED_PRECISION", "no"))
    assert plugin.deepspeed_config.get(est.training.precision, {}).get("enabled", True) is True


def test_hf_ds_config_validates_as_an_hf_config_and_explains_each_auto(rendered):
    _, run_dir, est = rendered
    cfg = json.loads((run_dir / rundir.HF_DS_CONFIG).read_text())
    lay = est.layout
    lenient = validate_config(cfg, world_size=lay.world_size, tp=lay.tp, pp=lay.pp, allow_auto=True)
    assert lenient.ok, [str(p) for p in lenient.errors]
    strict = validate_config(cfg, world_size=lay.world_size, tp=lay.tp, pp=lay.pp)
    lr = next(p for p in strict.errors if p.path == "$.optimizer.params")
    assert "optimizer.params.lr — Trainer: TrainingArguments.learning_rate; accelerate: DummyOptim(lr=...)" in lr.message
    assert "not filled" not in lr.message   # what accelerate alone would not fill is a number already
    assert cfg["optimizer"]["params"]["eps"] == SCHEDULE.eps
    readme = (run_dir / rundir.HF_README).read_text()
    assert "- gradient_clipping — Trainer: TrainingArguments.max_grad_norm" in readme


def test_pipeline_plans_get_no_hf_files_and_say_why(tmp_path):
    run_dir, _ = _render(tmp_path, "gpt2-large", "4x8xH100-80GB", "bf16",
                         dict(dp=8, tp=2, pp=2, zero_stage=1, micro_batch=1, grad_accum=16))
    assert sorted(p.name for p in (run_dir / rundir.HF_DIR).iterdir()) == ["README.md"]
    assert "pipeline parallelism (pp 2)" in (run_dir / rundir.HF_README).read_text()


def test_a_local_hf_model_is_recorded_and_copied(tmp_path, monkeypatch):
    model_dir = tmp_path / "tiny-llama"
    _tiny_model().config.save_pretrained(model_dir)
    monkeypatch.chdir(tmp_path)
    assert hf_model_record("llama-3-8b") is None and hf_model_record("./no-such-dir") is None
    record = hf_model_record("./tiny-llama")
    assert record == {"source": str(model_dir.resolve()), "config": str((model_dir / "config.json").resolve()),
                      "weights": False}
    run_dir, _ = _render(tmp_path, str(model_dir), "2xCPU", "fp32", dict(dp=2, zero_stage=3, micro_batch=1),
                         plan={**PLAN, "hf_model": record})
    assert json.loads((run_dir / rundir.MODEL_CONFIG).read_text()) == json.loads((model_dir / "config.json").read_text())
    assert json.loads((run_dir / rundir.PLAN).read_text())["hf_model"] == record
    assert os.path.basename(record["source"]) in (run_dir / rundir.HF_README).read_text()
