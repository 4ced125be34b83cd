"""The mixture-of-experts GPT-2: the MLP of every MoE block is DeepSpeed's `deepspeed.moe.layer.MoE`.

Routing is dropless (drop_tokens=False: each expert's capacity is the largest count routed to it, agreed over
the expert-parallel group, deepspeed/moe/sharded_moe.py), deterministic (no Gumbel sampling of the second
expert, no random token selection), and the router's load-balancing loss is added to the LM loss with the
Switch Transformer coefficient, as DeepSpeed's MoE examples add `l_aux`. Each rank builds only its 1/ep of the
experts, copied from the same seeded full set the single-process model has: global expert
ep_rank·(experts/ep) + j is local expert j (MOELayer's all-to-all sends expert chunk r to ep rank r).

The aux loss is a statistic of one micro-batch (GShard's group), so layouts train identically when their
micro-batches hold the same sequences: ep × dp with micro m equals one process with micro m × accum dp.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
from torch.utils.checkpoint import checkpoint

from .model import GPT, MLP, Block, _generator, init_linear, lm_loss, plain_linear
from .spec import GPTConfig

AUX_LOSS_COEFF = 0.01   # Switch Transformer (Fedus et al. 2022, section 2.2) alpha = 1e-2
EXPERT_WEIGHTS = ("c_fc", "c_proj")


def ep_rank_before_engine(ep: int) -> int:
    """This rank's place in its expert-parallel group as DeepSpeed will build it (deepspeed/utils/groups.py
    _create_expert_and_data_parallel: consecutive data-parallel ranks form a group); checked after initialize."""
    import deepspeed.comm as dist
    return dist.get_rank() % ep if ep > 1 and dist.is_initialized() else 0


class MoEBlock(Block):
    """A GPT-2 block whose MLP is DeepSpeed's MoE layer; forward returns (x, the router's aux loss)."""

    def __init__(self, cfg: GPTConfig):
        from deepspeed.moe.layer import MoE
        super().__init__(cfg)
        expert = MLP(GPTConfig(n_layers=1, hidden=cfg.hidden, n_heads=cfg.n_heads, ffn_hidden=cfg.moe_ffn_hidden,
                               vocab=cfg.vocab, max_seq_len=cfg.max_seq_len), plain_linear)
        self.mlp = MoE(hidden_size=cfg.hidden, expert=expert, num_experts=cfg.experts, ep_size=cfg.ep, k=cfg.top_k,
                       drop_tokens=False, use_rts=False, top2_2nd_expert_sampling=False, min_capacity=0)

    def forward(self, x: torch.Tensor):
        x = x + self.attn(self.ln_1(x))
        y, aux, _ = self.mlp(self.ln_2(x))
        return x + y, aux


def init_moe_block(block: MoEBlock, cfg: GPTConfig, seed: int, index: int, ep_rank: int) -> None:
    """Attention as in a dense block; the router and this rank's experts from the full set's seeded streams."""
    resid_std = 0.02 / math.sqrt(2 * cfg.n_layers)
    for name in ("attn.c_attn", "attn.c_proj"):
        init_linear(block.get_submodule(name), seed, f"h.{index}.{name}",
                    resid_std if name.endswith("c_proj") else 0.02)
    moe = block.mlp.deepspeed_moe
    with torch.no_grad():
        wg = moe.gate.wg.weight
        wg.copy_(torch.randn(wg.shape, generator=_generator(seed, f"h.{index}.mlp.gate")) * 0.02)
    local = moe.experts.deepspeed_experts
    for j, expert in enumerate(local):
        e = ep_rank * len(local) + j
        for name in EXPERT_WEIGHTS:
            init_linear(getattr(expert, name), seed, f"h.{index}.mlp.experts.{e}.{name}",
                        resid_std if name == "c_proj" else 0.02)


class MoEGPT(GPT):
    """GPT with MoE blocks at cfg.moe_layers; forward returns LM loss + AUX_LOSS_COEFF · sum of the aux losses
    (what backward sees) and keeps the LM loss alone in `last_lm_loss` (what metrics.jsonl reports)."""

    def __init__(self, cfg: GPTConfig, seed: int = 0):
        super().__init__(cfg, seed)
        ep_rank = ep_rank_before_engine(cfg.ep)
        for i in cfg.moe_layers:
            block = MoEBlock(cfg)
            init_moe_block(block, cfg, seed, i, ep_rank)
            self.h[i] = block
        self.last_lm_loss: torch.Tensor | None = None

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None) -> torch.Tensor:
        x = self.wte(idx) + self.wpe(torch.arange(idx.shape[1], device=idx.device))
        aux = torch.zeros((), device=x.device)
        for block in self.h:
            if self.cfg.checkpointing == "full" and torch.is_grad_enabled():
                out = checkpoint(block, x, use_reentrant=False)
            else:
                out = block(x)
            if isinstance(out, tuple):
                x, layer_aux = out
                aux = aux + layer_aux.float()
            else:
                x = out
        logits = self.ln_f(x) @ self.wte.weight.t()
        if targets is None:
            return logits
        loss = lm_loss(logits, targets)
        self.last_lm_loss = loss.detach()
        return loss + AUX_LOSS_COEFF * aux


def optimizer_groups(model: nn.Module) -> list[dict]:
    """Dense and expert parameters in separate groups (`moe: True`), which DeepSpeed's engine and ZeRO need to
    reduce and shard expert states over the expert-data-parallel group (deepspeed/moe/utils.py)."""
    from deepspeed.moe.utils import split_params_into_different_moe_groups_for_optimizer
    return split_params_into_different_moe_groups_for_optimizer({"params": list(model.parameters()),
                                                                 "name": "params"})


def check_ep_groups(cfg: GPTConfig) -> int:
    """After deepspeed.initialize: DeepSpeed's expert-parallel rank must be the one the weights were built for."""
    if cfg.ep == 1:
        return 0
    from deepspeed.utils import groups
    actual = groups._get_expert_parallel_rank(f"ep_size_{cfg.ep}")
    if actual != ep_rank_before_engine(cfg.ep):
        raise RuntimeError(f"DeepSpeed's expert-parallel rank ({actual}) is not the one this rank's experts were "
                           f"initialised for ({ep_rank_before_engine(cfg.ep)})")
    return actual


