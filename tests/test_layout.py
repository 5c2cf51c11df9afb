"""The package's import graph: the library never imports the applications in ``adam_jax.tools``,
library modules import only modules below them in one declared order, nothing imports in a cycle,
and the old paths of the modules that moved still give the same module objects."""

from __future__ import annotations

import ast
import importlib
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1] / "adam_jax"

# The library, lowest first: a module may import only modules earlier in this list. A new module
# must be placed here, which is where a reader sees what it builds on.
LIBRARY_ORDER = [
    "adam_jax._validate",
    "adam_jax._checks",
    "adam_jax._extras",
    "adam_jax._ckpt_files",
    "adam_jax._moved",
    "adam_jax._tree",
    "adam_jax.state_nodes",
    "adam_jax._hyperparams",
    "adam_jax.schedules",
    "adam_jax.transforms",
    "adam_jax.kahan",
    "adam_jax.averaging",
    "adam_jax.aliases",
    "adam_jax.compat",
    "adam_jax.flat",
    "adam_jax.quantize",
    "adam_jax._flax_support",
    "adam_jax.monitoring",
    "adam_jax.sharding",
    "adam_jax.partition",
    "adam_jax.checkpoint",
    "adam_jax.convert",
    "adam_jax.flax_nnx",
    "adam_jax",
]
# Entry points and aliases of moved modules: they exist to reach the applications.
APPLICATION_DOORS = {
    "adam_jax.__main__": "python -m adam_jax",
    "adam_jax.cli": "alias of adam_jax.tools.cli",
    "adam_jax.bench": "alias of adam_jax.tools.bench",
    "adam_jax.demo": "alias of adam_jax.tools.demo",
    "adam_jax.paper": "alias of adam_jax.tools.paper",
    "adam_jax.paper.__main__": "python -m adam_jax.paper",
}


def _module_name(path: pathlib.Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _import_graph() -> dict[str, set[str]]:
    """Module -> the adam_jax modules it imports anywhere in its source (lazy imports included)."""
    modules = {_module_name(path): path for path in ROOT.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        imported = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                imported |= {a.name for a in node.names if a.name.startswith("adam_jax")}
            elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("adam_jax"):
                for alias in node.names:  # `from adam_jax import x` imports module adam_jax.x
                    full = f"{node.module}.{alias.name}"
                    imported.add(full if full in modules else node.module)
        graph[name] = imported - {name}
    return graph


GRAPH = _import_graph()


def test_every_module_has_a_place():
    library = {m for m in GRAPH if not m.startswith("adam_jax.tools")} - set(APPLICATION_DOORS)
    assert library == set(LIBRARY_ORDER), "place new library modules in LIBRARY_ORDER"


def test_the_library_imports_only_downwards_and_never_the_applications():
    rank = {name: i for i, name in enumerate(LIBRARY_ORDER)}
    upward = [
        f"{module} imports {target}"
        for module in LIBRARY_ORDER
        for target in sorted(GRAPH[module])
        if target not in rank or rank[target] >= rank[module]
    ]
    assert upward == []


def test_no_import_cycle():
    """Depth-first search over the whole package, applications included."""
    state: dict[str, str] = {}
    cycles = []

    def visit(module: str, path: list[str]) -> None:
        state[module] = "open"
        for target in sorted(GRAPH.get(module, ())):
            if state.get(target) == "open":
                cycles.append([*path[path.index(target) :], target])
            elif target not in state:
                visit(target, [*path, target])
        state[module] = "done"

    for module in sorted(GRAPH):
        if module not in state:
            visit(module, [module])
    assert cycles == []


def test_the_applications_share_their_helpers_without_importing_the_command():
    """bench and the paper's runner use tools.interrupt/tools.common, not tools.cli."""
    importers = sorted(m for m, targets in GRAPH.items() if "adam_jax.tools.cli" in targets)
    assert importers == ["adam_jax.__main__"]


@pytest.mark.parametrize(
    "old, new",
    [
        ("adam_jax.cli", "adam_jax.tools.cli"),
        ("adam_jax.bench", "adam_jax.tools.bench"),
        ("adam_jax.demo", "adam_jax.tools.demo"),
        ("adam_jax.paper.runner", "adam_jax.tools.paper.runner"),
        ("adam_jax.paper.claims", "adam_jax.tools.paper.claims"),
    ],
)
def test_old_paths_are_the_moved_modules(old, new):
    assert importlib.import_module(old) is importlib.import_module(new)


def test_python_m_adam_jax_paper_still_runs():
    done = subprocess.run(
        [sys.executable, "-m", "adam_jax.paper", "--help"], capture_output=True, text=True
    )
    assert done.returncode == 0 and done.stdout.startswith("usage: python -m adam_jax.paper")
