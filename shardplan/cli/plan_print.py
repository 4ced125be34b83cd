"""Console rendering of estimates, plans and comparisons (rich). Printing only: numbers come from the planner."""
from __future__ import annotations

from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

from shardplan.planner.cluster import GB
from shardplan.planner.estimate import Estimate
from shardplan.planner.reasons import secs

PARTS = (("params", "params_bytes", "blue"), ("grads", "grads_bytes", "magenta"),
         ("optimizer", "optimizer_bytes", "yellow"), ("activations", "activations_bytes", "green"),
         ("other", "other_bytes", "cyan"))
BAR = 40


def gb(n: float) -> str:
    return f"{n / GB:.1f} GB"


def count(n: int) -> str:
    return f"{n / 1e9:.2f}B" if n >= 1e9 else f"{n / 1e6:.1f}M"


def layout_line(e: Estimate) -> str:
    l = e.layout
    megatron = e.training.engine == "megatron"
    extra = (" sp" if l.sequence_parallel else "") + (f" cp={l.cp}" if l.cp > 1 else "") + (
        f" vpp={l.vpp}" if l.vpp > 1 else "") + (f" stages={','.join(map(str, l.pp_layers))}" if l.pp_layers else "") + (
        f" ep={l.ep}" if l.ep > 1 else "") + (f" etp={l.etp}" if l.etp > 1 else "")
    sharding = ("no-optimizer-sharding", "distributed-optimizer", "megatron-fsdp(optim_grads)",
                "megatron-fsdp(optim_grads_params)")[int(l.zero_stage)] if megatron else f"ZeRO-{int(l.zero_stage)}"
    return (f"{'megatron: ' if megatron else ''}dp={l.dp} tp={l.tp} pp={l.pp}{extra} {sharding} "
            f"micro-batch={l.micro_batch} grad-accum={l.grad_accum} checkpointing={l.checkpointing} "
            f"offload={l.offload}")


def grid(l) -> str:
    """dp×tp×pp (×cp), with sequence parallel and interleaving marked, and the expert split of MoE layouts (inside
    the other degrees, not a factor of the world): "4×2sp×2v2", "8×1×4v4 ep8", "4×2sp×4 ep4 etp2"."""
    return (f"{l.dp}×{l.tp}{'sp' if l.sequence_parallel else ''}×{l.pp}{f'v{l.vpp}' if l.vpp > 1 else ''}"
            + (f"×cp{l.cp}" if l.cp > 1 else "") + (f" ep{l.ep}" if l.ep > 1 else "") + (f" etp{l.etp}" if l.etp > 1 else ""))


def memory_bar(e: Estimate) -> Text:
    """One character per 1/BAR of the card, coloured by part; '|' marks the headroom limit, '»' overflow."""
    m, cap = e.memory, e.memory.capacity_bytes
    bar, used = Text(), 0
    for _, key, colour in PARTS:
        n = min(round(getattr(m, key) / cap * BAR), BAR - used)
        bar.append("█" * n, style=colour)
        used += n
    limit = round(BAR * (1 - e.headroom))
    bar.append("".join("|" if i == limit else "░" for i in range(used, BAR)), style="dim")
    if m.peak_bytes > cap:
        bar.append(f"» {m.peak_bytes / cap:.1f}× the card", style="bold red")
    return bar


def memory_table(e: Estimate) -> Table:
    m = e.memory
    table = Table(show_header=False, box=None, padding=(0, 1))
    for name, key, colour in PARTS:
        table.add_row(Text("■ " + name, style=colour), gb(getattr(m, key)))
    fits = Text("fits", style="bold green") if e.fits else Text("DOES NOT FIT", style="bold red")
    table.add_row("peak per GPU", Text.assemble(gb(m.peak_bytes), f" of {gb(m.capacity_bytes)} (",
                                                f"{e.headroom:.0%} headroom kept) ", fits))
    table.add_row("", memory_bar(e))
    return table


