"""Megatron-LM arguments for a planned layout: megatron_args.sh (exactly the plan: TP, SP, CP, PP, VPP or
uneven stages, distributed optimizer or Megatron-FSDP, overlap, recompute, batch, model shape) and, for --engine megatron,
launch_megatron.sh (torchrun pretrain_gpt.py from the user's Megatron-LM checkout).

Argument names are megatron/training/arguments.py's at core_v0.16.1 (the megatron-core the project
installs); `shardplan validate RUN_DIR --megatron-lm PATH` runs that file's own parse_args + validate_args
on them (launch/validate/megatron.py).
"""
from __future__ import annotations

from shardplan.planner.moe import MLA_SELECTIVE_MODULES, SELECTIVE_MODULES
from shardplan.planner.estimate import Estimate
from shardplan.planner.megatron.fsdp import strategy, uses_fsdp
from shardplan.planner.precision import is_fp8, recipe as fp8_recipe

from .ds_config import Schedule

# What validate_args demands beside the arguments (megatron/training/arguments.py): with tensor or context
# parallelism the input-gradient collectives must be issued before the weight-gradient GEMM, which only one
# hardware queue guarantees.
MAX_CONNECTIONS = {"CUDA_DEVICE_MAX_CONNECTIONS": "1"}
# NCCL: report a failed collective as an error instead of hanging until the watchdog (torch 2.x name).
GPU_ENV = {"TORCH_NCCL_ASYNC_ERROR_HANDLING": "1"}


def megatron_refusal(est: Estimate) -> str | None:
    """Why Megatron-LM cannot run this layout as planned (None when it can)."""
    lay = est.layout
    if int(lay.zero_stage) >= 2:
        return (f"DeepSpeed's ZeRO-{int(lay.zero_stage)} is not what Megatron-LM runs (its ZeRO-2/3 is Megatron-FSDP, "
                "with other buffers and collectives): plan with --engine megatron for Megatron arguments")
    if lay.offload != "none":
        return "CPU offload is planned for DeepSpeed: plan with --engine megatron for Megatron arguments"
    if lay.pp_layers is not None and len(set(lay.pp_layers[1:-1])) > 1:
        return "Megatron gives only the first and last pipeline stage their own layer counts"
    return None


def megatron_env(est: Estimate) -> dict[str, str | None]:
    """Variables megatron_args.sh exports (None: unsets). Megatron-FSDP's side-stream gathers need more than one
    hardware queue: validate_args refuses CUDA_DEVICE_MAX_CONNECTIONS=1 with it (and only warns with tp/cp)."""
    env: dict[str, str | None] = dict(GPU_ENV) if not est.cluster.gpu.is_cpu else {}
    if uses_fsdp(est.layout):
        env["CUDA_DEVICE_MAX_CONNECTIONS"] = None
    elif est.layout.tp > 1 or est.layout.cp > 1:
        env.update(MAX_CONNECTIONS)
    return env


