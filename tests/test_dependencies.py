"""Every third-party module the product imports is declared in pyproject.toml: at a module's top
level by the core dependencies, inside a function (an optional path) by the core or an extra.
Imports are read from the source with `ast`; import names are mapped to distributions by the
installed packages' metadata (PIL -> pillow, sklearn -> scikit-learn). A SQLite-only install
(no `postgres` extra) opens its storage without psycopg2."""
from __future__ import annotations

import ast
import importlib.metadata
import re
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PRODUCT = ("swipr_core", "objectives", "search")


def normalized(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _requirement(text: str) -> tuple[str, list[str]]:
    """(distribution, [its extras]) of a requirement such as 'dask[distributed]>=2024.8'."""
    found = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(?:\[([^\]]*)\])?", text)
    assert found, f"pyproject.toml: can't read the requirement {text!r}"
    return normalized(found[1]), [extra.strip() for extra in (found[2] or "").split(",") if extra.strip()]


def _with_extras(requirements: list[str]) -> set[str]:
    """The distributions the requirements name, with those their extras add (dask[distributed]
    brings the `distributed` distribution), read from the installed metadata."""
    names = set()
    for text in requirements:
        name, extras = _requirement(text)
        names.add(name)
        for extra in extras:
            for required in importlib.metadata.requires(name) or []:
                if re.search(rf"extra\s*==\s*[\"']{re.escape(extra)}[\"']", required):
                    names.add(_requirement(required)[0])
    return names


def declared() -> tuple[set[str], set[str]]:
    """(core distributions, distributions of every extra)."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    extras = [text for group in project.get("optional-dependencies", {}).values() for text in group]
    return _with_extras(project["dependencies"]), _with_extras(extras)


def third_party_imports(packages: tuple[str, ...]) -> dict[str, list[tuple[str, bool]]]:
    """{top-level module: [(file:line, at the module's top level)]} over the packages' files,
    leaving out the standard library and the project's own packages."""
    own = {*PRODUCT, "tests", "bench"}
    found: dict[str, list[tuple[str, bool]]] = {}
    for package in packages:
        for path in sorted((ROOT / package).rglob("*.py")):
            tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
            top = {id(node) for node in tree.body}
            for node in ast.walk(tree):
                if isinstance(node, ast.Import):
                    modules = [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    modules = [node.module]
                else:
                    continue
                for module in modules:
                    name = module.split(".")[0]
                    if name not in sys.stdlib_module_names and name not in own:
                        where = f"{path.relative_to(ROOT)}:{node.lineno}"
                        found.setdefault(name, []).append((where, id(node) in top))
    return found


def distributions_of(module: str) -> set[str]:
    return {normalized(name) for name in importlib.metadata.packages_distributions().get(module, [])}


def test_every_module_the_product_imports_is_declared():
    core, extras = declared()
    problems = []
    for module, uses in sorted(third_party_imports(PRODUCT).items()):
        distributions = distributions_of(module)
        if not distributions:
            problems.append(f"{module} ({uses[0][0]}): no installed distribution provides it")
        elif not distributions & (core | extras):
            problems.append(f"{module} ({uses[0][0]}): {sorted(distributions)} is not declared in pyproject.toml")
        elif not distributions & core:
            problems += [f"{module} ({where}): only an extra declares {sorted(distributions)}, but it is imported "
                         f"at the module's top level (import it inside the optional path)" for where, at_top in uses
                         if at_top]
    assert not problems, "\n".join(problems)


def test_the_tests_import_only_what_the_core_and_the_extras_declare():
    core, extras = declared()
    undeclared = [f"{module} ({uses[0][0]})" for module, uses in sorted(third_party_imports(("tests",)).items())
                  if not distributions_of(module) & (core | extras)]
    assert not undeclared, undeclared


def test_the_check_sees_an_undeclared_import_and_maps_import_names_to_distributions():
    core, extras = declared()
    assert distributions_of("PIL") == {"pillow"} and "pillow" in core
    assert distributions_of("sklearn") == {"scikit-learn"} and "scikit-learn" in core
    assert "distributed" in extras and "distributed" not in core   # through dask[distributed]
    assert "psycopg2-binary" in extras and "psycopg2-binary" not in core   # the postgres extra
    assert "pytest" not in core and not distributions_of("no_such_module_anywhere")


class _NoPsycopg2:
    """A meta-path finder that makes psycopg2 unimportable, as in an install without the extra."""

    def find_spec(self, name, path=None, target=None):
        if name == "psycopg2" or name.startswith("psycopg2."):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None


@pytest.fixture
def without_psycopg2(monkeypatch):
    for name in [name for name in sys.modules if name == "psycopg2" or name.startswith("psycopg2.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setattr(sys, "meta_path", [_NoPsycopg2(), *sys.meta_path])


def test_a_sqlite_study_runs_without_psycopg2(without_psycopg2, tmp_path):
    import optuna

    from search.study.storage import open_storage

    storage = open_storage(f"sqlite:///{tmp_path / 'study.db'}")
    study = optuna.create_study(storage=storage)
    study.optimize(lambda trial: trial.suggest_float("x", 0, 1), n_trials=2)
    assert len(study.trials) == 2 and "psycopg2" not in sys.modules


def test_a_postgresql_url_without_its_driver_says_which_extra_to_install(without_psycopg2):
    from search.study.storage import open_storage
    from swipr_core.errors import SwiprError

    with pytest.raises(SwiprError) as raised:
        open_storage("postgresql://swipr:secret@127.0.0.1:1/db")
    message = str(raised.value)
    assert "pip install 'swipr-search[postgres]'" in message and "psycopg2" in message
    assert "secret" not in message and "\n" not in message


def test_make_installs_the_extras_the_tests_and_the_demo_need():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    installs = re.findall(r"pip install -q -e '\.\[([^\]]*)\]'", (ROOT / "Makefile").read_text(encoding="utf-8"))
    assert len(installs) == 1, installs
    extras = {extra.strip() for extra in installs[0].split(",")}
    assert extras == {"test", "dask", "postgres"} and extras <= set(project["optional-dependencies"])