def estimate_summary(e: Estimate, console: Console, title: str = "Layout") -> None:
    params = f"{count(e.model.params)} params" + (f", {count(e.model.active_params)} active per token"
                                                   if e.model.is_moe else "")
    console.print(f"[bold]{title}[/bold] for {e.model.name} ({params}) on "
                  f"{e.cluster.spec} ({e.cluster.world_size} GPUs), seq {e.training.seq_len}, "
                  f"global batch {e.layout.global_batch}, {e.training.precision}")
    console.print("  " + layout_line(e), style="bold cyan", highlight=False)
    console.print(memory_table(e))
    t = e.time
    console.print(f"  step time [bold]{secs(e.step_time_s)} s[/bold]   tokens/s [bold]{e.tokens_per_s:,.0f}[/bold]"
                  f"   MFU [bold]{e.mfu:.1%}[/bold] (of the dense {e.mfu_peak} peak)   model TFLOP/s per GPU "
                  f"[bold]{e.model_tflops_per_gpu:,.0f}[/bold]", highlight=False)
    parts = [("compute", t.compute_s), ("optimizer", t.optimizer_s), ("dp comm", t.dp_comm_s),
             ("tp comm", t.tp_comm_s), ("pp comm", t.pp_comm_s), ("bubble", t.bubble_s),
             ("ep all-to-all", t.ep_comm_s), ("offload", t.offload_s), ("overhead", t.overhead_s)]
    shown = ", ".join(f"{name} {secs(s)} s" for name, s in parts if s > 0)
    console.print(f"  [dim]{shown}; {t.comm_bytes / GB:.2f} GB communicated per GPU per step[/dim]",
                  highlight=False)


def budget_cells(b: dict | None) -> list[str]:
    """Days, GPU-hours and cost of a time_to_train() dict (nothing without a token budget)."""
    if not b:
        return []
    return [f"{b['time_to_train_s'] / 86400:,.1f}", f"{b['gpu_hours']:,.0f}",
            "-" if b["cost"] is None else f"{b['cost']:,.0f}"]


BUDGET_COLUMNS = ("days", "GPU-h", "cost")


def budget_line(b: dict | None) -> str:
    if not b:
        return ""
    cost = "" if b["cost"] is None else f", cost [bold]{b['cost']:,.0f}[/bold]"
    return (f"  time to train [bold]{b['time_to_train_s'] / 86400:,.1f} days[/bold] "
            f"({b['gpu_hours']:,.0f} GPU-hours{cost})")


def candidates_table(candidates, budget=None) -> Table:
    table = Table(title="Next best alternatives", title_justify="left", box=box.SIMPLE_HEAD, padding=(0, 1), pad_edge=False, show_edge=False)
    for col in ("dp×tp×pp", "ZeRO", "micro×accum", "ckpt", "offload", "GB/GPU", "step s", "tokens/s", "MFU") + (
            BUDGET_COLUMNS if budget else ()):
        table.add_column(col, justify="left" if col in ("ckpt", "offload") else "right", no_wrap=True)
    for e in candidates:
        l = e.layout
        table.add_row(grid(l), str(int(l.zero_stage)), f"{l.micro_batch}×{l.grad_accum}",
                      l.checkpointing, l.offload, f"{e.memory.peak_bytes / GB:.1f}",
                      secs(e.step_time_s), f"{e.tokens_per_s:,.0f}", f"{e.mfu:.1%}",
                      *budget_cells(budget(e) if budget else None))
    return table


def print_plan(plan, console: Console | None = None, budget=None) -> None:
    """budget: Estimate -> time_to_train() dict, when a token budget was given."""
    console = console or Console()
    estimate_summary(plan.best, console, title="Plan")
    if budget:
        console.print(budget_line(budget(plan.best)), highlight=False)
    if plan.candidates:
        console.print(candidates_table(plan.candidates, budget))
    console.print("[bold]Why[/bold]")
    for reason in plan.reasons:
        console.print(f"  • {reason}", highlight=False)
    console.print(f"[dim]{plan.evaluated} layouts evaluated[/dim]")


