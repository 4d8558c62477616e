"""The layering the code relies on: the gateway never touches vLLM or a plugin, modules import
each other without circles, and no module outgrows one job (~300 lines; training recipes aside)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("service", "engine")
MAX_LINES = 300
TRAINING_RECIPES = {"engine/plugins/speculative/train_head.py", "engine/plugins/speculative/train_drafter.py",
                    "engine/scenes_vlm/train.py"}  # offline, not served


def _modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def _top_level_imports(path: Path) -> set[str]:
    """Modules imported when ``path`` is imported (not in functions or ``if TYPE_CHECKING:``)."""
    names: set[str] = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def _all_imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def test_the_gateway_imports_neither_vllm_nor_a_plugin():
    for name, path in _modules().items():
        if not name.startswith("service"):
            continue
        bad = {m for m in _all_imports(path) if m.split(".")[0] == "vllm" or m.startswith("engine.plugins")}
        assert not bad, f"{path.relative_to(ROOT)} imports {sorted(bad)}"


def test_loading_the_gateway_loads_no_vllm():
    modules = [name for name in _modules() if name.startswith("service")]
    code = f"import sys; import {', '.join(modules)}; print('vllm' in sys.modules, 'torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120, cwd=ROOT)
    assert out.stdout.split() == ["False", "False"]


def test_no_import_circles():
    modules = _modules()
    graph = {name: {m for m in _top_level_imports(path) if m in modules and m != name} for name, path in modules.items()}
    state: dict[str, int] = {}

    def visit(node: str, trail: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                raise AssertionError("import circle: " + " -> ".join([*trail[trail.index(nxt):], nxt]))
            if nxt not in state:
                visit(nxt, [*trail, nxt])
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])


def test_modules_stay_small():
    for path in _modules().values():
        relative = path.relative_to(ROOT).as_posix()
        lines = len(path.read_text().splitlines())
        assert relative in TRAINING_RECIPES or lines <= MAX_LINES, f"{relative}: {lines} lines"
