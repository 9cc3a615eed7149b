"""The code's shape: dependencies run search/ -> objectives/ -> swipr_core/, and inside the core
serve/ -> train/ -> data/ (errors.py beside them, for all), no import cycle between files, imports at the top of modules (search/cli.py is the one lazy boundary), and
no Optuna in the core. Read from the source with `ast`; nothing is imported."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LAYERS = {"swipr_core": 0, "objectives": 1, "search": 2}   # a package may import its own layer or lower
# Inside swipr_core: a sub-package may import its own layer or lower. errors is everyone's.
CORE_LAYERS = {"swipr_core.errors": -1, "swipr_core.data": 0, "swipr_core.train": 1, "swipr_core.serve": 2}
# What serve may use of train: a bundle's TTA graph wraps the trained network in the fit's flip
# average. Anything else of train (a run, its loaders, its checkpoints) is not serve's business.
SERVE_USES_OF_TRAIN = {"swipr_core.train.flip_average"}
LAZY_BOUNDARY = "search.cli"   # imports a command's module only when that command runs
# Optional extras (pip install '.[dask]'), imported inside the functions of the --dask path only
OPTIONAL_EXTRAS = ("distributed", "optuna_integration")


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def project_modules() -> dict[str, Path]:
    return {module_name(path): path for package in LAYERS for path in (ROOT / package).rglob("*.py")}


def imports_of(path: Path, modules: dict[str, Path]) -> list[tuple[str, int, bool]]:
    """(imported module, line, at the module's top level) for every import in the file."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    top = {id(node) for node in tree.body}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno, id(node) in top) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            for alias in node.names:
                submodule = f"{node.module}.{alias.name}"
                found.append((submodule if submodule in modules else node.module, node.lineno, id(node) in top))
    return found


def graph(modules: dict[str, Path]) -> dict[str, set[str]]:
    return {name: {target for target, _, _ in imports_of(path, modules) if target in modules}
            for name, path in modules.items()}


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as [a, b, ..., a], or None."""
    state: dict[str, int] = {}   # 1: on the current path, 2: done
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for target in sorted(edges.get(node, ())):
            if state.get(target) == 1:
                return stack[stack.index(target):] + [target]
            if target not in state and (cycle := visit(target)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(edges):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_dependencies_point_down_the_layers():
    modules = project_modules()
    upward = [f"{path.relative_to(ROOT)}:{line} imports {target}"
              for name, path in modules.items() for target, line, _ in imports_of(path, modules)
              if target.split(".")[0] in LAYERS and LAYERS[target.split(".")[0]] > LAYERS[name.split(".")[0]]]
    assert not upward, "upward imports:\n" + "\n".join(upward)


def test_no_import_cycle_between_files():
    cycle = find_cycle(graph(project_modules()))
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


@pytest.mark.parametrize("package", ["search", "objectives", "swipr_core"])
def test_imports_live_at_the_top_of_modules(package):
    modules = project_modules()
    lazy = [f"{path.relative_to(ROOT)}:{line} imports {target} inside a function"
            for name, path in modules.items() if name.startswith(package) and name != LAZY_BOUNDARY
            for target, line, at_top in imports_of(path, modules)
            if not at_top and target.split(".")[0] not in OPTIONAL_EXTRAS]
    assert not lazy, "\n".join(lazy)


def test_the_core_imports_no_optuna():
    modules = project_modules()
    found = [f"{path.relative_to(ROOT)}:{line}" for name, path in modules.items() if name.startswith("swipr_core")
             for target, line, _ in imports_of(path, modules) if target.split(".")[0] == "optuna"]
    assert not found, found


def test_the_checks_see_todays_kind_of_tangle():
    # The checks themselves: a cycle such as search.run -> search.retry -> search.workers ->
    # search.run is found, and so is an objective importing the study-file layer.
    cycle = find_cycle({"search.run": {"search.retry"}, "search.retry": {"search.workers"},
                        "search.workers": {"search.run"}})
    assert cycle[0] == cycle[-1] and set(cycle) == {"search.run", "search.retry", "search.workers"}
    assert find_cycle({"a": {"b"}, "b": set()}) is None
    assert LAYERS["objectives"] < LAYERS["search"]   # so objectives -> search.studyfile counts as upward


def private_names_used(source: str) -> list[tuple[int, str]]:
    """(line, name) for each `_name` a test imports or reads off an object; dunders aside."""
    found = []
    for node in ast.walk(ast.parse(source)):
        names = []
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in (*LAYERS, "tests"):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.Attribute) and not (isinstance(node.value, ast.Name) and node.value.id == "self"):
            names = [node.attr]
        found += [(node.lineno, name) for name in names if name.startswith("_") and not name.startswith("__")]
    return found


def test_tests_use_only_public_names():
    # A test that reaches inside breaks on every refactor and checks the wrong thing; what a
    # test needs (Optuna's internals included, through objectives.optuna_compat) is public.
    found = [f"{path.relative_to(ROOT)}:{line} {name}" for path in sorted((ROOT / "tests").glob("*.py"))
             for line, name in private_names_used(path.read_text(encoding="utf-8"))]
    assert not found, found
    assert private_names_used("from swipr_core.data.loaders import _prefetched\nt = optuna.Trial(s, a._trial_id)\n") \
        == [(1, "_prefetched"), (2, "_trial_id")]


def core_layer(module: str) -> str | None:
    return next((layer for layer in CORE_LAYERS if module == layer or module.startswith(layer + ".")), None)


def core_problems(edges: dict[str, set[str]]) -> list[str]:
    """Imports inside swipr_core that go up a layer, or from serve into train's internals."""
    problems = []
    for source, targets in sorted(edges.items()):
        for target in sorted(targets):
            here, there = core_layer(source), core_layer(target)
            if here is None or there is None or here == there:
                continue
            if CORE_LAYERS[there] > CORE_LAYERS[here]:
                problems.append(f"{source} imports {target}, a layer up")
            elif here == "swipr_core.serve" and there == "swipr_core.train" and target not in SERVE_USES_OF_TRAIN:
                problems.append(f"{source} imports {target}, one of train's internals")
    return problems


def test_the_core_layers_point_down():
    problems = core_problems(graph(project_modules()))
    assert not problems, "\n".join(problems)


def test_the_core_layer_check_finds_a_tangle():
    assert core_problems({"swipr_core.data.cache": {"swipr_core.train.model"}}) == \
        ["swipr_core.data.cache imports swipr_core.train.model, a layer up"]
    assert core_problems({"swipr_core.serve.export": {"swipr_core.train.run"}}) == \
        ["swipr_core.serve.export imports swipr_core.train.run, one of train's internals"]
    assert core_problems({"swipr_core.serve.bundle_writer": {"swipr_core.train.flip_average", "swipr_core.errors"},
                          "swipr_core.train.run": {"swipr_core.data.loaders"}}) == []


def test_the_core_top_holds_only_its_sub_packages():
    top = sorted(path.name for path in (ROOT / "swipr_core").iterdir()
                 if path.suffix == ".py" or (path.is_dir() and path.name != "__pycache__"))
    assert top == ["__init__.py", "data", "errors.py", "serve", "train"], top


# Inside search: the study file at the bottom, the CLI at the top; fit and running side by side.
SEARCH_LAYERS = {"search.studyfile": 0, "search.study": 1, "search.views": 2, "search.fit": 3, "search.running": 3,
                 "search.commands": 4, "search.cli": 4}


def search_problems(edges: dict[str, set[str]]) -> list[str]:
    """Imports between search's sub-packages that go up a layer or sideways between two of one layer."""
    def layer(module: str) -> str | None:
        return next((name for name in SEARCH_LAYERS if module == name or module.startswith(name + ".")), None)
    return [f"{source} imports {target}, not a layer down" for source, targets in sorted(edges.items())
            for target in sorted(targets) if (here := layer(source)) and (there := layer(target)) and here != there
            and SEARCH_LAYERS[there] >= SEARCH_LAYERS[here]]


def test_the_search_layers_point_down():
    problems = search_problems(graph(project_modules()))
    assert not problems, "\n".join(problems)


def test_the_search_layer_check_finds_a_tangle():
    assert search_problems({"search.studyfile.storage_url": {"search.study.storage"},
                            "search.fit.replay": {"search.running.worker"},
                            "search.running.driver": {"search.study.open", "search.running.stop"}}) == \
        ["search.fit.replay imports search.running.worker, not a layer down",
         "search.studyfile.storage_url imports search.study.storage, not a layer down"]
