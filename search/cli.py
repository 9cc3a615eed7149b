"""The `swipr` command line, and the project's one deliberate lazy import.

Each sub-command lives in its own module under `search/commands/` with `add_parser(...)` and
the functions it runs; those modules import what they need at their top (torch, Optuna,
fastai). This module imports a command's module only when that command is on the command
line, so `swipr --help` answers in a blink without importing torch or Optuna; and a command
whose functions are heavy to import reads its study file first, so a typo in the file is
refused before torch and fastai load (seconds sooner).

`swipr` alone prints the help and exits 2: no command is a usage error, as argparse treats a
missing required argument.
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys
import warnings
from importlib import metadata

from swipr_core.errors import SwiprError

# torch.jit's deprecation notice fires on importing fastai: noise, not news, for users.
warnings.filterwarnings("ignore", category=FutureWarning, module="torch.jit")

# command name -> (module under search.commands, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "demo-data": ("demo_data", "write a small Swipr-shaped demo dataset"),
    "labels": ("labels", "turn the pics database into a labels file with a fixed split"),
    "study": ("study", "run, inspect or report on a study"),
    "lr-find": ("lr_find", "run fastai's learning-rate range test on a study's data and model"),
    "dashboard": ("dashboard", "serve optuna-dashboard on a study's storage"),
    "fit": ("fit", "replay a trial and write a model bundle"),
    "predict": ("predict", "answer YES or NO for images with a model bundle"),
}


def version() -> str:
    """The installed swipr-search's version, or "unknown" when it runs from a bare checkout."""
    try:
        return metadata.version("swipr-search")
    except metadata.PackageNotFoundError:
        return "unknown"


def _command_module(name: str):
    return importlib.import_module(f"search.commands.{COMMANDS[name][0]}")


def build_parser(selected: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="swipr",
        description="Hyperparameter search for a LIKE/PASS photo classifier, on Optuna.",
        epilog="`swipr COMMAND --help` says more about each command.",
    )
    parser.add_argument("--version", action="version", version=f"swipr {version()}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (_, help_text) in COMMANDS.items():
        if name == selected:
            _command_module(name).add_parser(subparsers, name, help_text)
        else:
            subparsers.add_parser(name, help=help_text, add_help=False)
    return parser


def _handler(func, args: argparse.Namespace):
    """A command's function, or "module:function" for one whose imports are heavy (a study run
    imports torch and fastai; `swipr study status` should not): imported only when it runs,
    after its study file, if it has one, has been read and checked."""
    if isinstance(func, str):
        if getattr(args, "study_file", None) is not None:
            # Optuna and SQLAlchemy only: bad input in the file fails here in about a second.
            from search.studyfile import load_study_file

            load_study_file(args.study_file)
        module, _, name = func.partition(":")
        return getattr(importlib.import_module(module), name)
    return func


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    selected = argv[0] if argv and argv[0] in COMMANDS else None
    parser = build_parser(selected)
    args = parser.parse_args(argv)
    if selected is None:   # `swipr` alone: a usage error, with the help as its message
        parser.print_help(sys.stderr)
        return 2
    try:
        return int(_handler(args.func, args)(args) or 0)
    except SwiprError as error:
        print(f"swipr: error: {error}", file=sys.stderr)
        return error.exit_code
    except KeyboardInterrupt:
        print("swipr: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # `swipr study status | head -1`: the reader has what it wanted. Point stdout at
        # devnull so Python's flush at exit doesn't raise again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
