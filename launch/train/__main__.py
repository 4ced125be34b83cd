"""shardplan's GPT-2 training program, driven by a run directory's plan.json and ds_config.json.

Usually started by the run directory's scripts (shardplan render writes them; shardplan launch runs them).
Examples:
  shardplan launch runs/demo                     # launch.sh: the deepspeed launcher on this node
  deepspeed --num_gpus 2 --module shardplan.launch.train --run-dir runs/demo --steps 50
  torchrun --nproc-per-node 2 -m shardplan.launch.train --run-dir runs/demo --resume --steps 100
  python -m shardplan.launch.train --run-dir runs/one --data corpus/ --tokenizer gpt2-tok/ --init-from gpt2/

Without --data it trains on a corpus generated from Python's standard-library docstrings (nothing is
downloaded). Writes <run-dir>/metrics.jsonl (one JSON line per step, a summary at the end) and
checkpoints/ (step_<N> tags, `latest` moved only after every rank saved). Bad input: exit code 2.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m shardplan.launch.train", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run-dir", required=True, type=Path, help="directory with plan.json and ds_config.json")
    p.add_argument("--steps", type=int, default=100, help="train until this optimizer step (counting resumed ones)")
    p.add_argument("--data", help="a text file or a directory of *.txt files (default: the embedded stdlib corpus)")
    p.add_argument("--tokenizer", help="directory with tokenizer.json, or GPT-2 vocab.json + merges.txt "
                                       "(default: a byte-level BPE trained on the data, cached in the run dir)")
    p.add_argument("--init-from", help="local Hugging Face GPT-2 directory to start from (save_pretrained output)")
    p.add_argument("--resume", action="store_true", help="continue from checkpoints/latest")
    p.add_argument("--overwrite-checkpoints", action="store_true",
                   help="start fresh even though the run dir already has checkpoints")
    p.add_argument("--checkpoint-every", type=int, default=0, help="save every N steps (always at the end)")
    p.add_argument("--seed", type=int, default=0, help="weights and data order")
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                   help="torch.compile the model through the DeepSpeed engine (default: plan.json's "
                        "training.compile, which render turns on for GPU layouts that support it)")
    p.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if args.local_rank is not None:
        os.environ.setdefault("LOCAL_RANK", str(args.local_rank))
    from .checkpoint import CheckpointError
    from .config import RunConfigError
    from .data import DataError
    from .loop import Options, UserError, run

    opts = Options(run_dir=args.run_dir, steps=args.steps, data=args.data, tokenizer=args.tokenizer,
                   init_from=args.init_from, resume=args.resume, overwrite_checkpoints=args.overwrite_checkpoints,
                   checkpoint_every=args.checkpoint_every, seed=args.seed, compile=args.compile)
    try:
        summary = run(opts)
    except (RunConfigError, CheckpointError, DataError, UserError) as e:
        # Every rank reaches the same verdict from the same files; rank 0 says it once.
        if os.environ.get("RANK", "0") == "0":
            print(f"error: {e}", file=sys.stderr, flush=True)
        _abandon_process_group()
        return 2
    if summary is not None:
        print(json.dumps({k: summary[k] for k in ("steps", "final_loss", "tokens_per_s", "checkpoint")}), flush=True)
    return 0


def _abandon_process_group() -> None:
    try:
        import torch.distributed as dist
        if dist.is_initialized():
            dist.destroy_process_group()
    except Exception:
        pass


if __name__ == "__main__":
    exit_code = main()
    # The process group and the engine are already torn down and every file is closed; skipping the
    # interpreter's own finalization avoids a rare abort in native communication threads' destructors
    # ("terminate called without an active exception", seen once in ~40 gloo runs) that would turn a
    # finished run into a failed one.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(exit_code)
