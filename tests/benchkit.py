"""Loading a bench script (bench/<name>.py) as a module, for the tests of its figures."""
from __future__ import annotations

import importlib.util
import sys
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType
from typing import Iterator

ROOT = Path(__file__).resolve().parents[1]


def load_bench(name: str) -> ModuleType:
    """bench/<name>.py, run as the module `name` and left registered in sys.modules (its
    dataclasses look their module up there while being defined)."""
    spec = importlib.util.spec_from_file_location(name, ROOT / "bench" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


@contextmanager
def bench_module(name: str) -> Iterator[ModuleType]:
    """load_bench for the span of a fixture: unregistered afterwards."""
    try:
        yield load_bench(name)
    finally:
        sys.modules.pop(name, None)
