"""The import graph of vlft, read from the source (module level and inside functions): the export room has no
circle, the data room stands on no room above it, and the flow config -> families -> data/model -> engine ->
export -> infer runs one way."""
import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _modules() -> dict[str, Path]:
    found = {}
    for path in sorted((ROOT / "vlft").rglob("*.py")):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


MODULES = _modules()


def _owner(name: str) -> str:
    """The vlft module a dotted name lives in (a name imported from a package resolves to the package)."""
    while name not in MODULES:
        name = name.rpartition(".")[0]
    return name


def _imports(module: str) -> set[str]:
    """Every vlft module `module` imports, at its top or inside a function."""
    path = MODULES[module]
    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(_owner(a.name) for a in node.names if a.name.split(".")[0] == "vlft")
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package[:len(package) - node.level + 1] + ([base] if base else []))
            if base.split(".")[0] != "vlft":
                continue
            for alias in node.names:
                full = f"{base}.{alias.name}"
                found.add(full if full in MODULES else _owner(base))
    found.discard(module)
    return found


GRAPH = {module: _imports(module) for module in MODULES}


def _circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on_stack, circles = {}, {}, [], set(), []

    def visit(node):
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for other in graph[node]:
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in on_stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = []
            while True:
                other = stack.pop()
                on_stack.discard(other)
                component.append(other)
                if other == node:
                    break
            if len(component) > 1:
                circles.append(sorted(component))

    for node in graph:
        if node not in index:
            visit(node)
    return circles


def _room(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def _edges_into(rooms: set[str], importers: set[str]) -> list[str]:
    return sorted(f"{module} -> {other}" for module, others in GRAPH.items() for other in others
                  if _room(module) in importers and _room(other) in rooms)


def test_the_graph_reader_sees_imports_inside_functions_and_relative_ones():
    assert "vlft.export.targets" in GRAPH["vlft.cli"]  # imported inside a click callback
    assert "vlft.model.internvl_chat.keys" in GRAPH["vlft.model.internvl_chat"]  # `from .keys import ...`


def test_no_module_of_vlft_imports_itself_round_a_circle():
    assert _circles(GRAPH) == []


def test_the_export_room_has_no_circle():
    export = {m: {o for o in others if _room(o) == "export"} for m, others in GRAPH.items() if _room(m) == "export"}
    assert _circles(export) == []


def test_the_export_targets_registry_imports_the_targets_and_no_target_imports_it():
    targets = {m for m in GRAPH if m.startswith("vlft.export.target_") and m != "vlft.export.target_interface"}
    assert targets and targets <= GRAPH["vlft.export.targets"]
    above = {"vlft.export.targets", "vlft.export.convert", "vlft.export"}
    assert {m: sorted(GRAPH[m] & above) for m in targets if GRAPH[m] & above} == {}
    helpers = {m for m in GRAPH if _room(m) == "export"} - targets - above
    assert {m: sorted(GRAPH[m] & (targets | above)) for m in helpers if GRAPH[m] & (targets | above)} == {}


def test_the_data_room_imports_no_room_above_it():
    assert _edges_into({"model", "engine", "export", "infer", "cli", "demo"}, {"data"}) == []


# Each room and the rooms it must not import: the flow config/specs -> families -> data/model -> engine ->
# export -> infer. data and model are one floor (the model may read the tiling's facts). The data room's
# pre-flight reads the config file (`vlft check-data CONFIG`), so config is not forbidden to data.
FORBIDDEN = {
    "errors": {"config", "specs", "families", "data", "model", "engine", "export", "infer", "cli", "demo"},
    "config": {"families", "data", "model", "engine", "export", "infer", "cli", "demo"},
    "families": {"model", "engine", "export", "infer", "cli", "demo"},
    "model": {"engine", "export", "infer", "cli", "demo"},
    "engine": {"export", "infer", "cli", "demo"},
    "export": {"engine", "infer", "cli", "demo"},
    "infer": {"engine", "cli", "demo"},
}


@pytest.mark.parametrize("room", sorted(FORBIDDEN))
def test_a_room_imports_no_room_above_it(room):
    assert _edges_into(FORBIDDEN[room], {room}) == []
