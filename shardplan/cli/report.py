"""`shardplan report` and `shardplan calibrate`: a run measured against its plan, and the profile that teaches
the planner this machine. Numbers come from launch/report.py and planner/calibration.py; printing only here."""
from __future__ import annotations

import json
from pathlib import Path

import click

from shardplan.cli.options import PlanError


def _pct(x) -> str:
    return "-" if x is None else f"{x:+.1%}"


def _num(x, unit: str = "") -> str:
    if x is None:
        return "-"
    if unit == "B":
        return f"{x / 2**30:.2f} GiB" if x >= 2**30 else f"{x / 2**20:,.0f} MiB"
    if unit == "s":
        return f"{x * 1e3:.1f} ms" if x < 1 else f"{x:.2f} s"
    if unit == "%":
        return f"{x:.1%}"
    return f"{x:,.0f}"


@click.command()
@click.argument("run_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")
@click.option("--plot", type=click.Path(dir_okay=False), help="Draw the loss, step time vs the prediction and "
              "memory to FILE (.png or .svg; needs the [plot] extra).")
def report(run_dir, as_json, plot):
    """Measured against predicted for a run directory: peak memory, step time, tokens/s, MFU.

    \b
    Reads plan.json (the prediction), metrics.jsonl (what ran) and job.json (the state); works on a finished,
    a failed (says where it stopped) and a running job. Step time is the median over the steady steps: the
    first tenth of the steps (at least one) is warm-up and excluded. Errors are measured / predicted - 1.
    Anything odd is named: a stalled step, a rank with far more memory, memory growing step over step,
    a non-finite loss, a step time far off the prediction.

    \b
    Examples:
      shardplan report runs/demo
      shardplan report runs/demo --json | jq .error
      shardplan report runs/demo --plot report.png
    """
    from shardplan.launch.report import build_report

    with PlanError.boundary():
        if not run_dir.is_dir():
            raise ValueError(f"RUN_DIR {run_dir} is not a directory; give a run directory that "
                             "`shardplan render` or `shardplan launch --model ... --out DIR` wrote")
        r = build_report(run_dir)
        if plot:
            from shardplan.launch.plots import report_figure
            report_figure(r, plot)
    series = r.pop("series")
    if as_json:
        click.echo(json.dumps(r, indent=2))
        return
    layout = r["layout"]
    click.echo(f"{r['run_dir']}: {r['model']} on {r['cluster']['world_size']}×{r['cluster']['gpu']}, dp={layout['dp']} "
               f"tp={layout['tp']} pp={layout['pp']} ZeRO-{layout['zero_stage']} micro-batch={layout['micro_batch']}"
               f"×{layout['grad_accum']}")
    of = f" of {r['planned_steps']}" if r["planned_steps"] else ""
    click.echo(f"state {r['state']}, {r['steps']}{of} steps recorded ({r['warmup_steps']} warm-up excluded, "
               f"{r['steady_steps']} steady)")
    if r["stopped"]:
        click.echo(f"  {r['stopped']}")
    p, m, e = r["predicted"], r["measured"], r["error"]
    click.echo(f"\n  {'':22} {'predicted':>12} {'measured':>12} {'error':>8}")
    for label, key, unit in (("peak memory (worst)", "peak_bytes", "B"), ("step time (median)", "step_time_s", "s"),
                             ("tokens/s", "tokens_per_s", ""), ("MFU", "mfu", "%")):
        click.echo(f"  {label:22} {_num(p[key], unit):>12} {_num(m[key], unit):>12} {_pct(e.get(key)):>8}")
    ranks = m["peak_bytes_per_rank"]
    if len(ranks) > 1 and len(set(ranks)) > 1:
        click.echo("  peak per rank: " + ", ".join(f"{i}: {_num(b, 'B')}" for i, b in enumerate(ranks)))
    loss = r["loss"]
    if loss["first"] is not None:
        click.echo(f"\n  loss {loss['first']:.4f} (step {series['step'][0]}) -> {loss['last']:.4f} "
                   f"(step {series['step'][-1]}), lowest {loss['min']:.4f}" if loss["min"] is not None else
                   f"\n  loss {loss['first']} -> {loss['last']}")
    for line in r["oddities"]:
        click.echo(f"  ! {line}")
    for line in r["notes"]:
        click.echo(f"  note: {line}")
    if plot:
        click.echo(f"wrote {plot}")


@click.command()
@click.argument("run_dirs", nargs=-1, type=click.Path(file_okay=False, path_type=Path))
@click.option("--measurements", "measurement_files", multiple=True, type=click.Path(dir_okay=False, path_type=Path),
              help="JSONL: each line an `estimate --batch` request plus \"measured\": {\"peak_bytes\": int, "
                   "\"step_time_s\": float}. Repeatable.")
@click.option("--out", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="Where to write the calibration profile (JSON).")
@click.option("--no-loo", is_flag=True, help="Skip the leave-one-out refits (a few seconds per GPU type).")
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON (the profile's fits).")
def calibrate(run_dirs, measurement_files, out, no_loo, as_json):
    """Fit the time model's efficiency constants of each GPU type to measured steps; write a profile.

    \b
    The constants (the same for every layout, bounded): matmul_efficiency (share of the dense peak
    large GEMMs reach, 0.3-1), host_overhead (host seconds per op relative to the calibration host,
    0.25-4), hbm_efficiency (share of peak HBM bandwidth, 0.4-1); with fewer than 6 timed points of a
    GPU type only the first len/2 are fitted. Memory is not fitted (it matches to ~1%); its error is shown.
    Prints the step-time error (mean |measured/predicted - 1|) before, after, and leave-one-out: each
    point predicted by a fit that did not see it, the number to trust.

    \b
    Examples:
      shardplan calibrate --measurements benchmarks/results/h200_gpt2_measurements.jsonl --out h200.json
      shardplan calibrate runs/a runs/b --out mycluster.json
      shardplan plan --model gpt2-xl --cluster 1xH200 --calibration h200.json
    """
    from shardplan.launch.calibration import read_measurements, run_measurement, write_profile
    from shardplan.planner.calibration import calibrate as fit

    if not run_dirs and not measurement_files:
        raise PlanError("nothing to calibrate from: give --measurements FILE.jsonl and/or RUN_DIR arguments")
    with PlanError.boundary():
        points = [m for f in measurement_files for m in read_measurements(f)] + [run_measurement(d) for d in run_dirs]
        calibration, fits = fit(points, loo=not no_loo)
        sources = [str(f) for f in measurement_files] + [str(d) for d in run_dirs]
        profile = write_profile(out, calibration, fits, points, sources)
    if as_json:
        click.echo(json.dumps({"out": str(out), "constants": profile["constants"], "fits": profile["fits"]}, indent=2))
        return
    for f in fits:
        d = f.to_dict()
        click.echo(f"{f.gpu}: {f.points} points, {f.timed} timed")
        if not f.fitted:
            click.echo("  no timed points: nothing fitted (memory only)")
        for name, value in f.fitted.items():
            click.echo(f"  {name:18} {f.defaults[name]:.4g} -> {value:.4g}")
        if f.timed:
            loo = _num(d["step_mape_leave_one_out"], "%") if f.step_errors_loo else "skipped"
            click.echo(f"  step time, mean |measured/predicted - 1|: before {_num(d['step_mape_before'], '%')}, "
                       f"after {_num(d['step_mape_after'], '%')} (in sample), leave-one-out {loo}")
        if f.peak_errors:
            click.echo(f"  peak memory, mean |measured/predicted - 1|: {_num(d['peak_mape'], '%')} (not fitted)")
    click.echo(f"wrote {out}")
