"""benchmarks/moe_published.py's prediction path on every published row: the layouts are ones the engine accepts
(uneven stages, VP dropped where it cannot divide them), the numbers are finite and the MoE terms are present.
Its accuracy is reported, not asserted here."""
import math
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import moe_published  # noqa: E402


@pytest.mark.parametrize("row", moe_published.ROWS, ids=lambda r: f"{r[2]}-{r[3]}x{r[1]}")
def test_every_published_row_is_predicted(row):
    r = moe_published.predict(row)
    lay = r["layout"]
    assert lay["ep"] == row[11] and lay["dp"] * lay["tp"] * lay["pp"] * lay["cp"] == row[3]
    assert lay["micro_batch"] * lay["grad_accum"] * lay["dp"] == row[4]
    assert math.isfinite(r["predicted_s"]) and r["predicted_s"] > 0 and math.isfinite(r["error"])
    assert r["time"]["ep_comm_s"] > 0 and r["measured_s"] == pytest.approx(row[4] * row[6] / (row[-1] * row[3]))


def test_deepseek_v3_stages_are_uneven_and_interleaving_only_where_it_divides():
    rows = {(r[2], r[3]): moe_published.layout_for(r) for r in moe_published.ROWS}
    v3 = rows[("deepseek-v3", 2048)]
    assert sum(v3.pp_layers) == 61 and v3.pp == 16 and v3.vpp == 1
    assert rows[("mixtral-8x22b", 256)].vpp == 14
