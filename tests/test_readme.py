"""Every `swipr ...` line in a ```sh block of README.md and docs/*.md parses against the CLI.

The commands are checked against the real argparse parsers (search.cli.build_parser and each
command's add_parser), in-process, and never run. A line written as a reference, with
placeholders (`STUDY.toml`, `DIR`, `N`, `[--json]`, `0,1,..`), is checked for its subcommand and
for every flag it shows; a concrete line (`swipr fit studies/demo.toml --out model/`) is parsed
whole, so a missing required flag or a value of the wrong type fails too.
"""
from __future__ import annotations

import argparse
import contextlib
import functools
import io
import re
import shlex
from dataclasses import dataclass
from pathlib import Path

import pytest

from search.cli import COMMANDS, build_parser

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

SHELL_FENCES = ("sh", "bash", "shell")
# Words a shell line may put before the command itself.
WRAPPERS = {"nice", "time", "env", "exec", "nohup"}
ENV_ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")
# A placeholder: DIR, N, STUDY.toml, IMAGE_OR_DIR..., 0,1,.. ; or part of a [bracketed] option.
PLACEHOLDER = re.compile(r"^[A-Z][A-Z0-9_]*(\.[A-Za-z]+)?(\.\.\.)?$|\.\.\.$|,\.\.$|[\[\]]")
NUMBER = re.compile(r"^-\d")
# Between commands on one line, outside brackets (inside them `|` means "or").
SEPARATORS = {"|", "||", "&&", ";", "&"}


@dataclass(frozen=True)
class Command:
    where: str        # "README.md:17"
    words: list[str]  # the words after `swipr`


def sh_blocks(text: str) -> list[tuple[int, list[str]]]:
    """(line number of the block's first line, its lines) for every ```sh/bash/shell block."""
    blocks: list[tuple[int, list[str]]] = []
    inside, keep, lines, start = False, False, [], 0
    for number, line in enumerate(text.splitlines(), 1):
        fence = line.strip()
        if fence.startswith("```"):
            if inside and keep:
                blocks.append((start, lines))
            if not inside:
                keep, lines, start = fence[3:].strip() in SHELL_FENCES, [], number + 1
            inside = not inside
        elif inside:
            lines.append(line)
    return blocks


def logical_lines(start: int, lines: list[str]) -> list[tuple[int, str]]:
    """Lines with backslash continuations joined, each with the number of its first line."""
    joined, pending, first = [], "", start
    for number, line in enumerate(lines, start):
        if not pending:
            first = number
        line = line.removeprefix("$ ")
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        joined.append((first, pending + line))
        pending = ""
    if pending:
        joined.append((first, pending))
    return joined


def segments(tokens: list[str]) -> list[list[str]]:
    """A line's commands: split at pipes and separators outside [brackets]."""
    parts, current, depth = [], [], 0
    for token in tokens:
        if token in SEPARATORS and depth == 0:
            parts.append(current)
            current = []
            continue
        if token.startswith((">", "2>")) and depth == 0:
            break   # a redirection: nothing after it belongs to the command
        depth += token.count("[") - token.count("]")
        current.append(token)
    parts.append(current)
    return parts


def swipr_words(tokens: list[str]) -> list[str] | None:
    """The words after `swipr` when the command is swipr (env assignments and wrappers
    before it allowed); None for any other command."""
    for index, token in enumerate(tokens):
        if ENV_ASSIGNMENT.match(token) or token in WRAPPERS:
            continue
        if token == "swipr" or token.endswith("/swipr"):   # .venv/bin/swipr too
            return tokens[index + 1:]
        return None
    return None


def commands_in(text: str, name: str) -> tuple[list[Command], list[str]]:
    """The swipr commands of a page, and the lines that could not be read as shell."""
    found, unreadable = [], []
    for start, lines in sh_blocks(text):
        for number, line in logical_lines(start, lines):
            try:
                tokens = shlex.split(line, comments=True)
            except ValueError as error:
                unreadable.append(f"{name}:{number}: not a shell line ({error}): {line.strip()}")
                continue
            for segment in segments(tokens):
                words = swipr_words(segment)
                if words is not None:
                    found.append(Command(f"{name}:{number}", words))
    return found, unreadable


@functools.lru_cache(maxsize=None)
def parser_for(command: str | None) -> argparse.ArgumentParser:
    return build_parser(command)


def _parse(words: list[str]) -> tuple[int, str]:
    """(exit code, what argparse printed) for `swipr WORDS`, parsed and never run."""
    parser = parser_for(words[0] if words and words[0] in COMMANDS else None)
    printed = io.StringIO()
    try:
        with contextlib.redirect_stderr(printed), contextlib.redirect_stdout(printed):
            parser.parse_args(words)
    except SystemExit as stop:
        return int(stop.code or 0), printed.getvalue()
    return 0, printed.getvalue()


@functools.lru_cache(maxsize=None)
def help_of(path: tuple[str, ...]) -> tuple[int, str]:
    """`swipr PATH --help`: what the user would read."""
    return _parse([*path, "--help"])


def flags_in(help_text: str) -> set[str]:
    return set(re.findall(r"(?<![\w-])(--?[A-Za-z][\w-]*)", help_text))


def _bare(word: str) -> str:
    return word.strip("[]")


def subcommand_path(words: list[str]) -> tuple[tuple[str, ...], list[str]]:
    """The leading words that name a (sub)command, as `--help` finds them; problems if a word
    is taken for a subcommand and isn't one."""
    path: tuple[str, ...] = ()
    for word in (_bare(w) for w in words):
        if word.startswith("-") or not word:
            break
        if not path:
            if word not in COMMANDS:
                return path, [f"`swipr` has no subcommand {word!r} (known: {', '.join(COMMANDS)})"]
            path = (word,)
            continue
        code, text = help_of((*path, word))
        if code and "invalid choice" in text:
            return path, [f"`swipr {' '.join(path)}` has no subcommand {word!r} ({text.strip().splitlines()[-1]})"]
        if not text.startswith(f"usage: swipr {' '.join((*path, word))}"):
            break   # a positional argument (STUDY.toml), not a subcommand
        path = (*path, word)
    return path, []


