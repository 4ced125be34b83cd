"""Megatron-LM's own argument checks on a run directory's megatron_args.sh: its parse_args + validate_args
(megatron/training/arguments.py of the user's checkout), run in a child process with the plan's world size.

validate_args asks the GPU's architecture (get_device_arch_version, and torch.cuda.get_device_capability for
--moe-grouped-gemm): both are answered from the plan's card,
so the check runs on a login node or a laptop. Megatron-LM imports triton at import time only for its
batch-invariant inference kernels (megatron/core/transformer/custom_layers/batch_invariant_kernels.py),
which argument validation never calls: where triton is not installed (no GPU), that one module is stood in
and the result says so. Everything else is Megatron-LM's code as checked out.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from shardplan.planner.cluster import find_gpu

from .. import rundir

RUNNER = r"""
import json, sys, types
arch, argv = int(sys.argv[1]), json.loads(sys.argv[2])
notes = []
try:
    import triton  # noqa: F401
except ImportError:
    name = "megatron.core.transformer.custom_layers.batch_invariant_kernels"
    stub = types.ModuleType(name)
    stub.enable_batch_invariant_mode = stub.disable_batch_invariant_mode = lambda *a, **k: None
    stub.is_batch_invariant_mode_enabled = lambda: False
    sys.modules[name] = stub
    notes.append("triton is not installed: Megatron's batch-invariant kernels (not used by argument "
                 "validation) were stood in")
import contextlib, io
out = io.StringIO()
try:
    import megatron.training.arguments as arguments
except Exception as e:
    print(json.dumps({"ok": False, "error": f"cannot import megatron.training.arguments: {type(e).__name__}: {e}",
                      "import_error": True}))
    sys.exit(0)
arguments.get_device_arch_version = lambda: arch
import torch
torch.cuda.get_device_capability = lambda *a, **k: (arch, 0)   # --moe-grouped-gemm asks it too
sys.argv = ["pretrain_gpt.py"] + argv
try:
    with contextlib.redirect_stdout(out):
        args = arguments.parse_args()
        arguments.validate_args(args, {})
except SystemExit as e:
    print(json.dumps({"ok": False, "error": f"parse_args refused the arguments (exit {e.code}): "
                      + out.getvalue().strip()[-500:], "notes": notes}))
except (AssertionError, ValueError, TypeError, RuntimeError) as e:
    print(json.dumps({"ok": False, "error": f"{type(e).__name__}: {e}".strip(), "notes": notes}))
else:
    print(json.dumps({"ok": True, "notes": notes, "facts": {
        "world_size": args.world_size, "data_parallel_size": args.data_parallel_size,
        "virtual_pipeline_model_parallel_size": args.virtual_pipeline_model_parallel_size,
        "sequence_parallel": args.sequence_parallel, "context_parallel_size": args.context_parallel_size,
        "expert_model_parallel_size": args.expert_model_parallel_size,
        "expert_tensor_parallel_size": args.expert_tensor_parallel_size, "num_experts": args.num_experts}}))
"""


@dataclass(frozen=True)
class MegatronCheck:
    """Megatron-LM's verdict on megatron_args.sh: ok, or its own error message."""

    ok: bool
    message: str                 # Megatron's error, or what it derived (world, dp, vpp) when it accepts
    notes: tuple[str, ...] = ()
    facts: dict | None = None


def arch_major(gpu_name: str) -> int:
    """The compute capability Megatron-LM's get_device_arch_version would report on the plan's card (the
    catalog's arch_major; Hopper's 9 for a card the catalog does not know or that is not NVIDIA's)."""
    gpu = find_gpu(gpu_name)
    return (gpu.arch_major if gpu else 0) or 9


def megatron_arguments(script: Path) -> tuple[list[str], dict[str, str]]:
    """(MEGATRON_ARGS, the variables the script exports), as bash itself reads the file."""
    code = ('set -e; source "$1" >/dev/null; printf "%s\\0" "${MEGATRON_ARGS[@]}"; printf "\\1";'
            ' env -0')
    out = subprocess.run(["bash", "-c", code, "shardplan", str(script)], capture_output=True, timeout=30,
                         env={"PATH": os.environ.get("PATH", "/usr/bin:/bin")})
    if out.returncode:
        raise ValueError(f"{script}: bash could not source it ({out.stderr.decode(errors='replace').strip()})")
    args_part, env_part = out.stdout.split(b"\1", 1)
    args = [a.decode() for a in args_part.split(b"\0")[:-1]]
    env = dict(kv.decode().split("=", 1) for kv in env_part.split(b"\0") if b"=" in kv)
    return args, {k: v for k, v in env.items() if k not in ("PWD", "SHLVL", "_", "PATH", "OLDPWD")}


def check_megatron_args(run_dir: Path, megatron_lm: Path, timeout: float = 300.0) -> MegatronCheck:
    """Run Megatron-LM's parse_args + validate_args on run_dir/megatron_args.sh with the plan's world size."""
    run_dir, megatron_lm = Path(run_dir), Path(megatron_lm)
    if not (megatron_lm / "megatron" / "training" / "arguments.py").is_file():
        raise ValueError(f"--megatron-lm {megatron_lm}: no megatron/training/arguments.py there; give the "
                         "Megatron-LM checkout (the directory holding pretrain_gpt.py)")
    script = run_dir / rundir.MEGATRON_ARGS
    if not script.is_file():
        raise ValueError(f"{script} is missing: this plan has no Megatron-LM arguments (render it with "
                         "--engine megatron)")
    plan = rundir.read_plan(run_dir)
    layout = rundir.plan_layout(plan, run_dir)
    args, exported = megatron_arguments(script)
    env = {**os.environ, **exported, "WORLD_SIZE": str(layout.world_size), "RANK": "0", "LOCAL_RANK": "0",
           "PYTHONPATH": os.pathsep.join([str(megatron_lm)] + [p for p in [os.environ.get("PYTHONPATH")] if p])}
    arch = arch_major(plan["best"]["cluster"]["gpu"])
    out = subprocess.run([sys.executable, "-c", RUNNER, str(arch), json.dumps(args)], capture_output=True,
                         text=True, env=env, timeout=timeout)
    lines = [line for line in out.stdout.splitlines() if line.startswith("{")]
    if not lines:
        tail = (out.stderr.strip().splitlines() or ["no output"])[-1]
        return MegatronCheck(False, f"Megatron-LM's argument check did not finish: {tail}")
    verdict = json.loads(lines[-1])
    if verdict.get("import_error"):
        raise ValueError(f"{verdict['error']}; install what Megatron-LM needs (torch, megatron-core, six) in "
                         "this Python")
    notes = tuple(verdict.get("notes", ()))
    if verdict["ok"]:
        f = verdict["facts"]
        return MegatronCheck(True, f"Megatron-LM accepts the arguments: world size {f['world_size']}, data "
                             f"parallel {f['data_parallel_size']}, virtual pipeline "
                             f"{f['virtual_pipeline_model_parallel_size'] or 1}, sequence parallel "
                             f"{f['sequence_parallel']}, context parallel {f['context_parallel_size']}", notes, f)
    return MegatronCheck(False, verdict["error"], notes)
