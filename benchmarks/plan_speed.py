"""How fast `shardplan plan` is: wall time of the command (interpreter start included) and layouts per second.

    python benchmarks/plan_speed.py [--repeat 5] [--out benchmarks/results/plan_speed.json]

Cases: small (gpt2 on 1xH200), medium (llama-3-70b on 8x8xH100-80GB), huge (the 1T-parameter Megatron GPT
on 384x8xA100-80GB = 3072 GPUs; the target is under 1 s wall). Each runs `shardplan plan ... --json` as a
subprocess `--repeat` times (median reported); the search alone is also timed in-process, which gives
layouts evaluated per second. Last, `estimate --batch -` scores --batch-lines layouts in one process.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

CASES = (("small", "gpt2", "1xH200"), ("medium", "llama-3-70b", "8x8xH100-80GB"),
         ("huge", "megatron-gpt-1t", "384x8xA100-80GB"))
TARGET_S = 1.0


def command() -> list[str]:
    exe = shutil.which("shardplan", path=str(Path(sys.executable).parent)) or shutil.which("shardplan")
    return [exe] if exe else [sys.executable, "-c", "from shardplan.cli import main; main()"]


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def in_process(model_name: str, cluster_spec: str, repeat: int) -> tuple[float, int]:
    from shardplan.planner import Training, get_cluster, get_model, plan

    model, cluster = get_model(model_name), get_cluster(cluster_spec)
    training = Training(seq_len=model.default_seq_len)
    times, evaluated = [], 0
    for _ in range(repeat):
        start = time.perf_counter()
        evaluated = plan(model, cluster, training).evaluated
        times.append(time.perf_counter() - start)
    return statistics.median(times), evaluated


def run_case(name: str, model: str, cluster: str, repeat: int) -> dict:
    argv = command() + ["plan", "--model", model, "--cluster", cluster, "--json"]
    walls, out = [], None
    for _ in range(repeat):
        start = time.perf_counter()
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=60)
        walls.append(time.perf_counter() - start)
        if proc.returncode != 0:
            raise SystemExit(f"{' '.join(argv[-7:])} failed ({proc.returncode}): {proc.stderr.strip()}")
        out = json.loads(proc.stdout)
    search_s, evaluated = in_process(model, cluster, repeat)
    layout = out["best"]["layout"]
    return {"case": name, "model": model, "cluster": cluster, "world_size": out["best"]["cluster"]["world_size"],
            "wall_s_median": statistics.median(walls), "wall_s_min": min(walls), "search_s_median": search_s,
            "evaluated": evaluated, "layouts_per_s": evaluated / search_s if search_s else None,
            "best": layout, "tokens_per_s": out["best"]["tokens_per_s"]}


def batch_case(lines: int) -> dict:
    """`estimate --batch -` scoring many layouts in one process: requests per second, start-up included."""
    import itertools

    grid = itertools.cycle(itertools.product(range(4), (1, 2, 4, 8, 16), (1, 2, 4, 8), (1024, 2048, 4096, 8192)))
    requests = "".join(json.dumps({"model": "llama-3-8b", "cluster": "8xH100-80GB",
                                   "layout": {"zero": z, "micro_batch": mb, "tp": tp}, "training": {"seq": seq}}) + "\n"
                       for (z, mb, tp, seq), _ in zip(grid, range(lines)))
    start = time.perf_counter()
    proc = subprocess.run(command() + ["estimate", "--batch", "-"], input=requests, capture_output=True, text=True,
                          timeout=300)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"estimate --batch failed ({proc.returncode}): {proc.stderr.strip()}")
    assert len(proc.stdout.splitlines()) == lines
    return {"case": "batch", "requests": lines, "wall_s": wall, "requests_per_s": lines / wall}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--batch-lines", type=int, default=2000)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "plan_speed.json"))
    args = parser.parse_args()
    rows = [run_case(*case, repeat=args.repeat) for case in CASES]
    print(f"{'case':7} {'model':17} {'cluster':17} {'GPUs':>5} {'wall s':>7} {'search ms':>9} "
          f"{'layouts':>7} {'layouts/s':>10}  best layout")
    for r in rows:
        l = r["best"]
        print(f"{r['case']:7} {r['model']:17} {r['cluster']:17} {r['world_size']:5} {r['wall_s_median']:7.3f} "
              f"{r['search_s_median'] * 1e3:9.1f} {r['evaluated']:7} {r['layouts_per_s']:10,.0f}  "
              f"dp{l['dp']} tp{l['tp']} pp{l['pp']} z{l['zero_stage']} mb{l['micro_batch']}x{l['grad_accum']} "
              f"{l['checkpointing']} {l['offload']}")
    batch = batch_case(args.batch_lines)
    print(f"estimate --batch: {batch['requests']} layouts (llama-3-8b on 8xH100-80GB) in {batch['wall_s']:.2f} s "
          f"= {batch['requests_per_s']:,.0f} per second, start-up included")
    huge = rows[-1]["wall_s_median"]
    print(f"huge case: {huge:.3f} s wall (target < {TARGET_S} s): {'OK' if huge < TARGET_S else 'TOO SLOW'}")
    result = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "machine": {"cpu": cpu_model(), "cores": os.cpu_count(), "python": platform.python_version(),
                          "platform": platform.platform()},
              "repeat": args.repeat, "target_huge_wall_s": TARGET_S, "cases": rows, "batch": batch}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
