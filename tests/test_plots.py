"""--plot on plan, compare (report's picture: tests/test_report.py): the files' content, not only that they exist —
bars per layout and part, the usable-capacity line, the chosen layout named, and the [plot] extra's error."""
import json
import subprocess
import sys

from click.testing import CliRunner

from shardplan.cli import main
from shardplan.launch.plots import PARTS


def run(*args):
    return CliRunner().invoke(main, list(args))


def test_plan_svg_bars_lines_and_labels(tmp_path):
    svg = tmp_path / "plan.svg"
    r = run("plan", "--model", "gpt2-xl", "--cluster", "8xH100", "--top", "3", "--plot", str(svg))
    assert r.exit_code == 0, r.output
    text = svg.read_text()
    plan = json.loads(run("plan", "--model", "gpt2-xl", "--cluster", "8xH100", "--top", "3", "--json").stdout)
    bars = 1 + len(plan["candidates"])
    assert text.count('id="bar-') == bars * len(PARTS)
    for name, _, _ in PARTS:
        assert f">{name}<" in text
    assert 'id="usable-line"' in text and 'id="fits"' in text and 'id="chosen"' in text
    layout = plan["best"]["layout"]
    assert f"chosen: {layout['dp']}×{layout['tp']}×{layout['pp']} Z{layout['zero_stage']}" in text
    assert "layouts that fit" in text


def test_compare_svg_one_bar_per_method(tmp_path):
    svg = tmp_path / "compare.svg"
    r = run("compare", "--model", "gpt2-xl", "--cluster", "8xH100", "--plot", str(svg))
    assert r.exit_code == 0, r.output
    rows = json.loads(run("compare", "--model", "gpt2-xl", "--cluster", "8xH100", "--json").stdout)
    text = svg.read_text()
    assert text.count('id="bar-') == len(rows) * len(PARTS)
    for row in rows:
        assert row["method"] in text
    assert "★ fastest" in text


def test_png_is_a_png(tmp_path):
    png = tmp_path / "plan.png"
    assert run("plan", "--model", "gpt2", "--cluster", "1xH200", "--plot", str(png)).exit_code == 0
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20_000


def test_bad_suffix_and_missing_extra_exit_2_naming_the_fix(tmp_path):
    r = run("plan", "--model", "gpt2", "--cluster", "1xH200", "--plot", str(tmp_path / "p.pdf"))
    assert r.exit_code == 2 and "must be .png or .svg" in r.output
    # without matplotlib installed (None in sys.modules makes its import fail, as when the extra is missing)
    code = ("import sys; sys.modules['matplotlib'] = None; from shardplan.cli import main; "
            f"main(['plan', '--model', 'gpt2', '--cluster', '1xH200', '--plot', r'{tmp_path / 'p.png'}'])")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert p.returncode == 2 and "pip install 'shardplan[plot]'" in p.stderr and "Traceback" not in p.stderr
