"""The harness's rooms follow the data flow: each sub-package imports only the ones below it, and no
module imports itself back through others. Read from the source (every import statement, those under
TYPE_CHECKING and inside functions too), so an import that only runs late still counts."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# Bottom to top, as docs/architecture.md draws them. A room may import any room below it.
LAYERS = [
    ("yamlsource", "exit_codes"),
    ("smtp",),
    ("lab",),
    ("corpus",),
    ("judge",),
    ("targets",),
    ("run",),
    ("generation",),
    ("capture",),
    ("reports",),
    ("cli",),
    ("pytest_plugin",),
]
FLOOR = {room: floor for floor, rooms in enumerate(LAYERS) for room in rooms}


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, package: str) -> set[str]:
    """The project modules `path` imports, as dotted names (a name imported from a package counts as
    that package's submodule when one exists)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return {name for name in found if name.split(".")[0] in ("harness", "reference_mta")}


def _graph(package: str) -> dict[str, set[str]]:
    files = {_module_name(path): path for path in (ROOT / package).rglob("*.py")}
    return {
        name: {imported for imported in _imports(path, package) if imported in files and imported != name}
        for name, path in files.items()
    }


def _room(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle (its modules in order), or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for target in sorted(graph[node]):
            if state.get(target) == 1:
                return [*stack[stack.index(target) :], target]
            if target not in state and (found := visit(target)) is not None:
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)) is not None:
            return found
    return None


@pytest.mark.parametrize("package", ["harness", "reference_mta"])
def test_no_import_circle(package: str) -> None:
    cycle = _cycle(_graph(package))
    assert cycle is None, "import circle: " + " -> ".join(cycle or [])


def test_every_harness_room_has_a_floor() -> None:
    rooms = {_room(name) for name in _graph("harness")} - {""}
    assert rooms <= set(FLOOR), f"rooms missing from LAYERS: {sorted(rooms - set(FLOOR))}"


def test_harness_rooms_import_only_downward() -> None:
    upward = [
        f"{module} imports {imported} ({_room(module)} is below {_room(imported)})"
        for module, imported_modules in sorted(_graph("harness").items())
        for imported in sorted(imported_modules)
        if _room(module) and _room(imported) and FLOOR[_room(imported)] > FLOOR[_room(module)]
    ]
    assert upward == [], "\n".join(upward)


def test_the_layer_check_sees_an_upward_import(tmp_path: Path) -> None:
    """The check itself: an import from the lab up into the runner is found."""
    source = "from harness.run.runner import run_trace\n"
    (tmp_path / "m.py").write_text(source, encoding="utf-8")
    assert _imports(tmp_path / "m.py", "harness") >= {"harness.run.runner"}
    assert FLOOR[_room("harness.run.runner")] > FLOOR[_room("harness.lab.m")]