def expert_facts(module: nn.Module) -> dict:
    """What this rank holds of the experts: local experts per MoE layer and their parameter count."""
    from deepspeed.moe.layer import MoE
    layers = [m for m in module.modules() if isinstance(m, MoE)]
    held = sum(p.numel() for m in layers for p in m.deepspeed_moe.experts.parameters())
    return {"moe_layers": len(layers), "experts_held": [m.num_local_experts for m in layers],
            "expert_params_held": held}


def fp32_clip_with_experts(engine, max_norm: float) -> None:
    """Replace the engine's fp32 ZeRO-0 clip with the true global norm.

    DeepSpeed's path (runtime/utils.py clip_grad_norm_) averages each rank's local norm over the data-parallel
    group ("standardizes" it): exact when every rank holds the same gradients, but with ep > 1 ranks hold
    different experts, so the average is not the norm of the whole gradient. Here: dense gradients once (they
    are equal on every data-parallel rank after the all-reduce), expert gradients summed over the
    expert-parallel group (each expert lives on exactly one of its ranks).
    """
    import deepspeed.comm as dist
    from deepspeed.moe.utils import is_moe_param
    from deepspeed.utils import groups

    def clip() -> torch.Tensor:
        params = [p for p in engine.module.parameters() if p.grad is not None]
        dense = sum((p.grad.detach().float().pow(2).sum() for p in params if not is_moe_param(p)),
                    torch.zeros((), device=engine.device))
        expert = sum((p.grad.detach().float().pow(2).sum() for p in params if is_moe_param(p)),
                     torch.zeros((), device=engine.device))
        names = list(groups._get_expert_parallel_group_dict())
        if names:
            dist.all_reduce(expert, group=groups._get_expert_parallel_group(names[0]))
        norm = (dense + expert).sqrt()
        coef = torch.clamp(max_norm / (norm + 1e-6), max=1.0)
        for p in params:
            p.grad.detach().mul_(coef)
        return norm

    engine.clip_fp32_gradients = clip
