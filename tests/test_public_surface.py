"""Each package's public surface is one line, its `__all__`: the modules (and, for a package
that defines some, the names) other packages use. Read from the source with `ast`: a module
imported from outside its package must be listed, and every entry must exist."""
from __future__ import annotations

import ast
import re

from tests.test_layout import ROOT, imports_of, project_modules

# search/cli.py loads every command's module by its name (search.commands.<module>)
LOADED_BY_NAME = ("search.commands",)
# "module:function" strings: what search/cli.py imports only when a command runs
_DOTTED = re.compile(r"^((?:swipr_core|objectives|search)(?:\.\w+)+)(?::\w+)?$")


def packages(modules: dict) -> list[str]:
    return sorted(name for name, path in modules.items() if path.name == "__init__.py")


def children(package: str, modules: dict) -> set[str]:
    return {name[len(package) + 1:].split(".")[0] for name in modules if name.startswith(package + ".")}


def listed(path) -> tuple[list[str] | None, set[str]]:
    """(the module's `__all__` as written, or None; the names its top level binds)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    surface, bound = None, set()
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "__all__" for t in node.targets):
            surface = [element.value for element in node.value.elts]   # type: ignore[attr-defined]
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            bound |= {(alias.asname or alias.name).split(".")[0] for alias in node.names}
        elif isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            bound.add(node.name)
    return surface, bound


def used_from_outside(package: str, modules: dict) -> dict[str, str]:
    """{child of `package`: a module outside it that imports it (or names it to import later)}."""
    found: dict[str, str] = {}
    for name, path in modules.items():
        if name == package or name.startswith(package + "."):
            continue
        targets = [target for target, _, _ in imports_of(path, modules)]
        targets += [match[1] for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
                    if isinstance(node, ast.Constant) and isinstance(node.value, str)
                    and (match := _DOTTED.match(node.value))]
        for target in targets:
            if target.startswith(package + "."):
                found.setdefault(target[len(package) + 1:].split(".")[0], name)
    return found


def test_every_package_lists_what_other_packages_use_in_its_all():
    modules, problems = project_modules(), []
    for package in packages(modules):
        path = modules[package]
        surface, bound = listed(path)
        if surface is None:
            problems.append(f"{path.relative_to(ROOT)}: no __all__")
            continue
        mine = children(package, modules)
        problems += [f"{path.relative_to(ROOT)}: __all__ lists {entry!r}, which is neither a module of the "
                     f"package nor a name its __init__ defines" for entry in surface if entry not in mine | bound]
        needed = dict.fromkeys(mine, "search.cli") if package in LOADED_BY_NAME else used_from_outside(package, modules)
        problems += [f"{path.relative_to(ROOT)}: {user} uses {package}.{child}, which __all__ doesn't list"
                     for child, user in sorted(needed.items()) if child not in surface]
    assert not problems, "\n".join(problems)


def test_a_module_named_in_a_string_counts_as_used():
    # No import statement outside search/running names its driver: `swipr study run` names it as
    # "search.running.driver:run_study", imported when the command runs.
    modules = project_modules()
    assert used_from_outside("search.running", modules) == {"driver": "search.commands.study"}
    assert used_from_outside("swipr_core", modules).get("errors")   # every layer raises its errors
