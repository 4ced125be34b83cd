"""The planner's inputs from option values (the command line's, or a --batch request line's): model,
cluster (--cluster auto asks this machine through launch/inventory), training, headroom and layout.

Shared by `plan`, `estimate`, `compare` and `render` (which plans too, or re-plans from a plan.json). Errors
are ValueErrors naming the value and the fix; the CLI turns them into one line and exit 2.
"""
from __future__ import annotations

import dataclasses
import re

from shardplan.planner import get_model
from shardplan.planner.cluster import OVERRIDES as CLUSTER_OVERRIDES
from shardplan.planner.estimate import Training
from shardplan.planner.layout import LAYOUT_FLAGS, Layout, flag_name
from shardplan.planner.model import ModelSpec
from shardplan.planner.presets import apply_overrides


MODEL_OVERRIDES = ("layers", "hidden", "heads", "kv_heads", "ffn_hidden", "vocab", "seq_len")
SUFFIX = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30}


def parse_tokens(text: str) -> int:
    """'4M' -> 4·2^20 tokens (K, M, G are powers of two, as in "a 4M-token batch"); plain integers too."""
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([KMG]?)\s*", str(text).upper())
    if not match:
        raise ValueError(f"global batch tokens({text!r}) must be a number with an optional K, M or G, e.g. 2M")
    return int(float(match.group(1)) * SUFFIX[match.group(2)])


def parse_headroom(text) -> float:
    """'10%', '10' or '0.1' -> 0.1: values of 1 or more are percentages."""
    raw = str(text).strip()
    try:
        value = float(raw.rstrip("%"))
    except ValueError:
        raise ValueError(f"headroom({text!r}) must be a fraction or a percentage, e.g. 0.1 or 10%") from None
    value = value / 100 if raw.endswith("%") or value >= 1 else value
    if not 0 <= value < 1:
        raise ValueError(f"headroom({text!r}) must be between 0% and 100%")
    return value


def parse_gb(name: str, text) -> float:
    """'80', '80GB' -> 80.0 (decimal GB; GiB also accepted)."""
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*(GB|GIB|G)?\s*", str(text).upper())
    if not match or float(match.group(1)) <= 0:
        raise ValueError(f"{name}({text!r}) must be a positive number of GB, e.g. 80 or 80GB")
    return float(match.group(1)) * (2**30 / 1e9 if match.group(2) == "GIB" else 1)


def load_model(name, overrides: dict):
    """A preset name, a HF config.json / model directory, or a plan.json "model" dict; with the overrides."""
    if isinstance(name, dict):
        return apply_overrides(ModelSpec.from_dict(name), **overrides)
    if not name:
        raise ValueError("no model: give --model with a preset name (e.g. gpt2-xl) or a config.json path")
    return get_model(name, **overrides)


def load_cluster(spec: str, overrides: dict):
    """The --cluster value (auto: this machine's inventory) with --gpu-memory/--intra-node-bw/--inter-node-bw."""
    from .inventory import get_cluster  # here: `plan --cluster 4x8xH100` need not load the hardware probes

    if not isinstance(spec, str) or not spec:
        raise ValueError(f"cluster({spec!r}) must be a spec such as 1xH200 or 4x8xH100-80GB, or auto")
    return get_cluster(spec).with_overrides(**cluster_overrides(overrides))


def cluster_overrides(overrides: dict) -> dict:
    """The cluster overrides as Cluster.with_overrides takes them: --gpu-memory may say "80GB"; None = unset."""
    given = {k: overrides.get(k) for k in CLUSTER_OVERRIDES}
    if given["gpu_memory"] is not None:
        given["gpu_memory"] = parse_gb("gpu_memory", given["gpu_memory"])
    for name in ("intra_node_bw", "inter_node_bw"):
        _positive(name, given[name])
    return given


