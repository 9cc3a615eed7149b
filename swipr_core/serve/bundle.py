"""A model bundle on disk: the files, a manifest that hashes every one, write and verify.

A bundle is a folder: `model.safetensors` (the weights), `model.onnx` (what a CPU server runs)
and `manifest.json` (how to feed the model and what it scored). Nothing in it is a pickle.
The manifest lists the SHA-256 of every other file and carries a checksum of its own
canonical JSON, so one changed byte anywhere is caught before anything is loaded. The
checksum catches corruption and careless edits, not an attacker (who could recompute it):
for that, compare the manifest file's SHA-256 with the one recorded on the study's trial.

Writes go to a temporary folder beside the target; the target is a symlink to the finished
folder, swapped for a new one in one rename (swipr_core.serve.bundle_swap), so a crash or a Ctrl-C
leaves either the old bundle or the new one, never half of one and never none.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from swipr_core.data.images import NotRegularFile, read_regular, sha256_regular
from swipr_core.data.writable import check_folder_writable
from swipr_core.errors import SwiprError
from swipr_core.serve.bundle_swap import STAGING_SUFFIX, publish

FORMAT = "swipr-bundle"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
WEIGHTS = "model.safetensors"
ONNX = "model.onnx"
REQUIRED_FILES = (WEIGHTS, ONNX)
MAX_MANIFEST_BYTES = 1 << 20
MAX_MODEL_BYTES = 4 << 30  # a file to load whose manifest entry gives no size: read no more
CHECKSUM_KEY = "manifest_checksum"
UNLISTED_SHOWN = 5   # a refusal names this many of a folder's unlisted files

# What predict relies on, with the type each must have: checked on every load.
REQUIRED_KEYS = {
    "format": str, "format_version": int, "arch": str, "cache_px": int, "image_size": int,
    "mean": list, "std": list, "classes": list, "threshold": float, "files": dict,
}


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def manifest_checksum(manifest: dict) -> str:
    """SHA-256 of the manifest's canonical JSON, without the checksum itself."""
    body = {key: value for key, value in manifest.items() if key != CHECKSUM_KEY}
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=True)
    return sha256_bytes(canonical.encode())


def is_bundle(path: Path) -> bool:
    """A folder that holds a manifest of this format (valid or not): safe to replace."""
    try:
        manifest = json.loads(read_regular(path / MANIFEST, MAX_MANIFEST_BYTES))
    except (OSError, ValueError):
        return False
    return isinstance(manifest, dict) and manifest.get("format") == FORMAT


def target_path(out: str | Path) -> Path:
    """--out as an absolute path whose folder's symlinks are followed but not its own: a
    bundle's name is the link that the next bundle replaces, not the version it points at."""
    out = Path(os.path.abspath(out))
    return out.parent.resolve() / out.name


def unlisted_files(out: Path) -> list[str]:
    """What the bundle folder `out` holds besides manifest.json and the files its manifest
    lists (a folder's name ends in "/"): a user's own files, which replacing `out` would delete."""
    folder = out.resolve()
    try:
        files = json.loads(read_regular(folder / MANIFEST, MAX_MANIFEST_BYTES)).get("files")
    except (OSError, ValueError, AttributeError):
        files = None
    listed = {MANIFEST, *(files if isinstance(files, dict) else ())}
    return sorted(entry.name + ("/" if entry.is_dir() and not entry.is_symlink() else "")
                  for entry in folder.iterdir()
                  if entry.name not in listed or (entry.is_dir() and not entry.is_symlink()))


def check_target(out: Path, force: bool = False) -> None:
    """Refuse a target that is a file, a non-empty folder that is not a bundle, a bundle that
    holds files its manifest doesn't list (unless `force`: they are deleted with it), or one
    whose folder can't be written (the new bundle, its link and the swap all live there)."""
    if out.exists() and not out.is_dir():
        raise SwiprError(f"{out}: exists and is not a folder; choose another --out")
    if out.is_dir() and any(out.iterdir()) and not is_bundle(out):
        raise SwiprError(f"{out}: folder is not empty and holds no model bundle; refusing to overwrite it")
    extra = unlisted_files(out) if out.is_dir() and not force else []
    if extra:
        shown = ", ".join(extra[:UNLISTED_SHOWN]) + (f" and {len(extra) - UNLISTED_SHOWN} more"
                                                     if len(extra) > UNLISTED_SHOWN else "")
        raise SwiprError(f"{out}: holds {shown}, which the bundle's manifest doesn't list; a new bundle there "
                         f"would delete {'them' if len(extra) > 1 else 'it'}: move {'them' if len(extra) > 1 else 'it'} "
                         f"out, choose another --out, or pass --force to replace the folder whole")
    if not out.parent.is_dir():
        raise SwiprError(f"{out.parent}: folder does not exist")
    check_folder_writable(out.parent, f"--out {out}")


def staging_dir(out: Path, force: bool = False) -> Path:
    """An empty folder beside `out`, on the same file system, for the new bundle's files."""
    check_target(out, force)
    return Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=STAGING_SUFFIX, dir=out.parent))


