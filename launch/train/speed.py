"""The training program's speed options: torch.compile through the DeepSpeed engine and torch's fused AdamW.

Which layouts may compile is the planner's rule (planner/layout.py `compile_refusal`), so `render`, the
planner's time model and this program agree. How, and why this way:

- Compile: `engine.compile()` (deepspeed/runtime/engine.py), not `torch.compile(model)` before
  `deepspeed.initialize`. The engine calls `nn.Module.compile()` in place on its module, so parameter and
  checkpoint names stay as they are (torch.compile's wrapper would prefix `_orig_mod.`, breaking AutoTP's
  name patterns and resuming an eager checkpoint); on a PipelineModule it compiles every stage layer
  separately (deepspeed/runtime/pipe/module.py `compile`), which is what the pipeline engine's
  per-layer schedule calls.
- Fused AdamW: with `"torch_adam": true` DeepSpeed builds `torch.optim.AdamW(params, foreach=..., **params)`
  (engine.py `get_optimizer_configuration`): it never adds `fused=True` itself but passes the config's
  params through, so ds_config's `"fused": true` reaches torch. DeepSpeed's own FusedAdam is not used: it
  is JIT-built and that build fails on some CUDA arch strings (e.g. "9.0a"); torch's kernel ships built.
"""
from __future__ import annotations

import copy

# torch.compile options: one graph per module call, shapes fixed by the plan (micro-batch × seq_len), so
# dynamic shapes would only add guards; the default mode (no CUDA graphs: DeepSpeed's hooks and
# collectives run between the compiled regions).
COMPILE_KWARGS = {"dynamic": False}


def fused_adamw_config(ds_config: dict, device_type: str, fused_devices) -> tuple[dict, str]:
    """(ds_config for deepspeed.initialize, which AdamW runs): keep ds_config's `"fused": true` where torch has
    the fused kernel for this device type, else fall back to the multi-tensor (foreach) path.

    fused_devices: the device types torch's fused optimizers support (torch.optim.optimizer
    `_get_fused_kernels_supported_devices`); passed in so the choice is testable for any device."""
    params = ds_config.get("optimizer", {}).get("params", {})
    if not params.get("fused"):
        return ds_config, "torch AdamW (foreach)" if params.get("torch_adam") else "DeepSpeed's optimizer"
    if not params.get("torch_adam"):
        raise ValueError('ds_config.json optimizer.params "fused": true needs "torch_adam": true (torch\'s fused '
                         'AdamW); re-render the run directory')
    if device_type in fused_devices:
        return ds_config, "torch AdamW (fused)"
    cfg = copy.deepcopy(ds_config)
    del cfg["optimizer"]["params"]["fused"]
    return cfg, f"torch AdamW (foreach: no fused kernel for {device_type} in this torch)"


def fused_devices() -> tuple[str, ...]:
    """Device types with torch's fused AdamW kernel in the installed torch (() where torch predates it)."""
    try:
        from torch.optim.optimizer import _get_fused_kernels_supported_devices
    except ImportError:
        return ()
    return tuple(_get_fused_kernels_supported_devices())


def compile_engine(engine) -> None:
    """Compile the engine's module in place (inductor; gcc on CPU, Triton on CUDA)."""
    engine.compile(compile_kwargs=dict(COMPILE_KWARGS))


def sdpa_backend() -> str:
    """Which scaled_dot_product_attention kernel this rank can run: flash on CUDA in bf16/fp16 (the planner's
    attention time assumes FlashAttention-2), otherwise the math/efficient fallback."""
    import torch
    if not torch.cuda.is_available():
        return "math (cpu)"
    flash = torch.backends.cuda.flash_sdp_enabled()
    return "flash" if flash else "efficient/math (flash disabled)"
