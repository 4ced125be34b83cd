"""Pictures of plans, comparisons and runs (`--plot FILE`, png or svg by the suffix), drawn with matplotlib,
the optional extra `shardplan[plot]`: imported only here, only when a picture is asked for.

- plan / compare: stacked bars of the memory per GPU (params, grads, optimizer, activations, other) with the
  usable-capacity line, in the form the Ultra-Scale Playbook made familiar; and tokens/s against memory per
  GPU for every evaluated layout, the ones that fit marked and the chosen one named.
- report: the loss curve, measured step time against the predicted line, and the predicted memory
  breakdown with the measured peak marked.
Every bar, point set and line carries an SVG id (gid) so a test (or a script) can count them in the file.
"""
from __future__ import annotations

import os
from pathlib import Path

from shardplan.planner.cluster import GB

PARTS = (("params", "params_bytes", "#4C72B0"), ("grads", "grads_bytes", "#C44E52"),
         ("optimizer", "optimizer_bytes", "#DD8452"), ("activations", "activations_bytes", "#55A868"),
         ("other", "other_bytes", "#8172B3"))
FORMATS = (".png", ".svg")


class PlotError(ValueError):
    """No matplotlib, or a file name whose suffix names no format we write."""


def check_path(path: str | os.PathLike) -> Path:
    path = Path(path)
    if path.suffix.lower() not in FORMATS:
        raise PlotError(f"--plot {path}: the suffix must be .png or .svg (it names the format)")
    return path


def _pyplot():
    try:
        import matplotlib
    except ImportError:
        raise PlotError("--plot needs matplotlib, the optional extra: pip install 'shardplan[plot]'") from None
    matplotlib.use("Agg")
    matplotlib.rcParams["svg.fonttype"] = "none"      # text stays text in SVG: searchable, testable
    matplotlib.rcParams["svg.hashsalt"] = "shardplan"  # stable ids: the same plot gives the same file
    import matplotlib.pyplot as plt
    return plt


def _save(fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight", metadata={"Date": None} if path.suffix == ".svg" else None)
    import matplotlib.pyplot as plt
    plt.close(fig)
    return path


def memory_bars(ax, items: list[tuple[str, dict]], capacity: int, headroom: float, measured: dict | None = None):
    """Stacked bars, one per (label, MemoryBreakdown.to_dict()), GB per GPU, with the usable-capacity line."""
    for i, (label, mem) in enumerate(items):
        bottom = 0.0
        for name, key, colour in PARTS:
            value = mem[key] / GB
            bar = ax.bar(i, value, bottom=bottom, color=colour, width=0.6, label=name if i == 0 else None)
            bar.patches[0].set_gid(f"bar-{i}-{name}")
            bottom += value
    usable = capacity * (1 - headroom) / GB
    top = max([sum(mem[k] for _, k, _ in PARTS) for _, mem in items] + list((measured or {}).values())) / GB
    if usable <= 3 * top:
        ax.axhline(usable, color="black", linestyle="--", linewidth=1, gid="usable-line")
        ax.text(len(items) - 0.5, usable, f" usable {usable:.1f} GB", va="bottom", ha="right", fontsize=8)
    else:   # a line far above the bars would flatten them: say where it is instead
        ax.text(0.98, 0.98, f"usable {usable:.1f} GB (off the scale)", va="top", ha="right", fontsize=8,
                transform=ax.transAxes, gid="usable-note")
    ax.set_ylim(0, max(top, usable if usable <= 3 * top else 0) * 1.18)
    for i, peak in (measured or {}).items():
        ax.plot([i - 0.38, i + 0.38], [peak / GB] * 2, color="black", linewidth=2.5, gid=f"measured-{i}")
        ax.text(i + 0.4, peak / GB, f"measured peak\n{peak / GB:.2f} GB", va="center", fontsize=8)
    ax.set_xticks(range(len(items)), [label for label, _ in items], fontsize=8)
    ax.set_ylabel("memory per GPU (GB)")
    ax.legend(fontsize=8, loc="upper left" if len(items) > 1 else "center right", ncol=len(PARTS) if len(items) > 1 else 1)


def layout_label(layout: dict) -> str:
    ckpt = {"none": "", "full": " ckpt"}.get(layout["checkpointing"], " " + layout["checkpointing"])
    off = "" if layout.get("offload", "none") == "none" else f" off:{layout['offload']}"
    return (f"{layout['dp']}×{layout['tp']}×{layout['pp']} Z{layout['zero_stage']}\n"
            f"mb {layout['micro_batch']}×{layout['grad_accum']}{ckpt}{off}")


def _scatter(ax, fits, misses, chosen, usable_gb: float, names=None) -> None:
    """tokens/s against GB per GPU: (peak_bytes, tokens_per_s) pairs; the chosen one named."""
    if fits:
        ax.scatter([m / GB for m, _ in fits], [t for _, t in fits], s=18, color="#4C72B0", label="fits", gid="fits")
    if misses:
        ax.scatter([m / GB for m, _ in misses], [t for _, t in misses], s=22, marker="x", color="#999999",
                   label="does not fit", gid="misses")
    for (m, t), name in zip(fits, names or []):
        ax.annotate(name, (m / GB, t), fontsize=7, xytext=(4, 3), textcoords="offset points")
    m, t, label = chosen
    ax.scatter([m / GB], [t], s=120, facecolors="none", edgecolors="#C44E52", linewidths=2, gid="chosen")
    ax.annotate(label, (m / GB, t), xytext=(12, -14), textcoords="offset points", fontsize=8, color="#C44E52",
                arrowprops={"arrowstyle": "-", "color": "#C44E52"})
    ax.axvline(usable_gb, color="black", linestyle="--", linewidth=1, gid="usable-vline")
    ax.set_xlabel("predicted peak memory per GPU (GB)")
    ax.set_ylabel("predicted tokens/s")
    ax.legend(fontsize=8, loc="lower right")


def plan_figure(plan, search_result, path) -> Path:
    """Memory bars of the chosen layout and its alternatives; tokens/s vs memory of every evaluated layout.
    search_result: planner.search.SearchResult (fits with times; misses get their time estimated here)."""
    from shardplan.planner.evaluate import estimate_layout

    path, plt = check_path(path), _pyplot()
    best = plan.best
    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 5))
    items = [("chosen\n" + layout_label(best.layout.to_dict()), best.memory.to_dict())]
    items += [(layout_label(c.layout.to_dict()), c.memory.to_dict()) for c in plan.candidates]
    memory_bars(left, items, best.memory.capacity_bytes, best.headroom)
    left.set_title(f"{best.model.name} on {best.cluster.spec}: memory per GPU", fontsize=10)
    misses = [estimate_layout(best.model, best.cluster, l, search_result.training, best.headroom, m)
              for l, m in search_result.misses]
    _scatter(right, [(e.memory.peak_bytes, e.tokens_per_s) for e in search_result.fits],
             [(e.memory.peak_bytes, e.tokens_per_s) for e in misses],
             (best.memory.peak_bytes, best.tokens_per_s, "chosen: " + layout_label(best.layout.to_dict()).replace("\n", " ")),
             best.memory.capacity_bytes * (1 - best.headroom) / GB)
    right.set_title(f"{len(search_result.fits)} layouts that fit, {len(misses)} that do not (smallest micro-batch "
                    "over the limit per family)", fontsize=9)
    return _save(fig, path)


