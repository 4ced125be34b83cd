"""GPT-2 written for parallelism: nn.Linear projections, heads as view(B, T, -1, head_dim), SDPA, tied embeddings.

The structure (fused qkv, GELU tanh, logits = ln_f(x) @ wte.T, cross-entropy in fp32) is the one the
planner's memory model was calibrated on, so its predictions apply to this program. Module names
follow transformers' GPT2LMHeadModel so weights map one to one (only Conv1D's [in, out] is transposed).
"""
from __future__ import annotations

import json
import math
import zlib
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

# The shape and the tensor-parallel roles live in a torch-free module so render and launch can import them.
from .spec import COLUMN_PARALLEL, FUSED_QKV, ROW_PARALLEL, GPTConfig, autotp_partition_config  # noqa: F401


def _generator(seed: int, name: str) -> torch.Generator:
    # One stream per module name: a pipeline stage that builds only its own layers gets the same
    # initial weights as the single-process model, which the equivalence tests rely on.
    return torch.Generator().manual_seed(seed * 1_000_003 + zlib.crc32(name.encode()))


def init_linear(layer: nn.Linear, seed: int, name: str, std: float = 0.02) -> None:
    with torch.no_grad():
        layer.weight.copy_(torch.randn(layer.weight.shape, generator=_generator(seed, name)) * std)
        if layer.bias is not None:
            layer.bias.zero_()


def plain_linear(in_features: int, out_features: int, kind: str) -> nn.Module:
    """The default LinearFactory: (in, out, "column" | "row") -> module. Megatron layers plug in here for 3D."""
    return nn.Linear(in_features, out_features)


LinearFactory = type(plain_linear)


