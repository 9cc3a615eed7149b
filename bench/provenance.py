"""What made a bench result, written into every cache and result file, and checked before one is read.

A provenance block is a dict:

    made_by    the bench script (bench/peers.py, ...)
    made_at    UTC time it was written
    commit     `git rev-parse HEAD` (+changes when the tree differs), "unknown" outside git
    code       {part: sha256} of the code the result depends on: the bench file, the project
               packages it runs (each .py file's path and bytes), or one function's source
    versions   torch, fastai, timm, optuna (and python)
    space      sha256 of the search space or grid, as the bench defines it
    data       sha256 of the image files' bytes (relative path and content, sorted)
    split      the project's data fingerprint: path, label and split of every row
    threads    torch threads the result was made with
    settings   the bench's own knobs that change the result (trials, seed, variant, ...)

A cached or committed result is reused only if every one of COMPARED is the same as for what
would be run now; `commit` and `made_at` are told, never compared (two commits with the same code
make the same result). Anything else is refused in one line naming the file and what differs.

Results recorded before provenance existed carry a block with `recorded_before_provenance`: the
commit that recorded them and what is known (the rest "unknown"). They are refused unless the
bench is given --accept-unversioned; then what is known is still compared and the output says
what was read unchecked (bench/README.md, "Provenance").
"""
from __future__ import annotations

import datetime
import hashlib
import inspect
import json
import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
COMPARED = ("code", "versions", "space", "data", "split", "threads", "settings")
LIBRARIES = ("torch", "fastai", "timm", "optuna")
UNKNOWN = "unknown"
ACCEPT_FLAG = "--accept-unversioned"


class Refused(Exception):
    """A result that is not what would be run now; its message is the one line to print."""


def provenance(made_by: str, *, code: dict[str, str], space: str, data: str, split: str, threads: int,
               settings: dict | None = None) -> dict:
    """The block for a result made now."""
    return {"made_by": made_by, "made_at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "commit": commit(), "code": code, "versions": versions(), "space": space, "data": data,
            "split": split, "threads": threads, "settings": settings or {}}


def commit() -> str:
    """The checkout's commit, with "+changes" when tracked files differ from it; "unknown" outside
    git. (swipr_core.serve.bundle_writer.code_version says the same, but importing it imports torch.)"""
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, timeout=10,
                              check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                               capture_output=True, text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return UNKNOWN
    return head + ("+changes" if dirty else "")


def versions() -> dict[str, str]:
    found = {"python": platform.python_version()}
    for name in LIBRARIES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = "not installed"
    return found


def digest(value) -> str:
    """sha256 of a JSON-able value (keys sorted) or of a string's text."""
    text = value if isinstance(value, str) else json.dumps(value, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def code_hash(*paths: Path) -> str:
    """sha256 over every .py file under `paths` (files or folders): relative path and bytes."""
    sha = hashlib.sha256()
    for path in paths:
        files = [path] if path.is_file() else sorted(p for p in path.rglob("*.py") if "__pycache__" not in p.parts)
        for file in files:
            sha.update(str(file.resolve().relative_to(ROOT)).encode() + b"\0" + file.read_bytes() + b"\0")
    return sha.hexdigest()[:16]


def project_code(bench_file: Path, *packages: str) -> dict[str, str]:
    """{part: hash} of a bench file and the project packages (swipr_core, objectives, search) it runs."""
    parts = {str(bench_file.resolve().relative_to(ROOT)): code_hash(bench_file)}
    return parts | {package: code_hash(ROOT / package) for package in packages}


def source_hash(function) -> str:
    """One function's source, for a result that depends on it and not on the rest of its file."""
    return digest(inspect.getsource(function))


def files_hash(root: Path, relative_paths) -> str:
    """sha256 over the files' relative paths and bytes, in sorted order: the images themselves."""
    sha = hashlib.sha256()
    for relative in sorted(str(p) for p in relative_paths):
        sha.update(relative.encode() + b"\0" + (root / relative).read_bytes() + b"\0")
    return sha.hexdigest()[:16]


def dataset_fingerprints(dataset, image_root: Path) -> tuple[str, str]:
    """(data, split) of a prepared swipr_core Dataset."""
    return files_hash(image_root, dataset.split.paths), dataset.fingerprint


def differences(recorded: dict, now: dict) -> list[str]:
    """What differs between two blocks, one phrase each: 'code (search, objectives)',
    'threads 2 -> 1'. Fields recorded as "unknown" are left out (see unchecked)."""
    found = []
    for name in COMPARED:
        old, new = recorded.get(name, UNKNOWN), now.get(name)
        if old == UNKNOWN or old == new:
            continue
        if isinstance(old, dict) and isinstance(new, dict):
            parts = sorted(k for k in old.keys() | new.keys() if old.get(k, UNKNOWN) != UNKNOWN and old.get(k) != new.get(k))
            if parts:
                shown = parts if name == "code" else [f"{k} {old.get(k)} -> {new.get(k)}" for k in parts]
                found.append(f"{name} ({', '.join(shown)})")
        else:
            found.append(f"{name} {old} -> {new}")
    return found


def unchecked(recorded: dict) -> list[str]:
    """The fields a result recorded before provenance doesn't know."""
    return [name for name in COMPARED if recorded.get(name, UNKNOWN) == UNKNOWN]


def check(path: Path, recorded: dict | None, now: dict, accept_unversioned: bool = False) -> str:
    """Raise Refused unless the result at `path` is what would be made now; return the line to
    print when it is read: what it is, from when and which commit."""
    where = _shown(path)
    if recorded is None:
        raise Refused(f"{where}: no provenance (what made it is unknown); delete it to make it again")
    if recorded.get("recorded_before_provenance") and not accept_unversioned:
        raise Refused(f"{where}: recorded before provenance (commit {recorded.get('commit', UNKNOWN)}), so its "
                      f"{', '.join(unchecked(recorded))} can't be checked; make it again, or pass {ACCEPT_FLAG} "
                      f"to read it anyway")
    different = differences(recorded, now)
    if different:
        raise Refused(f"{where}: stale, not what this run would make: {'; '.join(different)} (it was made "
                      f"{recorded.get('made_at', UNKNOWN)} at commit {recorded.get('commit', UNKNOWN)}); "
                      f"delete it to make it again")
    if recorded.get("recorded_before_provenance"):
        return (f"{where}: recorded before provenance, committed {recorded.get('made_at', UNKNOWN)} in commit "
                f"{recorded.get('commit', UNKNOWN)}; read with {ACCEPT_FLAG}, not checked: {', '.join(unchecked(recorded))}")
    return f"{where}: made {recorded.get('made_at', UNKNOWN)} at commit {recorded.get('commit', UNKNOWN)}"


def _shown(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(ROOT))
    except ValueError:
        return str(path)


def refuse(error: Refused, prog: str) -> None:
    """The one line, exit status 2 (bad input), no traceback."""
    print(f"{prog}: error: {error}", file=sys.stderr, flush=True)
    raise SystemExit(2)