def compare_figure(rows, path) -> Path:
    """rows: (method, Estimate). Memory bars per method; tokens/s vs memory, each method named."""
    from shardplan.planner.search import rank

    path, plt = check_path(path), _pyplot()
    first = rows[0][1]
    fits = [e for _, e in rows if e.fits]
    best = rank(fits)[0] if fits else None
    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 5))
    memory_bars(left, [(name + ("\n★ fastest" if e is best else ""), e.memory.to_dict()) for name, e in rows],
                first.memory.capacity_bytes, first.headroom)
    left.set_title(f"{first.model.name} on {first.cluster.spec}: memory per GPU by method", fontsize=10)
    chosen = best or min((e for _, e in rows), key=lambda e: e.memory.peak_bytes)
    _scatter(right, [(e.memory.peak_bytes, e.tokens_per_s) for _, e in rows if e.fits],
             [(e.memory.peak_bytes, e.tokens_per_s) for _, e in rows if not e.fits],
             (chosen.memory.peak_bytes, chosen.tokens_per_s, "★ " + next(n for n, e in rows if e is chosen)),
             first.memory.capacity_bytes * (1 - first.headroom) / GB,
             names=["" if e is chosen else n for n, e in rows if e.fits])
    right.set_title("tokens/s against memory per GPU", fontsize=10)
    return _save(fig, path)


def report_figure(report: dict, path) -> Path:
    """report: launch/report.build_report's dict (with its "series")."""
    path, plt = check_path(path), _pyplot()
    s = report["series"]
    fig, (loss_ax, time_ax, mem_ax) = plt.subplots(1, 3, figsize=(15, 4.5))
    loss_ax.plot(s["step"], s["loss"], marker=".", color="#4C72B0", gid="loss-curve")
    loss_ax.set_xlabel("step")
    loss_ax.set_ylabel("loss")
    loss_ax.set_title("loss", fontsize=10)
    warm = set(s["warmup_steps"])
    steady = [(x, y) for x, y in zip(s["step"], s["step_time_s"]) if x not in warm and y is not None]
    warmup = [(x, y) for x, y in zip(s["step"], s["step_time_s"]) if x in warm and y is not None]
    if steady:
        time_ax.plot(*zip(*steady), marker=".", linestyle="none", color="#4C72B0", label="measured", gid="step-times")
    if warmup:
        time_ax.plot(*zip(*warmup), marker="x", linestyle="none", color="#999999", label="warm-up (excluded)",
                     gid="warmup-times")
    predicted = report["predicted"]["step_time_s"]
    time_ax.axhline(predicted, color="#C44E52", linestyle="--", label=f"predicted {predicted:.3g} s", gid="predicted-line")
    median = report["measured"]["step_time_s"]
    if median:
        time_ax.axhline(median, color="#4C72B0", linewidth=0.8, label=f"steady median {median:.3g} s", gid="median-line")
    time_ax.set_xlabel("step")
    time_ax.set_ylabel("seconds per step")
    time_ax.set_yscale("log")
    time_ax.legend(fontsize=8)
    time_ax.set_title("step time: measured vs predicted", fontsize=10)
    memory = report["predicted_memory"]
    peak = report["measured"]["peak_bytes"]
    memory_bars(mem_ax, [("predicted\n(worst rank)", memory)], memory["capacity_bytes"], report["headroom"],
                measured={0: peak} if peak else None)
    mem_ax.set_xlim(-0.6, 1.4)
    mem_ax.set_title("memory: predicted breakdown, measured peak", fontsize=10)
    return _save(fig, path)
