"""The folder tree is the architecture: imports run one way (README, "Layout of the repository").

The graph is built with `ast` from the source of the installed package (every import, those inside
functions too) and checked for: no cycle; a pure planner (nothing of ours outside it, no processes, no
console, no torch); click only in the CLI; launch/ never importing the CLI; the training program using only
the planner's model/layout/cluster and the run-directory contract; torch only in the training program.
"""
import ast
import importlib.util
from pathlib import Path

import pytest

ROOT_PACKAGE = "shardplan"
# Third-party or stdlib modules the pure planner must not import: processes, environment probing, console,
# command line, templates, the engines.
PLANNER_FORBIDDEN = {"subprocess", "shutil", "socket", "rich", "click", "jinja2", "torch", "deepspeed", "megatron"}
TRAIN_MAY_IMPORT = {"shardplan.planner.layout", "shardplan.planner.model", "shardplan.planner.cluster",
                    "shardplan.launch.rundir"}


def package_dirs() -> dict[str, Path]:
    """Installed package name -> its folder (the repository keeps planner/ and launch/ at the top)."""
    found = {}
    for name in ("shardplan", "shardplan.cli", "shardplan.planner", "shardplan.planner.megatron", "shardplan.launch", "shardplan.launch.render",
                 "shardplan.launch.validate", "shardplan.launch.run", "shardplan.launch.train",
                 "shardplan.templates"):
        spec = importlib.util.find_spec(name)
        found[name] = Path(spec.origin).parent
    return found


def modules() -> dict[str, Path]:
    out = {}
    for package, folder in package_dirs().items():
        for path in folder.glob("*.py"):
            out[package if path.stem == "__init__" else f"{package}.{path.stem}"] = path
    return out


MODULES = modules()


def imports_of(name: str, path: Path) -> set[str]:
    """Every module `name` imports (absolute names), at the top or inside functions."""
    package = name if path.stem == "__init__" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
            for alias in node.names:
                full = f"{base}.{alias.name}"
                found.add(full if full in MODULES else base)  # `from pkg import module` names the module
    return found


GRAPH = {name: imports_of(name, path) for name, path in MODULES.items()}


def ours(targets: set[str]) -> set[str]:
    return {t for t in targets if t == ROOT_PACKAGE or t.startswith(ROOT_PACKAGE + ".")}


def top(module: str) -> str:
    return module.split(".")[0]


def test_the_graph_covers_the_package():
    assert {"shardplan.planner.plan", "shardplan.launch.rundir", "shardplan.cli.plan",
            "shardplan.launch.train.loop", "shardplan.launch.inventory"} <= set(GRAPH)


def test_no_import_cycle():
    edges = {m: ours(t) & set(GRAPH) for m, t in GRAPH.items()}
    index, low, stack, on_stack, cycles, counter = {}, {}, [], set(), [], [0]

    def strongconnect(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges[v]):
            if w not in index:
                strongconnect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1 or v in edges[v]:
                cycles.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            strongconnect(v)
    assert not cycles, f"import cycles: {cycles}"


@pytest.mark.parametrize("module", sorted(m for m in GRAPH if m.startswith("shardplan.planner")))
def test_the_planner_is_pure(module):
    imported = GRAPH[module]
    outside = {m for m in ours(imported) if not m.startswith("shardplan.planner")}
    assert not outside, f"{module} imports {sorted(outside)}: the planner depends on nothing of ours"
    forbidden = {m for m in imported if top(m) in PLANNER_FORBIDDEN}
    assert not forbidden, f"{module} imports {sorted(forbidden)}: the planner does no I/O, printing or torch"


@pytest.mark.parametrize("module", sorted(GRAPH))
def test_click_only_in_the_cli_and_launch_never_uses_the_cli(module):
    if not module.startswith("shardplan.cli"):
        assert "click" not in {top(m) for m in GRAPH[module]}, f"{module} imports click outside shardplan/cli"
    if module.startswith("shardplan.launch"):
        cli = {m for m in GRAPH[module] if m.startswith("shardplan.cli")}
        assert not cli, f"{module} imports {sorted(cli)}: launch/ may use the planner, never the CLI"


@pytest.mark.parametrize("module", sorted(m for m in GRAPH if m.startswith("shardplan.launch.train")))
def test_the_training_program_uses_only_the_contract(module):
    other = {m for m in ours(GRAPH[module]) if not m.startswith("shardplan.launch.train")} - TRAIN_MAY_IMPORT
    assert not other, f"{module} imports {sorted(other)}; train/ may use only {sorted(TRAIN_MAY_IMPORT)}"


@pytest.mark.parametrize("module", sorted(GRAPH))
def test_torch_only_in_the_training_program(module):
    if not module.startswith("shardplan.launch.train"):
        assert "torch" not in {top(m) for m in GRAPH[module]}, f"{module} imports torch outside launch/train"


@pytest.mark.parametrize("module", sorted(MODULES))
def test_every_module_says_its_job(module):
    doc = ast.get_docstring(ast.parse(MODULES[module].read_text()))
    assert doc and len(doc.strip()) > 20, f"{MODULES[module]}: give it an opening docstring saying its one job"
