"""The planner's inputs from command-line options (and --batch request lines): model, cluster, training.

Shared by `plan`, `estimate`, `compare` (and `render`, which plans too): `@common_options` adds the flags,
`inputs_from_options(opts)` turns them into (ModelSpec, Cluster, Training, headroom) or exits 2 with one line.
"""
from __future__ import annotations

import contextlib
import dataclasses
import re

import click

MODEL_OVERRIDES = ("layers", "hidden", "heads", "kv_heads", "ffn_hidden", "vocab", "seq_len")
CLUSTER_OVERRIDES = ("gpu_memory", "intra_node_bw", "inter_node_bw")
SUFFIX = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30}


class PlanError(click.ClickException):
    """Bad input or nothing fits: one line on stderr, exit code 2, no traceback."""

    exit_code = 2

    @classmethod
    @contextlib.contextmanager
    def boundary(cls):
        """Turn the planner's ValueError (NothingFits included) into this exception at the CLI boundary."""
        try:
            yield
        except ValueError as err:
            raise cls(str(err)) from None


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


def common_options(f):
    """--model, its overrides, --cluster, its overrides, training and output flags."""
    options = [
        click.option("--model", "-m", required=False, help="Preset (gpt2-xl, llama-3-70b, ...), a HF config.json "
                     "or model directory."),
        click.option("--layers", type=int, help="Override the number of layers."),
        click.option("--hidden", type=int, help="Override the hidden size."),
        click.option("--heads", type=int, help="Override the attention heads."),
        click.option("--kv-heads", type=int, help="Override the key/value heads (GQA)."),
        click.option("--ffn-hidden", type=int, help="Override the MLP width."),
        click.option("--vocab", type=int, help="Override the vocabulary size."),
        click.option("--seq-len", type=int, help="Override the model's max positions."),
        click.option("--cluster", "-c", default="auto", show_default=True,
                     help="[NODESx]GPUSxTYPE (1xH200, 4x8xH100-80GB) or auto (nvidia-smi, SLURM, hostfile, CPU)."),
        click.option("--gpus", type=int, help="Use only this many of the cluster's GPUs (whole nodes, or part of one)."),
        click.option("--gpu-memory", help="Override GPU memory, GB (e.g. 80 or 75GB)."),
        click.option("--intra-node-bw", type=float, help="Override NVLink bandwidth per GPU, GB/s."),
        click.option("--inter-node-bw", type=float, help="Override bandwidth between nodes per GPU, GB/s."),
        click.option("--seq", type=int, help="Training sequence length (default: the model's usual one)."),
        click.option("--global-batch", type=int, help="Sequences per optimizer step (default: see plan --help)."),
        click.option("--global-batch-tokens", help="Tokens per optimizer step instead, e.g. 2M (= 2·2^20)."),
        click.option("--precision", type=click.Choice(["bf16", "fp16", "fp32"]), default="bf16", show_default=True),
        click.option("--headroom", default="10%", show_default=True,
                     help="Memory kept free on each GPU (fragmentation, CUDA context): 10% or 0.1."),
        click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON."),
    ]
    for option in reversed(options):
        f = option(f)
    return f


def load_model(name, overrides: dict):
    from shardplan.planner import get_model

    if isinstance(name, dict):
        from shardplan.planner.model import ModelSpec
        from shardplan.planner.presets import apply_overrides

        return apply_overrides(ModelSpec.from_dict(name), **overrides)
    if not name:
        raise ValueError("no model: give --model with a preset name (e.g. gpt2-xl) or a config.json path")
    return get_model(name, **overrides)


def load_cluster(spec: str, overrides: dict):
    from shardplan.planner import get_cluster

    if not isinstance(spec, str) or not spec:
        raise ValueError(f"cluster({spec!r}) must be a spec such as 1xH200 or 4x8xH100-80GB, or auto")
    cluster = get_cluster(spec)
    memory, intra, inter = (overrides.get(k) for k in CLUSTER_OVERRIDES)
    gpu = cluster.gpu
    if memory is not None:
        gpu = dataclasses.replace(gpu, memory_bytes=int(parse_gb("gpu_memory", memory) * 1e9))
    if intra is not None:
        gpu = dataclasses.replace(gpu, nvlink_gbps=_positive("intra_node_bw", intra))
    changes = {"gpu": gpu}
    if inter is not None:
        changes["inter_node_gbps"] = _positive("inter_node_bw", inter)
    return dataclasses.replace(cluster, **changes)


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