def flag_problems(words: list[str]) -> list[str]:
    """For a reference line: the subcommands exist, and the `--help` of the one reached knows
    every flag shown."""
    path, problems = subcommand_path(words)
    if problems:
        return problems
    known = flags_in(help_of(path)[1])
    shown = [_bare(w).split("=", 1)[0] for w in words]
    return [f"`{' '.join(('swipr', *path))}` has no flag {flag}" for flag in shown
            if flag.startswith("-") and not NUMBER.match(flag) and flag not in known]


def parse_problems(words: list[str]) -> list[str]:
    """A concrete line parsed whole, as `swipr` would parse it before running it."""
    code, printed = _parse(words)
    if code:
        lines = printed.strip().splitlines()
        return [lines[-1] if lines else f"argparse exited {code}"]
    return []


def problems_of(command: Command) -> list[str]:
    if not command.words:
        return []   # `swipr` alone prints the help
    problems = flag_problems(command.words)
    if not problems and not any(PLACEHOLDER.search(word) for word in command.words):
        problems = parse_problems(command.words)
    return [f"{command.where}: {problem}: swipr {' '.join(command.words)}" for problem in problems]


def page_problems(text: str, name: str) -> tuple[list[Command], list[str]]:
    commands, problems = commands_in(text, name)
    for command in commands:
        problems += problems_of(command)
    return commands, problems


@pytest.mark.parametrize("page", PAGES, ids=lambda page: str(page.relative_to(ROOT)))
def test_every_command_shown_parses(page):
    commands, problems = page_problems(page.read_text(encoding="utf-8"), str(page.relative_to(ROOT)))
    assert not problems, "\n".join(problems)


def test_the_readme_shows_every_command():
    commands, _ = commands_in((ROOT / "README.md").read_text(encoding="utf-8"), "README.md")
    shown = {command.words[0] for command in commands if command.words}
    assert set(COMMANDS) <= shown, f"README.md shows no `swipr {sorted(set(COMMANDS) - shown)}` command"
    study_actions = {command.words[1] for command in commands if command.words[:1] == ["study"]
                     and len(command.words) > 1}
    assert {"run", "status", "best", "report"} <= study_actions


def local_links(text: str) -> list[str]:
    targets = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text)
    return [target for target in targets if "://" not in target and not target.startswith("mailto:")]


def test_the_readme_links_to_the_docs():
    links = local_links((ROOT / "README.md").read_text(encoding="utf-8"))
    assert {f"docs/{page.name}" for page in PAGES[1:]} <= set(links), "a page under docs/ the README doesn't link"


@pytest.mark.parametrize("page", PAGES, ids=lambda page: str(page.relative_to(ROOT)))
def test_links_lead_to_files(page):
    missing = [target for target in local_links(page.read_text(encoding="utf-8"))
               if not (page.parent / target).exists()]
    assert not missing, f"{page.relative_to(ROOT)} links to files that don't exist: {missing}"


# Self-checks: the checker above finds what it is meant to find.

def _check(block: str) -> list[str]:
    return page_problems(f"text\n\n```sh\n{block}\n```\n", "page.md")[1]


def test_a_made_up_flag_is_caught():
    problems = _check("swipr fit STUDY.toml --out DIR --made-up-flag")
    assert len(problems) == 1 and "--made-up-flag" in problems[0] and problems[0].startswith("page.md:4:")


def test_a_made_up_flag_in_brackets_and_on_a_continued_line_is_caught():
    problems = _check("swipr study run STUDY.toml [--n-trials N] \\\n    [--workers K | --gpu 0]")
    assert len(problems) == 1 and "`swipr study run` has no flag --gpu" in problems[0]


def test_a_made_up_subcommand_is_caught():
    assert "has no subcommand 'frobnicate'" in _check("swipr frobnicate STUDY.toml")[0]
    assert "`swipr study` has no subcommand 'rerun'" in _check("swipr study rerun STUDY.toml")[0]


def test_a_concrete_line_is_parsed_whole():
    missing_out = _check("swipr fit studies/demo.toml --trial 3")
    assert len(missing_out) == 1 and "--out" in missing_out[0]
    assert "invalid int value" in _check("swipr study run studies/demo.toml --n-trials many")[0]


def test_placeholders_pipes_and_other_commands_pass():
    block = "\n".join([
        "swipr labels STUDY.toml [-o FILE [--force]] [--json]   # a comment --not-a-flag",
        "swipr study run STUDY.toml [--n-trials N] [--workers K | --gpus 0,1,.. [--trials-per-gpu K] | --dask ADDRESS]",
        "swipr predict BUNDLE IMAGE_OR_DIR... [--json] [--expect-sha256 HEX]",
        "SWIPR_STORAGE=postgresql://u:p@127.0.0.1/swipr swipr study status studies/demo.toml --json | head -3",
        "make demo && .venv/bin/swipr study best studies/demo.toml",
        "dask scheduler --host 127.0.0.1 --made-up-but-not-swipr &",
        "swipr --help",
    ])
    assert _check(block) == []
    assert len(commands_in(f"```sh\n{block}\n```\n", "page.md")[0]) == 6


def test_blocks_in_other_languages_are_left_alone():
    assert _check("x") == [] and page_problems("```python\nswipr fit --made-up\n```\n", "p.md") == ([], [])
