"""How the planner explains and shows expert parallelism: the reasons' "ep=8 over ep=4" lines with numbers, compare's
"expert parallel" row (MoE models only, before the engine rows), and the console's layout line and grids."""
import dataclasses

from rich.console import Console

from shardplan.cli.plan_print import grid, layout_line, print_compare
from shardplan.planner.cluster import parse_cluster
from shardplan.planner.compare import compare
from shardplan.planner.estimate import Training
from shardplan.planner.evaluate import evaluate
from shardplan.planner.layout import Layout
from shardplan.planner.plan import plan
from shardplan.planner.presets import get_model

MIXTRAL = get_model("mixtral-8x7b")


def reasons(model, cluster, engine="deepspeed", **fixed):
    return plan(model, parse_cluster(cluster), Training(seq_len=4096, engine=engine), **fixed).reasons


def line(lines, start):
    found = [r for r in lines if r.startswith(start)]
    assert len(found) == 1, lines
    return found[0]


def test_ep_reason_names_the_alternative_and_the_all_to_all_inside_a_node():
    lines = reasons(MIXTRAL, "4x8xH100-80GB")
    ep = line(lines, "ep=8 over ep=")
    assert ("faster than ep=" in ep or "needs" in ep) and " s per step" in ep
    assert "1 of 8 experts per GPU, expert data parallel 4" in ep
    assert "inside an NVLink domain (450 GB/s)" in ep
    assert "experts over ep 8 × etp 1" in lines[0]


def test_ep_reason_says_when_the_all_to_all_leaves_the_node():
    # 4 GPUs per node: an ep group of 8 spans two nodes
    ep = line(reasons(MIXTRAL, "8x4xH100-80GB", ep=8), "ep=8")
    assert "across nodes" in ep


def test_megatron_reasons_cover_etp():
    lines = reasons(MIXTRAL, "4x8xH100-80GB", engine="megatron")
    assert any(r.startswith("ep=") and " over ep=" in r for r in lines), lines
    etp = line(lines, "etp=")
    assert " over etp=" in etp and ("faster than" in etp or "GB" in etp)


def test_dense_reasons_have_no_expert_lines():
    lines = reasons(get_model("llama-2-7b"), "8xA100-80GB")
    assert not any(r.startswith(("ep=", "etp=")) for r in lines)
    assert "experts" not in lines[0]


def test_compare_adds_the_expert_parallel_row_for_moe_models_only():
    rows = compare(MIXTRAL, parse_cluster("4x8xH100-80GB"), Training(seq_len=4096))
    names = [n for n, _ in rows]
    assert "expert parallel" in names and names[-2:] == ["best on DeepSpeed", "best on Megatron-core"]
    assert names.index("expert parallel") < names.index("best on DeepSpeed")
    by_name = dict(rows)
    assert by_name["expert parallel"].layout.ep > 1
    # the classic methods keep the experts whole, so the row shows what splitting them buys
    assert all(e.layout.ep == 1 for n, e in rows if n in ("data parallel", "ZeRO-1", "ZeRO-2"))
    assert by_name["expert parallel"].tokens_per_s > by_name["ZeRO-1"].tokens_per_s
    dense = [n for n, _ in compare(get_model("llama-2-7b"), parse_cluster("8xA100-80GB"),
                                   Training(seq_len=4096, global_batch=64))]
    assert "expert parallel" not in dense


def test_layout_line_and_grid_show_ep_and_etp_only_when_split():
    e = evaluate(MIXTRAL, parse_cluster("4x8xH100-80GB"),
                 Layout(dp=8, tp=2, pp=2, zero_stage=1, ep=4, etp=2, sequence_parallel=True),
                 Training(seq_len=4096, engine="megatron"))
    assert " ep=4 etp=2 " in layout_line(e)
    assert grid(e.layout) == "8×2sp×2 ep4 etp2"
    one = dataclasses.replace(e, layout=Layout(dp=32, zero_stage=1, ep=8))
    assert grid(one.layout) == "32×1×1 ep8" and "etp" not in layout_line(one)
    assert grid(Layout(dp=4, tp=2)) == "4×2×1"


def test_compare_table_prints_the_expert_split():
    rows = compare(MIXTRAL, parse_cluster("4x8xH100-80GB"), Training(seq_len=4096))
    console = Console(record=True, width=250)
    print_compare(rows, console)
    text = console.export_text()
    row = next(t for t in text.splitlines() if t.startswith("expert parallel"))
    assert " ep8 " in row