def megatron_args(est: Estimate, schedule: Schedule) -> tuple[tuple[str, ...], ...]:
    """pretrain_gpt.py arguments for exactly this layout, one tuple per line of the rendered array."""
    m, lay, tr = est.model, est.layout, est.training
    args: list[tuple[str, ...]] = [
        ("--tensor-model-parallel-size", str(lay.tp)), ("--pipeline-model-parallel-size", str(lay.pp)),
    ]
    if lay.sequence_parallel:
        args.append(("--sequence-parallel",))
    if lay.cp > 1:
        args.append(("--context-parallel-size", str(lay.cp), "--cp-comm-type", tr.cp_comm_type))
    if lay.vpp > 1:   # (this form also works with uneven first/last stages, unlike --num-layers-per-virtual-...)
        args.append(("--num-virtual-stages-per-pipeline-rank", str(lay.vpp)))
    if lay.pp_layers is not None and len(set(lay.pp_layers)) > 1:
        args.append(("--decoder-first-pipeline-num-layers", str(lay.pp_layers[0]),
                     "--decoder-last-pipeline-num-layers", str(lay.pp_layers[-1])))
    args += [
        ("--micro-batch-size", str(lay.micro_batch)), ("--global-batch-size", str(lay.global_batch)),
        ("--num-layers", str(m.n_layers)), ("--hidden-size", str(m.hidden)),
        ("--ffn-hidden-size", str(m.ffn_hidden)), ("--num-attention-heads", str(m.n_heads)),
        ("--kv-channels", str(m.head_dim)),
        ("--seq-length", str(tr.seq_len)), ("--max-position-embeddings", str(max(m.max_seq_len, tr.seq_len))),
    ]
    if m.n_kv_heads != m.n_heads:
        args.append(("--group-query-attention", "--num-query-groups", str(m.n_kv_heads)))
    if m.arch == "llama":
        args += [("--swiglu",), ("--normalization", "RMSNorm"), ("--position-embedding-type", "rope"),
                 ("--disable-bias-linear",), ("--attention-dropout", "0"), ("--hidden-dropout", "0")]
        if not m.tied_embeddings:
            args.append(("--untie-embeddings-and-output-weights",))
    args += moe_args(m, lay)
    if tr.precision in ("bf16", "fp16"):
        args.append((f"--{tr.precision}",))
    elif is_fp8(tr.precision):   # Transformer Engine FP8 GEMMs over bf16 weights (planner/precision.py)
        fmt, recipe = fp8_recipe(tr.precision)
        args.append(("--bf16", "--fp8-format", fmt, "--fp8-recipe", recipe))
    if tr.engine == "megatron":
        args.append(("--attention-backend", "unfused" if tr.attention == "unfused" else "flash"))
    if lay.checkpointing == "full":
        args.append(("--recompute-granularity", "full", "--recompute-method", "uniform", "--recompute-num-layers", "1"))
    elif lay.checkpointing == "selective" and m.is_moe:   # what planner/moe.py's memory model drops
        modules = MLA_SELECTIVE_MODULES if m.kv_lora_rank else SELECTIVE_MODULES
        args.append(("--recompute-granularity", "selective", "--recompute-modules", *modules))
    elif lay.checkpointing == "selective":
        args.append(("--recompute-granularity", "selective"))
    if uses_fsdp(lay):
        # Megatron-FSDP: what validate_args and its user guide require with it (fsdp_dtensor checkpoints, the
        # distributed optimizer over its shards, no fused gradient accumulation into main_grad); overlap
        # gives the bucketed reduce-scatter the planner's time model assumes (fsdp.py).
        args.append(("--use-megatron-fsdp", "--data-parallel-sharding-strategy", strategy(lay.zero_stage),
                     "--use-distributed-optimizer", "--no-gradient-accumulation-fusion", "--ckpt-format",
                     "fsdp_dtensor"))
        if lay.dp_cp > 1:
            args.append(("--overlap-grad-reduce", "--overlap-param-gather"))
    elif lay.zero_stage >= 1:
        # Megatron's distributed optimizer shards the fp32 master weights and Adam moments over dp: ZeRO-1.
        args.append(("--use-distributed-optimizer",))
        if tr.engine == "megatron" and lay.dp_cp > 1:   # what the planner's time model assumes
            args.append(("--overlap-grad-reduce", "--overlap-param-gather"))
    elif tr.engine == "megatron" and lay.dp_cp > 1:
        args.append(("--overlap-grad-reduce",))
    args += [
        ("--train-iters", str(schedule.steps)), ("--lr", _num(schedule.lr)), ("--min-lr", _num(schedule.lr * 0.1)),
        ("--lr-decay-style", "cosine"), ("--lr-warmup-iters", str(schedule.warmup_steps)),
        ("--weight-decay", _num(schedule.weight_decay)), ("--clip-grad", _num(schedule.gradient_clipping)),
        ("--adam-beta1", _num(schedule.betas[0])), ("--adam-beta2", _num(schedule.betas[1])),
        ("--adam-eps", _num(schedule.eps)),
    ]
    return tuple(args)


def moe_args(m, lay) -> list[tuple[str, ...]]:
    """Experts, their parallelism and routing, shared experts, dense layers and MLA, as the planner costed them:
    dropless all-to-all dispatch, grouped GEMM, etp always explicit (Megatron's default is tp)."""
    if not m.is_moe:
        return []
    args = [("--num-experts", str(m.experts), "--expert-model-parallel-size", str(lay.ep),
             "--expert-tensor-parallel-size", str(lay.etp)),
            ("--moe-router-topk", str(m.top_k), "--moe-ffn-hidden-size", str(m.moe_ffn_hidden)),
            ("--moe-grouped-gemm", "--moe-token-dispatcher-type", "alltoall")]
    if m.kv_lora_rank:   # DeepSeek-V3 (section 2.1.2): auxiliary-loss-free balancing, sigmoid scores, expert bias
        args.append(("--moe-router-load-balancing-type", "seq_aux_loss", "--moe-aux-loss-coeff", "0.0001",
                     "--moe-router-score-function", "sigmoid", "--moe-router-enable-expert-bias"))
    else:
        args.append(("--moe-router-load-balancing-type", "aux_loss", "--moe-aux-loss-coeff", "0.01"))
    if m.shared_experts:
        args.append(("--moe-shared-expert-intermediate-size", str(m.shared_experts * m.moe_ffn_hidden)))
    if m.dense_layers:   # 1 = MoE layer; a Python list expression, as --moe-layer-freq accepts it
        pattern = [0 if i in m.dense_layers else 1 for i in range(m.n_layers)]
        first = len(m.dense_layers)
        prefix = m.dense_layers == tuple(range(first))
        args.append(("--moe-layer-freq", f"([0]*{first}+[1]*{m.n_layers - first})" if prefix
                     else "[" + ",".join(map(str, pattern)) + "]"))
    if m.kv_lora_rank:
        mla = ["--multi-latent-attention", "--kv-lora-rank", str(m.kv_lora_rank),
               "--qk-head-dim", str(m.head_dim - m.rope_head_dim), "--qk-pos-emb-head-dim", str(m.rope_head_dim),
               "--v-head-dim", str(m.v_head_dim)]
        if m.q_lora_rank:
            mla += ["--q-lora-rank", str(m.q_lora_rank)]
        args.append(tuple(mla))
    return args


def _num(x: float) -> str:
    return format(x, ".6g")