class Attention(nn.Module):
    def __init__(self, cfg: GPTConfig, linear: "LinearFactory"):
        super().__init__()
        self.head_dim = cfg.head_dim
        self.selective = cfg.checkpointing == "selective"
        self.c_attn = linear(cfg.hidden, 3 * cfg.hidden, "column")
        self.c_proj = linear(cfg.hidden, cfg.hidden, "row")
        # DeepSpeed-Ulysses (ulysses.py) sets a DistributedAttention around local_attention: it all-to-alls
        # q, k, v of this rank's seq/cp tokens into the whole sequence for n_heads/cp heads, and back.
        self.distributed = None

    @staticmethod
    def _core(q, k, v):
        return F.scaled_dot_product_attention(q, k, v, is_causal=True)

    def local_attention(self, q, k, v):
        """Causal attention over [batch, seq, heads, head_dim] tensors, as the heads of this rank see them."""
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))
        if self.selective and torch.is_grad_enabled():
            y = checkpoint(self._core, q, k, v, use_reentrant=False)
        else:
            y = self._core(q, k, v)
        return y.transpose(1, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, _ = x.shape
        # chunk(3) on the last dim works for the whole projection and for a tensor-parallel shard alike:
        # the shard holds [q_r; k_r; v_r] for this rank's heads (fused-qkv shape [3, -1]).
        q, k, v = self.c_attn(x).chunk(3, dim=-1)
        q, k, v = (t.view(B, T, -1, self.head_dim) for t in (q, k, v))
        y = self.local_attention(q, k, v) if self.distributed is None else self.distributed(q, k, v, 0)
        return self.c_proj(y.reshape(B, T, -1))


class MLP(nn.Module):
    def __init__(self, cfg: GPTConfig, linear: "LinearFactory"):
        super().__init__()
        self.c_fc = linear(cfg.hidden, cfg.ffn_hidden, "column")
        self.c_proj = linear(cfg.ffn_hidden, cfg.hidden, "row")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c_proj(F.gelu(self.c_fc(x), approximate="tanh"))


class Block(nn.Module):
    def __init__(self, cfg: GPTConfig, linear: "LinearFactory" = None):
        super().__init__()
        linear = linear or plain_linear
        self.ln_1 = nn.LayerNorm(cfg.hidden)
        self.attn = Attention(cfg, linear)
        self.ln_2 = nn.LayerNorm(cfg.hidden)
        self.mlp = MLP(cfg, linear)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


def init_block(block: Block, cfg: GPTConfig, seed: int, index: int) -> None:
    """GPT-2 init: N(0, 0.02), residual projections N(0, 0.02/sqrt(2L)) (GPT-2 paper, section 2.3)."""
    resid_std = 0.02 / math.sqrt(2 * cfg.n_layers)
    for name in COLUMN_PARALLEL + ROW_PARALLEL:
        layer = block.get_submodule(name)
        init_linear(layer, seed, f"h.{index}.{name}", resid_std if name in ROW_PARALLEL else 0.02)


class Embeddings(nn.Module):
    """Token + learned position embeddings; also the tied LM head (logits = x @ wte.T)."""

    def __init__(self, cfg: GPTConfig, seed: int = 0):
        super().__init__()
        self.wte = nn.Embedding(cfg.vocab, cfg.hidden)
        self.wpe = nn.Embedding(cfg.max_seq_len, cfg.hidden)
        with torch.no_grad():
            self.wte.weight.copy_(torch.randn(self.wte.weight.shape, generator=_generator(seed, "wte")) * 0.02)
            self.wpe.weight.copy_(torch.randn(self.wpe.weight.shape, generator=_generator(seed, "wpe")) * 0.01)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return self.wte(idx) + self.wpe(torch.arange(idx.shape[1], device=idx.device))

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.wte.weight.t()


def lm_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy, upcast to fp32 as the calibration probe does."""
    return F.cross_entropy(logits.reshape(-1, logits.size(-1)).float(), targets.reshape(-1))


class GPT(nn.Module):
    """The whole model on one rank (ZeRO and AutoTP shard it through the engine)."""

    def __init__(self, cfg: GPTConfig, seed: int = 0):
        super().__init__()
        self.cfg = cfg
        emb = Embeddings(cfg, seed)
        self.wte, self.wpe = emb.wte, emb.wpe   # flat names, as in transformers' GPT2Model
        self.h = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        for i, block in enumerate(self.h):
            init_block(block, cfg, seed, i)
        self.ln_f = nn.LayerNorm(cfg.hidden)
        self.first_position = 0   # where this rank's tokens start in the sequence (Ulysses: cp_rank·seq/cp)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None) -> torch.Tensor:
        positions = torch.arange(self.first_position, self.first_position + idx.shape[1], device=idx.device)
        x = self.wte(idx) + self.wpe(positions)
        for block in self.h:
            if self.cfg.checkpointing == "full" and torch.is_grad_enabled():
                x = checkpoint(block, x, use_reentrant=False)
            else:
                x = block(x)
        logits = self.ln_f(x) @ self.wte.weight.t()
        return logits if targets is None else lm_loss(logits, targets)


# ---- transformers GPT-2 weights -------------------------------------------------------------------

_CONV1D = (".attn.c_attn.weight", ".attn.c_proj.weight", ".mlp.c_fc.weight", ".mlp.c_proj.weight")


def read_hf_config(hf_dir: Path) -> dict:
    path = Path(hf_dir) / "config.json"
    if not path.is_file():
        raise ValueError(f"--init-from {hf_dir}: no config.json there; give a local Hugging Face GPT-2 directory "
                         "(save_pretrained output)")
    return json.loads(path.read_text())


def check_hf_shape(cfg: GPTConfig, hf: dict, hf_dir: Path) -> None:
    """The plan's model must be the checkpoint's model: name every field that differs."""
    if hf.get("model_type") != "gpt2":
        raise ValueError(f"--init-from {hf_dir}: model_type({hf.get('model_type')!r}) is not gpt2")
    theirs = {"n_layers": hf["n_layer"], "hidden": hf["n_embd"], "n_heads": hf["n_head"],
              "ffn_hidden": hf.get("n_inner") or 4 * hf["n_embd"], "vocab": hf["vocab_size"],
              "max_seq_len": hf["n_positions"]}
    diff = [f"{k}: plan {v} vs checkpoint {theirs[k]}" for k, v in cfg.shape_dict().items() if theirs[k] != v]
    if diff:
        raise ValueError(f"--init-from {hf_dir} does not match the plan's model ({'; '.join(diff)}); "
                         "plan with --model " + str(hf_dir))


def load_hf_state_dict(hf_dir: Path) -> dict[str, torch.Tensor]:
    """transformers' GPT2LMHeadModel weights mapped onto this model's names, Conv1D transposed."""
    hf_dir = Path(hf_dir)
    if (hf_dir / "model.safetensors").is_file():
        from safetensors.torch import load_file
        raw = load_file(str(hf_dir / "model.safetensors"))
    elif (hf_dir / "pytorch_model.bin").is_file():
        raw = torch.load(hf_dir / "pytorch_model.bin", map_location="cpu", weights_only=True)
    else:
        raise ValueError(f"--init-from {hf_dir}: no model.safetensors or pytorch_model.bin there")
    out = {}
    for key, value in raw.items():
        name = key.removeprefix("transformer.")
        if name == "lm_head.weight" or name.endswith(".attn.bias") or name.endswith(".attn.masked_bias"):
            continue   # tied to wte / causal-mask buffers of old checkpoints
        out[name] = value.t().contiguous() if name.endswith(_CONV1D) else value
    return out
