"""The package's shape: no import cycle, vocabularies checked without Keras, commands thin."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

from conftest import REPO

PACKAGE = REPO / "search"


def _module(path: Path) -> str:
    return ".".join(path.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__")


def _top_level_imports(path: Path, modules: set[str]) -> set[str]:
    """The search modules a module imports when it loads (not inside functions or TYPE_CHECKING)."""
    found = set()
    tree = ast.parse(path.read_text())
    for node in tree.body:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            continue
        for child in ast.walk(node) if not isinstance(node, (ast.FunctionDef, ast.ClassDef)) else []:
            if isinstance(child, ast.Import):
                found |= {a.name for a in child.names if a.name.startswith("search")}
            elif isinstance(child, ast.ImportFrom) and child.module and child.module.startswith("search"):
                submodules = {f"{child.module}.{a.name}" for a in child.names} & modules
                found |= submodules or {child.module}  # `from search import metrics` loads search.metrics
    return found


def test_no_import_cycle():
    modules = {_module(p): p for p in PACKAGE.rglob("*.py")}
    graph = {m: {i for i in _top_level_imports(p, set(modules)) if i in modules and i != m} for m, p in modules.items()}
    # A module also loads its packages' __init__: they must stay free of imports of their own.
    for name in modules:
        if name.count(".") >= 2 and name.rsplit(".", 1)[0] in modules:
            assert not graph[name.rsplit(".", 1)[0]] - {"search.declare"}, name.rsplit(".", 1)[0]
    visiting, done = set(), set()

    def visit(module: str, path: list[str]) -> None:
        if module in done:
            return
        assert module not in visiting, f"import cycle: {' -> '.join([*path, module])}"
        visiting.add(module)
        for imported in graph[module]:
            visit(imported, [*path, module])
        visiting.discard(module)
        done.add(module)

    for module in graph:
        visit(module, [])


def test_vocabularies_and_the_command_lines_help_load_without_keras_or_tensorflow():
    script = ("import sys, search.models.backbones, search.models.schedules, search.models.optimizers, "
              "search.core.algorithms, search.metrics, search.declare, search.run; "
              "search.run.build_parser().format_help(); "
              "print(sorted(m for m in ('keras', 'tensorflow', 'keras_tuner', 'optuna', 'mlflow') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split()[-1] == "[]"


def test_commands_are_thin():
    # The logic lives in the packages; a command parses its options and reports errors.
    for command in ("run", "ensemble", "predict", "export", "featuremaps", "report"):
        lines = (PACKAGE / f"{command}.py").read_text().count("\n")
        assert lines < 400, f"search/{command}.py has {lines} lines: move its logic into a package"


def _local_imports(path: Path, modules: set[str]) -> set[str]:
    """The search modules imported inside the functions of a module (loaded when first needed)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            for child in ast.walk(node):
                if isinstance(child, ast.ImportFrom) and child.module and child.module.startswith("search"):
                    submodules = {f"{child.module}.{a.name}" for a in child.names} & modules
                    found |= submodules or {child.module}
                elif isinstance(child, ast.Import):
                    found |= {a.name for a in child.names if a.name in modules}
    return found


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}

    def visit(module: str, path: list[str]) -> list[str] | None:
        if state.get(module) == 2:
            return None
        if state.get(module) == 1:
            return [*path, module]
        state[module] = 1
        for imported in graph[module]:
            found = visit(imported, [*path, module])
            if found:
                return found
        state[module] = 2
        return None

    for module in graph:
        found = visit(module, [])
        if found:
            return found
    return None


def test_no_function_local_import_is_there_to_break_a_cycle():
    # Imports inside functions load heavy libraries lazily (TensorFlow, MLflow); moved to the
    # top of their module, none may close a cycle.
    modules = {_module(p): p for p in PACKAGE.rglob("*.py")}
    graph = {m: {i for i in _top_level_imports(p, set(modules)) if i in modules and i != m} for m, p in modules.items()}
    for module, path in modules.items():
        for imported in _local_imports(path, set(modules)) - {module}:
            trial = {**graph, module: graph[module] | {imported}}
            assert _cycle(trial) is None, f"{module} imports {imported} inside a function to break the cycle {_cycle(trial)}"


# The layers, bottom first: a unit (a subpackage, or a module of its own at the top) imports
# units of its own layer or below, never above.
LAYERS = (
    ("core", "errors", "redaction", "console", "metrics", "cli"),  # shared types and words
    ("declare", "spacefile"),  # what a space file writes, and running one
    ("runs", "liveness", "compat"),  # the runs folder; which workers live (locks name their holder); compat
    ("data",),
    ("models", "hparams", "space", "declared"),  # a trial's model and the hyperparameters that define it
    ("results",),  # records, tables, fronts, plots
    ("tracking",),  # MLflow and TensorBoard
    ("engine",),  # the search loop, its sources and trials
    ("ensembles",),
    ("preflight",),  # the checks a command makes before any work
    ("run", "ensemble", "predict", "export", "featuremaps", "report", "vocabulary", "api", "__init__"),  # commands
)
# Imports allowed to go up, each with why; none is left, and the list only shrinks.
GOING_UP: dict[tuple[str, str], str] = {}


def _unit(module: str) -> str:
    parts = module.split(".")
    return "__init__" if len(parts) == 1 else parts[1]


def _every_import(path: Path, modules: set[str]) -> set[str]:
    """The search modules a module imports, at its top or inside functions (not TYPE_CHECKING)."""
    found = set()
    tree = ast.parse(path.read_text())
    skipped = {id(n) for node in tree.body if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
               for n in ast.walk(node)}
    for child in ast.walk(tree):
        if id(child) in skipped:
            continue
        if isinstance(child, ast.Import):
            found |= {a.name for a in child.names if a.name in modules}
        elif isinstance(child, ast.ImportFrom) and child.module and child.module.startswith("search"):
            submodules = {f"{child.module}.{a.name}" for a in child.names} & modules
            found |= submodules or ({child.module} & modules)
    return found


def test_units_import_in_one_direction_only():
    layer = {unit: index for index, units in enumerate(LAYERS) for unit in units}
    modules = {_module(p): p for p in PACKAGE.rglob("*.py")}
    units = {_unit(m) for m in modules}
    assert units <= set(layer), f"give {sorted(units - set(layer))} a layer in LAYERS"
    going_up: dict[tuple[str, str], list[str]] = {}
    for module, path in modules.items():
        for imported in _every_import(path, set(modules)):
            below, above = _unit(module), _unit(imported)
            if layer[above] > layer[below]:
                going_up.setdefault((below, above), []).append(f"{module} imports {imported}")
    unexpected = {k: v for k, v in going_up.items() if k not in GOING_UP}
    assert not unexpected, f"imports that go up a layer: {unexpected}"
    assert set(GOING_UP) <= set(going_up), f"no longer going up, take them out of GOING_UP: {set(GOING_UP) - set(going_up)}"