def finish(staging: Path, out: Path, manifest: dict, force: bool = False) -> str:
    """Hash the staged files into the manifest, write it, move the bundle into place (checked
    again: a user may have added files to `out` while the model trained). Returns the SHA-256
    of the manifest file."""
    check_target(out, force)
    files = sorted(p.name for p in staging.iterdir())
    missing = [name for name in REQUIRED_FILES if name not in files]
    if missing:
        raise SwiprError(f"{staging}: bundle is missing {', '.join(missing)}")
    manifest = {**manifest, "format": FORMAT, "format_version": FORMAT_VERSION,
                "files": {name: {"sha256": sha256_file(staging / name), "bytes": (staging / name).stat().st_size}
                          for name in files if name != MANIFEST}}
    manifest[CHECKSUM_KEY] = manifest_checksum(manifest)
    text = json.dumps(manifest, indent=2, sort_keys=False) + "\n"
    (staging / MANIFEST).write_text(text, encoding="utf-8")
    # mkdtemp and some writers make private files; a server under another user must read them.
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(staging, 0o777 & ~umask)
    for name in (*files, MANIFEST):
        os.chmod(staging / name, 0o666 & ~umask)
    publish(staging, out)   # one atomic step (swipr_core.serve.bundle_swap)
    return sha256_bytes(text.encode())


@dataclass(frozen=True)
class VerifiedBundle:
    path: Path
    manifest: dict
    manifest_sha256: str
    contents: dict[str, bytes]    # the files asked for, exactly the bytes that were hashed


def verify(path: str | Path, load: tuple[str, ...] = (ONNX,), expect_sha256: str | None = None) -> VerifiedBundle:
    """Check the manifest and every file's SHA-256; return the bytes of the files in `load`.

    Every check runs before any model file is parsed; the returned bytes are the ones that
    were hashed, so the file can't change between the check and the load. With
    `expect_sha256`, the manifest file must be exactly the one a server was told to trust.
    """
    path = Path(path)
    if not path.is_dir():
        raise SwiprError(f"{path}: not a model bundle folder")
    # A bundle written by `swipr fit` is a symlink to its version folder: follow it once, so
    # every file is read from one version even if a new one is swapped in meanwhile.
    path = path.resolve()
    manifest_file = path / MANIFEST
    raw = _read_manifest(manifest_file, expect_sha256)
    try:
        manifest = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as error:
        raise SwiprError(f"{manifest_file}: corrupt, not valid JSON ({error})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise SwiprError(f"{manifest_file}: not a {FORMAT} manifest")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise SwiprError(f"{manifest_file}: format_version {manifest.get('format_version')!r}; "
                         f"this swipr reads version {FORMAT_VERSION}")
    if manifest.get(CHECKSUM_KEY) != manifest_checksum(manifest):
        raise SwiprError(f"{manifest_file}: checksum does not match its contents; the manifest was changed or is corrupt")
    for key, kind in REQUIRED_KEYS.items():
        value = manifest.get(key)
        ok = isinstance(value, kind) and not isinstance(value, bool) or (kind is float and type(value) is int)
        if not ok:
            raise SwiprError(f"{manifest_file}: '{key}' must be {kind.__name__}, got {value!r}")
    files = manifest["files"]
    for name in (*REQUIRED_FILES, *load):
        if name not in files:
            raise SwiprError(f"{manifest_file}: lists no {name}")
    contents = {}
    for name, entry in files.items():
        if Path(name).name != name or name in ("", ".", "..", MANIFEST):
            raise SwiprError(f"{manifest_file}: file name {name!r} is not a plain file name in the bundle")
        if not isinstance(entry, dict) or not isinstance(entry.get("sha256"), str):
            raise SwiprError(f"{manifest_file}: files.{name} has no sha256")
        data = _check_file(path / name, entry, load=name in load)
        if data is not None:
            contents[name] = data
    return VerifiedBundle(path, manifest, sha256_bytes(raw), contents)


def _read_manifest(manifest_file: Path, expect_sha256: str | None) -> bytes:
    """The manifest's bytes: a regular file, read no further than its size limit."""
    if expect_sha256 is not None and (len(expect_sha256) != 64 or
                                      any(c not in "0123456789abcdef" for c in expect_sha256.lower())):
        raise SwiprError(f"--expect-sha256 must be 64 hex digits, but got {expect_sha256!r}")
    try:
        raw = read_regular(manifest_file, MAX_MANIFEST_BYTES)
    except NotRegularFile as error:
        raise SwiprError(f"{error}; not a bundle manifest") from None
    except OSError:
        raise SwiprError(f"{manifest_file.parent}: no {MANIFEST}; not a model bundle") from None
    if expect_sha256 is not None and sha256_bytes(raw) != expect_sha256.lower():
        raise SwiprError(f"{manifest_file}: SHA-256 {sha256_bytes(raw)} is not the expected "
                         f"{expect_sha256.lower()}; refusing this bundle")
    return raw


def _check_file(file: Path, entry: dict, load: bool) -> bytes | None:
    """Hash one listed file (a regular file only); its bytes if `load`. A mismatch is an error."""
    size = entry.get("bytes")
    limit = size if isinstance(size, int) and not isinstance(size, bool) and size >= 0 else MAX_MODEL_BYTES
    try:
        data = read_regular(file, limit) if load else None
        digest = sha256_bytes(data) if data is not None else sha256_regular(file)
    except NotRegularFile as error:
        raise SwiprError(f"{error}; listed in the manifest as a file of the bundle") from None
    except OSError:
        raise SwiprError(f"{file}: listed in the manifest but can't be read") from None
    if digest != entry["sha256"]:
        raise SwiprError(f"{file}: SHA-256 {digest[:16]}… does not match the manifest's "
                         f"{entry['sha256'][:16]}…; the file was changed or is corrupt")
    return data