def compare_table(rows, budget=None) -> Table:
    from shardplan.planner.search import rank

    fits = [e for _, e in rows if e.fits]
    best = rank(fits)[0] if fits else None
    first = rows[0][1]
    table = Table(title=f"{first.model.name} on {first.cluster.spec}, seq {first.training.seq_len}, "
                        f"global batch {first.layout.global_batch}", title_justify="left", box=box.SIMPLE_HEAD, padding=(0, 1), pad_edge=False, show_edge=False)
    for col, just in (("method", "left"), ("dp×tp×pp", "right"), ("ZeRO", "right"), ("micro×accum", "right"),
                      ("ckpt", "left"), ("GB/GPU", "right"), ("fits", "left"), ("step s", "right"),
                      ("tokens/s", "right"), ("MFU", "right"), ("comm GB", "right"), ("bubble", "right"),
                      *((c, "right") for c in (BUDGET_COLUMNS if budget else ()))):
        table.add_column(col, justify=just, no_wrap=True)
    for name, e in rows:
        l = e.layout
        bubble = e.time.bubble_s / e.step_time_s if e.step_time_s else 0.0
        table.add_row(("★ " if e is best else "") + name, grid(l), str(int(l.zero_stage)),
                      f"{l.micro_batch}×{l.grad_accum}", l.checkpointing + ("" if l.offload == "none" else
                                                                            f" +{l.offload} offload"),
                      f"{e.memory.peak_bytes / GB:.1f}", "yes" if e.fits else "[red]no[/red]",
                      secs(e.step_time_s), f"{e.tokens_per_s:,.0f}", f"{e.mfu:.1%}",
                      f"{e.time.comm_bytes / GB:.1f}", f"{bubble:.1%}", *budget_cells(budget(e) if budget else None),
                      style=None if e.fits else "dim")
    return table


def print_compare(rows, console: Console | None = None, budget=None) -> None:
    console = console or Console()
    console.print(compare_table(rows, budget))
    console.print("[dim]★ fastest that fits. Each method at its best micro-batch and checkpointing; "
                  "a method where nothing fits shows its leanest layout (dimmed). GB/GPU: predicted peak; "
                  "comm GB: sent per GPU per step; bubble: share of the step.[/dim]")


def print_sweep(entries, chosen, cheapest, fastest, console: Console | None = None) -> None:
    """The node-count sweep: one row per node count where something fits, the picks marked."""
    console = console or Console()
    timed = any(x.budget for x in entries)
    table = Table(title="Node counts (best layout on each)", title_justify="left", box=box.SIMPLE_HEAD,
                  padding=(0, 1), pad_edge=False, show_edge=False)
    for col in ("nodes", "GPUs", "dp×tp×pp", "ZeRO", "micro×accum", "ckpt", "tokens/s", "MFU") + (
            BUDGET_COLUMNS if timed else ()) + ("",):
        table.add_column(col, justify="left" if col in ("ckpt", "") else "right", no_wrap=True)
    for x in entries:
        e, l = x.plan.best, x.plan.best.layout
        marks = [name for name, pick in (("chosen", chosen), ("cheapest", cheapest), ("fastest", fastest)) if pick is x]
        table.add_row(str(x.nodes), str(x.gpus), grid(l), str(int(l.zero_stage)),
                      f"{l.micro_batch}×{l.grad_accum}", l.checkpointing, f"{e.tokens_per_s:,.0f}", f"{e.mfu:.1%}",
                      *budget_cells(x.budget), ", ".join(marks), style="bold" if x is chosen else None)
    console.print(table)
    estimate_summary(chosen.plan.best, console, title=f"Chosen: {chosen.nodes} nodes")
    if chosen.budget:
        console.print(budget_line(chosen.budget), highlight=False)