def _positive(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        raise ValueError(f"{name}({value!r}) must be a positive number of GB/s")
    return float(value)


def build_training(model, seq=None, global_batch=None, global_batch_tokens=None, precision="bf16"):
    from shardplan.planner.estimate import Training

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
    return Training(seq_len=seq, global_batch=global_batch or 0, precision=precision)


def inputs_from_options(opts: dict):
    """(model, cluster, training, headroom) from the common options; PlanError (exit 2) on bad input."""
    with PlanError.boundary():
        model = load_model(opts.get("model"), {k: opts.get(k) for k in MODEL_OVERRIDES})
        cluster = load_cluster(opts.get("cluster"), {k: opts.get(k) for k in CLUSTER_OVERRIDES})
        if opts.get("gpus") is not None:
            cluster = use_gpus(cluster, opts["gpus"])
        training = build_training(model, opts.get("seq"), opts.get("global_batch"), opts.get("global_batch_tokens"),
                                  opts.get("precision") or "bf16")
        headroom = parse_headroom(opts.get("headroom", "10%"))
    return model, cluster, training, headroom


def build_layout(cluster, training, given: dict):
    """A Layout from flag values: dp defaults to GPUs/(tp·pp), grad_accum to what reaches the global batch."""
    from shardplan.planner.layout import Layout

    tp, pp, micro = given.get("tp") or 1, given.get("pp") or 1, given.get("micro_batch") or 1
    dp = given.get("dp")
    if dp is None:
        if cluster.world_size % (tp * pp):
            raise ValueError(f"tp({tp})·pp({pp}) must divide the {cluster.world_size} GPUs of {cluster.spec}")
        dp = cluster.world_size // (tp * pp)
    accum = given.get("grad_accum")
    if accum is None:
        accum = 1
        if training.global_batch:
            if training.global_batch % (dp * micro):
                raise ValueError(f"global batch {training.global_batch} is not a multiple of micro_batch({micro})"
                                 f"·dp({dp}) = {micro * dp}; change --micro-batch or --global-batch")
            accum = training.global_batch // (dp * micro)
    return Layout(dp=dp, tp=tp, pp=pp, zero_stage=given.get("zero") or 0, micro_batch=micro, grad_accum=accum,
                  checkpointing=given.get("checkpointing") or "none", offload=given.get("offload") or "none")


def _keys(d, what: str, known) -> dict:
    if not isinstance(d, dict):
        raise ValueError(f"{what} must be a JSON object")
    out = {str(k).replace("-", "_"): v for k, v in d.items()}
    if "zero_stage" in out and what == "layout":
        out["zero"] = out.pop("zero_stage")
    if what == "training" and "seq_len" in out:
        out["seq"] = out.pop("seq_len")
    unknown = sorted(set(out) - set(known))
    if unknown:
        raise ValueError(f"unknown {what} keys {unknown}; known: {', '.join(known)}")
    return out


def resolve_request(request, opts: dict, layout_opts: dict, cache: dict):
    """One --batch line -> (model, cluster, training, headroom, layout); the flags fill what the line omits."""
    request = _keys(request, "request", ("model", "cluster", "layout", "overrides", "training"))
    overrides = _keys(request.get("overrides", {}), "overrides", MODEL_OVERRIDES + CLUSTER_OVERRIDES)
    training = _keys(request.get("training", {}), "training",
                     ("seq", "global_batch", "global_batch_tokens", "precision", "headroom"))
    layout = _keys(request.get("layout", {}), "layout", ("dp", "tp", "pp", "zero", "micro_batch", "grad_accum",
                                                         "checkpointing", "offload"))
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
    built = build_training(model, t["seq"], t["global_batch"], t["global_batch_tokens"], t["precision"] or "bf16")
    headroom = parse_headroom(training.get("headroom", opts.get("headroom", "10%")))
    merged = {**{k: v for k, v in layout_opts.items()}, **layout}
    return model, cluster, built, headroom, build_layout(cluster, built, merged)