def use_gpus(cluster, gpus: int):
    """The part of the cluster a job of `gpus` GPUs uses: whole nodes, or part of one node."""
    if gpus == cluster.world_size:
        return cluster
    if 1 <= gpus < cluster.gpus_per_node:
        return dataclasses.replace(cluster, nodes=1, gpus_per_node=gpus, hosts=cluster.hosts[:1])
    if gpus >= 1 and gpus % cluster.gpus_per_node == 0 and gpus <= cluster.world_size:
        nodes = gpus // cluster.gpus_per_node
        return dataclasses.replace(cluster, nodes=nodes, hosts=cluster.hosts[:nodes])
    raise ValueError(f"--gpus {gpus} must be at most the {cluster.world_size} GPUs of {cluster.spec} and either "
                     f"below {cluster.gpus_per_node} (part of one node) or a multiple of {cluster.gpus_per_node}")


def _positive(name: str, value) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0):
        raise ValueError(f"{name}({value!r}) must be a positive number of GB/s")


def build_training(model, seq=None, global_batch=None, global_batch_tokens=None, precision="bf16",
                   engine="deepspeed"):
    """Training from --seq (default: the model's usual length), --global-batch or --global-batch-tokens."""
    seq = seq or getattr(model, "default_seq_len", 0) or model.max_seq_len
    if model.arch == "gpt2" and seq > model.max_seq_len:
        raise ValueError(f"seq({seq}) exceeds {model.name}'s {model.max_seq_len} learned positions; "
                         f"use --seq {model.max_seq_len} or less, or --seq-len {seq} to grow the table")
    if global_batch is not None and global_batch_tokens is not None:
        raise ValueError("give --global-batch (sequences) or --global-batch-tokens, not both")
    if global_batch_tokens is not None:
        global_batch = max(1, round(parse_tokens(global_batch_tokens) / seq))
    if global_batch is not None and (isinstance(global_batch, bool) or not isinstance(global_batch, int)
                                     or global_batch < 1):
        raise ValueError(f"global batch({global_batch!r}) must be a positive number of sequences")
    return Training(seq_len=seq, global_batch=global_batch or 0, precision=precision, engine=engine or "deepspeed")


def inputs_from_options(opts: dict):
    """(model, cluster, training, headroom) from the common options' values; ValueError on bad input."""
    model = load_model(opts.get("model"), {k: opts.get(k) for k in MODEL_OVERRIDES})
    cluster = load_cluster(opts.get("cluster"), {k: opts.get(k) for k in CLUSTER_OVERRIDES})
    if opts.get("gpus") is not None:
        cluster = use_gpus(cluster, opts["gpus"])
    training = build_training(model, opts.get("seq"), opts.get("global_batch"), opts.get("global_batch_tokens"),
                              opts.get("precision") or "bf16", opts.get("engine") or "deepspeed")
    if opts.get("mfu_peak"):
        training = dataclasses.replace(training, mfu_peak=opts["mfu_peak"])
    if opts.get("cp_comm_type"):
        training = dataclasses.replace(training, cp_comm_type=opts["cp_comm_type"])
    headroom = parse_headroom(opts.get("headroom", "10%"))
    return model, cluster, training, headroom


def build_layout(cluster, training, given: dict):
    """A Layout from flag values: dp defaults to GPUs/(tp·pp), grad_accum to what reaches the global batch."""
    tp, pp, micro = given.get("tp") or 1, given.get("pp") or 1, given.get("micro_batch") or 1
    cp = given.get("cp") or 1
    dp = given.get("dp")
    if dp is None:
        if cluster.world_size % (tp * pp * cp):
            raise ValueError(f"tp({tp})·pp({pp})·cp({cp}) must divide the {cluster.world_size} GPUs of {cluster.spec}")
        dp = cluster.world_size // (tp * pp * cp)
    accum = given.get("grad_accum")
    if accum is None:
        accum = 1
        if training.global_batch:
            if training.global_batch % (dp * micro):
                raise ValueError(f"global batch {training.global_batch} is not a multiple of micro_batch({micro})"
                                 f"·dp({dp}) = {micro * dp}; change --micro-batch or --global-batch")
            accum = training.global_batch // (dp * micro)
    sp = given.get("sp")
    return Layout(dp=dp, tp=tp, pp=pp, zero_stage=given.get("zero") or 0, micro_batch=micro, grad_accum=accum,
                  checkpointing=given.get("checkpointing") or "none", offload=given.get("offload") or "none",
                  sequence_parallel=bool(sp) if sp is not None else False, cp=cp, vpp=given.get("vpp") or 1,
                  pp_layers=parse_pp_layers(given.get("pp_layers")), ep=given.get("ep") or 1,
                  etp=given.get("etp") or 1)


