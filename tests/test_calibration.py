"""`shardplan calibrate` and --calibration: fitting the time model's named constants on real H200 measurements
(../shared/calibration as benchmarks/calibration_requests.py converts them), tested out of sample.

The catalog's H200 constants were themselves tuned on these measurements, so from them there is little to
learn (the fit moves each constant by a few percent, and the leave-one-out error stays near the error before).
The out-of-sample tests therefore start from a card whose constants are off the way another machine's are
(a host twice as slow, or slower kernels), fit on one part of the data and score the other part.
"""
import json
import sys
from dataclasses import replace
from pathlib import Path

import pytest
from click.testing import CliRunner

from shardplan.cli import main
from shardplan.launch.calibration import read_measurements
from shardplan.planner.calibration import Calibration, Measurement, calibrate, fit_constants, mape, step_error

ROOT = Path(__file__).resolve().parents[1]
MEASUREMENTS = ROOT / "benchmarks" / "results" / "h200_gpt2_measurements.jsonl"
POINTS = read_measurements(MEASUREMENTS)


def run(*args, input=None):
    return CliRunner().invoke(main, list(args), input=input)


def off(points, **constants):
    """The same measurements, predicted from a card whose constants are these."""
    return [replace(m, cluster=replace(m.cluster, gpu=replace(m.cluster.gpu, **constants))) for m in points]


def held_out_error(train, test):
    values = fit_constants(train)
    return mape([step_error(m) for m in test]), mape([step_error(m, values) for m in test]), values


def test_measurement_lines_predict_what_accuracy_py_predicts():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import accuracy
    from shardplan.planner.timing import estimate_time

    rows = [r for _, r in accuracy.load_rows() if "H200" in r["gpu"]]
    assert len(rows) == len(POINTS) == 42
    for m, r in zip(POINTS, rows):
        model, cluster, layout, training = accuracy.point_inputs(r)
        assert estimate_time(m.model, m.cluster, m.layout, m.training) == estimate_time(model, cluster, layout, training)
        assert m.step_time_s == r["step_s"] and m.peak_bytes == r["peak_allocated"]


@pytest.mark.parametrize("constants", [{"host_overhead": 2.0}, {"host_overhead": 0.5},
                                       {"matmul_efficiency": 0.5, "hbm_efficiency": 0.5}])
def test_fit_on_124m_improves_774m(constants):
    points = off(POINTS, **constants)
    small = [m for m in points if m.model.n_layers == 12]
    large = [m for m in points if m.model.n_layers == 36]
    before, after, _ = held_out_error(small, large)
    assert after < 0.12 and after < 0.5 * before, (before, after)


def test_fit_on_even_rows_improves_odd_rows():
    points = off(POINTS, host_overhead=2.0, matmul_efficiency=0.5, hbm_efficiency=0.5)
    before, after, values = held_out_error(points[::2], points[1::2])
    assert after < 0.12 < 0.4 < before
    assert values["host_overhead"] == pytest.approx(1.0, abs=0.1)   # recovers the calibration host's speed


def test_from_the_catalog_constants_the_fit_stays_put_and_loo_is_honest():
    cal, fits = calibrate(POINTS)
    (fit,) = fits
    d = fit.to_dict()
    assert fit.gpu == "H200" and fit.timed == 42 and set(fit.fitted) == {"matmul_efficiency", "host_overhead",
                                                                          "hbm_efficiency"}
    assert d["step_mape_after"] <= d["step_mape_before"]                  # in sample it cannot get worse
    assert d["step_mape_after"] <= d["step_mape_leave_one_out"]           # out of sample is the honest number
    assert d["step_mape_leave_one_out"] < d["step_mape_before"] + 0.01    # and does not overfit
    assert d["peak_mape"] < 0.02


def test_few_points_fit_fewer_constants_and_bounds_hold():
    assert set(fit_constants(POINTS[:3])) == {"matmul_efficiency"}
    with pytest.raises(ValueError, match=r"matmul_efficiency\(1.5\) must be in \[0.3, 1.0\]"):
        Calibration.from_values({"H200": {"matmul_efficiency": 1.5}})
    with pytest.raises(ValueError, match="unknown constant 'fudge'"):
        Calibration.from_values({"H200": {"fudge": 1.0}})


def test_calibrate_cli_writes_a_profile_that_plan_estimate_compare_use(tmp_path):
    profile = tmp_path / "h200.json"
    r = run("calibrate", "--measurements", str(MEASUREMENTS), "--out", str(profile), "--no-loo")
    assert r.exit_code == 0, r.output
    assert "before" in r.output and "after" in r.output
    p = json.loads(profile.read_text())
    assert {"shardplan_version", "constants", "fits", "data", "parameters", "sources"} <= set(p)
    assert len(p["data"]) == 42 and set(p["constants"]) == {"H200"}
    # a profile the time model cannot tell from the catalog changes nothing; a slower host changes H200 only
    p["constants"]["H200"] = {"host_overhead": 3.0}
    profile.write_text(json.dumps(p))
    args = ["--model", "gpt2", "--micro-batch", "1", "--json"]
    for card, changes in (("1xH200", True), ("1xH100", False)):
        plain = json.loads(run("estimate", "--cluster", card, *args).stdout)["step_time_s"]
        tuned = json.loads(run("estimate", "--cluster", card, *args, "--calibration", str(profile)).stdout)["step_time_s"]
        assert (tuned > 1.5 * plain) if changes else tuned == plain
    line = json.dumps({"model": "gpt2", "cluster": "1xH200", "layout": {"micro_batch": 1}}) + "\n"
    batch = [json.loads(run("estimate", "--batch", "-", *extra, input=line).stdout)["step_time_s"]
             for extra in ([], ["--calibration", str(profile)])]
    assert batch[1] > 1.5 * batch[0]
    for command in ("plan", "compare"):
        r = run(command, "--model", "gpt2", "--cluster", "1xH200", "--global-batch", "8", "--json",
                "--calibration", str(profile))
        assert r.exit_code == 0, r.output


@pytest.mark.parametrize("args, needle", [
    (["calibrate", "--out", "x.json"], "nothing to calibrate from"),
    (["calibrate", "--measurements", "{bad}", "--out", "{tmp}/p.json"], "not a measurement line"),
    (["plan", "--model", "gpt2", "--cluster", "1xH200", "--calibration", "{bad}"], "is not JSON"),
    (["plan", "--model", "gpt2", "--cluster", "1xH200", "--calibration", "/nonexistent.json"], "cannot read it"),
])
def test_bad_input_exit_2_one_line(tmp_path, args, needle):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"model": "gpt2"\n')
    r = run(*[a.format(bad=bad, tmp=tmp_path) for a in args])
    assert r.exit_code == 2 and needle in r.output and len(r.output.strip().splitlines()) == 1, r.output
