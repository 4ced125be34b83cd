"""The command line's option sets, one of each: the planner's inputs (@common_options) and the layout's
flags (layout_options, derived from planner.layout's fields), and PlanError, the one-line exit 2.

The values become planner inputs in launch/inputs.py (no click there: `render --from` uses it too).
"""
from __future__ import annotations

import contextlib

import click

from shardplan.launch import inputs
from shardplan.planner.layout import CHECKPOINTING, LAYOUT_FLAGS, OFFLOADS
from shardplan.planner.engines import ENGINES
from shardplan.planner.layout import PRECISIONS
from shardplan.planner.estimate import CP_COMM_TYPES, MFU_PEAKS


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


def inputs_from_options(opts: dict):
    """(model, cluster, training, headroom) from the common options; PlanError (exit 2) on bad input."""
    with PlanError.boundary():
        return inputs.inputs_from_options(opts)


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
        click.option("--nvlink-domain", type=int, help="GPUs per NVLink domain (default: the card's, 72 on GB200/"
                     "GB300 NVL72, else the node); tp/cp/ep groups stay inside one."),
        click.option("--seq", type=int, help="Training sequence length (default: the model's usual one)."),
        click.option("--global-batch", type=int, help="Sequences per optimizer step (default: see plan --help)."),
        click.option("--global-batch-tokens", help="Tokens per optimizer step instead, e.g. 2M (= 2·2^20)."),
        click.option("--precision", type=click.Choice(PRECISIONS), default="bf16", show_default=True,
                     help="fp8/mxfp8: Transformer Engine FP8 GEMMs on Megatron (mxfp8 on Blackwell)."),
        click.option("--mfu-peak", type=click.Choice(("auto",) + MFU_PEAKS), default="auto", show_default=True,
                     help="The dense peak MFU is measured against; auto: the precision's, bf16 for fp8/mxfp8."),
        click.option("--engine", type=click.Choice(ENGINES), default="deepspeed", show_default=True,
                     help="Who runs the training: DeepSpeed (shardplan's program, ds_config.json) or Megatron-core "
                          "(Megatron-LM's pretrain_gpt.py, megatron_args.sh)."),
        click.option("--cp-comm-type", type=click.Choice(CP_COMM_TYPES), default="p2p", show_default=True,
                     help="Megatron context parallelism's exchange: p2p (K/V ring, hidden behind attention), a2a "
                          "(all-to-all over heads: tp·cp must divide the kv heads) or allgather (K/V gathered)."),
        click.option("--headroom", default="10%", show_default=True,
                     help="Memory kept free on each GPU (fragmentation, CUDA context): 10% or 0.1."),
        click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON."),
    ]
    for option in reversed(options):
        f = option(f)
    return f


# What each layout flag fixes, in the words of --help; the flags themselves come from planner.layout.
LAYOUT_HELP = {
    "dp": "data-parallel degree", "tp": "tensor-parallel degree", "pp": "pipeline-parallel degree",
    "zero": "ZeRO stage (0-3)", "micro_batch": "micro-batch (sequences per GPU per pass)",
    "grad_accum": "gradient accumulation steps (micro-batches per optimizer step)",
    "checkpointing": "activation checkpointing", "offload": "CPU offload",
    "sp": "sequence parallelism over the tp ranks (Megatron; --sp/--no-sp)",
    "cp": "context-parallel degree (Megatron CP, DeepSpeed Ulysses: each rank holds seq/cp tokens)",
    "vpp": "virtual pipeline stages per pipeline rank (interleaved 1F1B)",
    "pp_layers": "layers of each pipeline stage, e.g. 7,8,8,7 (uneven pipeline)",
    "ep": "expert-parallel degree (MoE: each rank holds experts/ep routed experts)",
    "etp": "expert tensor-parallel degree (MoE, Megatron: each expert's FFN split over etp ranks)",
}
# estimate scores one fixed layout: these are its defaults (dp and grad_accum are derived when left out).
ESTIMATE_DEFAULTS = {"tp": 1, "pp": 1, "zero": 0, "micro_batch": 1, "checkpointing": "none", "offload": "none",
                     "cp": 1, "vpp": 1, "ep": 1, "etp": 1}
LAYOUT_NOTES = {
    "dp": " (default: GPUs / (tp·pp·cp))", "grad_accum": " (default: from --global-batch, else 1)",
    "checkpointing": "", "offload": "",
}


def _layout_type(flag: str):
    choices = {"checkpointing": CHECKPOINTING, "offload": OFFLOADS}.get(flag)
    if choices:
        return click.Choice(choices, case_sensitive=False)
    if flag == "pp_layers":
        return str      # "7,8,8,7": launch/inputs.py parses it (--batch lines give a list)
    return click.IntRange(0, 3) if flag == "zero" else int


def layout_options(flags=LAYOUT_FLAGS, *, defaults: dict | None = None, notes: dict | None = None):
    """Click options for these layout flags (--dp ... --offload). Without defaults each fixes that choice
    (None = left to the search); with defaults (estimate) they describe one layout."""
    def decorate(f):
        for flag in reversed(flags):
            name = "--" + flag.replace("_", "-")
            text = LAYOUT_HELP[flag]
            if flag == "sp":     # a switch; None (neither given) leaves it to the search / the engine's default
                f = click.option("--sp/--no-sp", "sp", default=None, help=text[0].upper() + text[1:] + ".")(f)
                continue
            if defaults is None:
                help_text = f"Fix the {text}." + (notes or {}).get(flag, "")
                f = click.option(name, type=_layout_type(flag), help=help_text)(f)
            else:
                help_text = text[0].upper() + text[1:] + LAYOUT_NOTES.get(flag, "") + "."
                f = click.option(name, type=_layout_type(flag), default=defaults.get(flag),
                                 show_default=flag in defaults, help=help_text)(f)
        return f
    return decorate


def calibration_option(f):
    """--calibration PROFILE.json: the fitted constants `shardplan calibrate` wrote."""
    return click.option("--calibration", type=click.Path(dir_okay=False),
                        help="A profile from `shardplan calibrate`: this GPU type's fitted efficiency constants.")(f)


def calibrated(cluster, profile):
    """The cluster with the profile's constants for its GPU type (as is without a profile); PlanError on a bad file."""
    if not profile:
        return cluster
    from shardplan.launch.calibration import read_profile

    with PlanError.boundary():
        return read_profile(profile).apply(cluster)


def budget_options(f):
    """--tokens and --price: time to train, GPU-hours and cost."""
    f = click.option("--price", type=float, help="Price per GPU-hour (any currency), e.g. 2.49: adds the cost.")(f)
    return click.option("--tokens", help="Tokens to train on (decimal: 300B = 3e11): adds days, GPU-hours, cost.")(f)


def plot_option(f):
    return click.option("--plot", type=click.Path(dir_okay=False),
                        help="Draw the memory bars and tokens/s vs memory to FILE (.png or .svg; needs the "
                             "[plot] extra: pip install 'shardplan[plot]').")(f)