def parse_pp_layers(value):
    """--pp-layers "7,8,8,7" (or a --batch list) -> (7, 8, 8, 7); None when not given."""
    if value is None or isinstance(value, (list, tuple)):
        return value
    try:
        return tuple(int(part) for part in str(value).split(","))
    except ValueError:
        raise ValueError(f"pp_layers({value!r}) must be comma-separated layer counts, one per stage, "
                         "e.g. --pp-layers 7,8,8,7") from None


def _keys(d, what: str, known) -> dict:
    if not isinstance(d, dict):
        raise ValueError(f"{what} must be a JSON object")
    out = {str(k).replace("-", "_"): v for k, v in d.items()}
    if what == "layout":
        out = {flag_name(k): v for k, v in out.items()}
    if what == "training" and "seq_len" in out:
        out["seq"] = out.pop("seq_len")
    unknown = sorted(set(out) - set(known))
    if unknown:
        raise ValueError(f"unknown {what} keys {unknown}; known: {', '.join(known)}")
    return out


ENGINE_OPTIONS = ("attention", "overlap_grad_reduce", "tp_backward_overlap",
                  "cp_comm_type")   # --batch "training" keys beyond the flags'


def resolve_request(request, opts: dict, layout_opts: dict, cache: dict):
    """One --batch line -> (model, cluster, training, headroom, layout); the flags fill what the line omits."""
    request = _keys(request, "request", ("model", "cluster", "engine", "layout", "overrides", "training"))
    overrides = _keys(request.get("overrides", {}), "overrides", MODEL_OVERRIDES + CLUSTER_OVERRIDES)
    training = _keys(request.get("training", {}), "training",
                     ("seq", "global_batch", "global_batch_tokens", "precision", "headroom", "engine", "zero_buckets",
                      "mfu_peak") + ENGINE_OPTIONS)
    layout = _keys(request.get("layout", {}), "layout", LAYOUT_FLAGS)
    name = request.get("model", opts.get("model"))
    model_over = {k: overrides.get(k, opts.get(k)) for k in MODEL_OVERRIDES}
    key = ("model", repr(name), tuple(sorted(model_over.items())))
    if key not in cache:
        cache[key] = load_model(name, model_over)
    model = cache[key]
    spec = request.get("cluster", opts.get("cluster"))
    cluster_over = {k: overrides.get(k, opts.get(k)) for k in CLUSTER_OVERRIDES}
    key = ("cluster", spec, tuple(sorted(cluster_over.items())))
    if key not in cache:
        cache[key] = load_cluster(spec, cluster_over)
    cluster = cache[key]
    t = {k: training.get(k, opts.get(k)) for k in ("seq", "global_batch", "global_batch_tokens", "precision")}
    built = build_training(model, t["seq"], t["global_batch"], t["global_batch_tokens"], t["precision"] or "bf16",
                           request.get("engine", opts.get("engine")) or "deepspeed")
    # who ran the step and which ZeRO buckets it used (measured lines: plain PyTorch, DeepSpeed's defaults), and
    # how the Megatron version that ran attended and overlapped (planner/estimate.py Training); --cp-comm-type
    # fills a line that does not say
    given = {k: training[k] for k in ("engine", "zero_buckets") + ENGINE_OPTIONS if k in training}
    if "cp_comm_type" not in given and opts.get("cp_comm_type"):
        given["cp_comm_type"] = opts["cp_comm_type"]
    built = dataclasses.replace(built, **given)
    if training.get("mfu_peak", opts.get("mfu_peak")):
        built = dataclasses.replace(built, mfu_peak=training.get("mfu_peak", opts.get("mfu_peak")))
    headroom = parse_headroom(training.get("headroom", opts.get("headroom", "10%")))
    merged = {**{k: v for k, v in layout_opts.items()}, **layout}
    return model, cluster, built, headroom, build_layout(cluster, built, merged)
