"""`shardplan report`: predicted (plan.json) vs measured (metrics.jsonl) for finished, failed and running runs,
the JSON contract, warm-up excluded from the median, the oddities it names, bad input (exit 2, one line)."""
import json
import os
import time

import pytest
from click.testing import CliRunner

from shardplan.cli import main
from shardplan.launch.run.jobs import JobRecord, write_job

CONTRACT = {"state", "steps", "predicted", "measured", "error"}
KEYS = {"peak_bytes", "step_time_s", "tokens_per_s", "mfu"}


def run(*args):
    return CliRunner().invoke(main, list(args))


def make_run(tmp_path, step_times, peaks=None, losses=None, per_rank=None, state="COMPLETED", steps_arg=None, **job):
    """A run directory: the plan.json `shardplan plan --json` writes, metrics.jsonl lines as the training
    program writes them, and a job record."""
    out = run("plan", "--model", "gpt2-demo", "--cluster", "2xCPU", "--json")
    assert out.exit_code == 0, out.output
    (tmp_path / "plan.json").write_text(out.stdout)
    lines = []
    for i, t in enumerate(step_times, 1):
        peak = peaks[i - 1] if peaks else 100 * 2**20
        ranks = per_rank[i - 1] if per_rank else [peak, peak]
        lines.append({"step": i, "loss": (losses or [8.0 - 0.1 * k for k in range(len(step_times))])[i - 1],
                      "tokens_per_s": 2048 / t, "mfu": None, "step_time_s": t, "peak_allocated_bytes": max(ranks),
                      "peak_allocated_bytes_per_rank": ranks, "world_size": 2})
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    record = dict(scheduler="local", argv=["x"], started=time.time() - 5, host=os.uname().nodename,
                  train_args=["--steps", str(steps_arg or len(step_times))])
    if state:
        record.update(state=state, finished=time.time(), exit_code=0 if state == "COMPLETED" else 1)
    record.update(job)
    write_job(tmp_path, JobRecord(**record))
    return tmp_path


def report_json(path):
    r = run("report", str(path), "--json")
    assert r.exit_code == 0, r.output
    return json.loads(r.stdout)


def test_finished_run_json_contract_and_signed_relative_errors(tmp_path):
    out = report_json(make_run(tmp_path, [5.0] + [0.2] * 9))
    assert CONTRACT <= set(out) and out["state"] == "COMPLETED" and out["steps"] == 10
    assert set(out["predicted"]) == KEYS and set(out["measured"]) == KEYS | {"peak_bytes_per_rank"}
    assert set(out["error"]) == {"peak_bytes", "step_time_s", "tokens_per_s"}
    # the 5 s warm-up step is excluded: the median is the steady 0.2 s
    assert out["warmup_steps"] == 1 and out["measured"]["step_time_s"] == pytest.approx(0.2)
    p, m = out["predicted"], out["measured"]
    assert out["error"]["step_time_s"] == pytest.approx(m["step_time_s"] / p["step_time_s"] - 1)
    assert out["error"]["peak_bytes"] == pytest.approx(m["peak_bytes"] / p["peak_bytes"] - 1)
    assert out["error"]["tokens_per_s"] == pytest.approx(m["tokens_per_s"] / p["tokens_per_s"] - 1)
    assert out["stopped"] is None
    assert out["loss"]["first"] == pytest.approx(8.0) and out["loss"]["last"] == pytest.approx(7.1)


def test_failed_run_says_where_it_stopped(tmp_path):
    path = make_run(tmp_path, [1.0, 0.2, 0.2], state="FAILED", steps_arg=10, reason="rank 1 exited with code 1",
                    failed_rank=1, failed_log="logs/rank1.log")
    out = report_json(path)
    assert out["state"] == "FAILED"
    assert "after step 3 of 10" in out["stopped"] and "rank 1" in out["stopped"]
    text = run("report", str(path)).output
    assert "after step 3 of 10" in text


def test_running_run(tmp_path):
    path = make_run(tmp_path, [1.0, 0.2], state=None, steps_arg=50, pid=os.getpid())  # this process: alive
    out = report_json(path)
    assert out["state"] == "RUNNING" and out["stopped"] == "still running: step 2 of 50 so far"


def test_oddities_memory_growth_slow_step_and_rank_imbalance(tmp_path):
    peaks = [100 * 2**20 + k * 10 * 2**20 for k in range(10)]
    per_rank = [[p, p // 2] for p in peaks]
    times = [2.0, 0.2, 0.2, 0.2, 2.0, 0.2, 0.2, 0.2, 0.2, 0.2]
    out = report_json(make_run(tmp_path, times, peaks=peaks, per_rank=per_rank))
    text = " | ".join(out["oddities"])
    assert "peak memory grew" in text and "step 5 took" in text and "rank 0's peak memory" in text


def test_clean_run_names_no_memory_or_stall_oddity(tmp_path):
    out = report_json(make_run(tmp_path, [3.0] + [0.2] * 9))
    assert not [o for o in out["oddities"] if "grew" in o or "took" in o or "rank" in o]


def test_report_plot_svg_has_loss_prediction_and_measured_peak(tmp_path):
    (tmp_path / "run").mkdir()
    path = make_run(tmp_path / "run", [3.0] + [0.2] * 9)
    svg = tmp_path / "r.svg"
    r = run("report", str(path), "--plot", str(svg))
    assert r.exit_code == 0, r.output
    text = svg.read_text()
    for gid in ("loss-curve", "step-times", "warmup-times", "predicted-line", "measured-0"):
        assert f'id="{gid}"' in text, gid
    assert text.count('id="bar-0-') == 5 and "measured peak" in text and "warm-up (excluded)" in text


@pytest.mark.parametrize("args, needle", [
    (["report", "/nonexistent/run"], "is not a directory"),
    (["report", "{tmp}"], "plan.json: missing"),
])
def test_bad_input_exit_2_one_line(tmp_path, args, needle):
    r = run(*[a.format(tmp=tmp_path) for a in args])
    assert r.exit_code == 2 and needle in r.output and len(r.output.strip().splitlines()) == 1, r.output
