"""Parse a study file (TOML) once, at the edge, into frozen dataclasses.

Every section has one dict of defaults that is also its schema: a key that is not in it is
an error naming the key, and a value of the wrong type is an error naming the key and the
type it should have. Paths are relative to the study file's folder.
"""
from __future__ import annotations

import math
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from swipr_core.data import DataSpec
from swipr_core.errors import SwiprError
from swipr_core.labels import LabelRules

# The search space's parameter names are also the trial's param names.
SPACE_KEYS = ("lr", "batch_size", "image_size", "freeze", "n_cycles", "cycle_len", "cycle_mult")
FREEZE_STRATEGIES = ("frozen", "unfrozen", "frozen_then_unfrozen")
SAMPLERS = ("tpe", "random", "qmc")
PRUNERS = ("median", "percentile", "hyperband", "successive_halving", "none")

# section -> key -> (type, default). `None` as a default means "required" only where noted.
SCHEMA: dict[str, dict[str, tuple[type | tuple[type, ...], Any]]] = {
    "study": {
        "name": (str, ""),                 # default: the study file's stem
        "storage": (str, ""),              # default: sqlite file beside the study file
        "sampler": (str, "tpe"),
        "pruner": (str, "median"),
        "pruner_startup_trials": (int, 3),  # median/percentile: trials finished before pruning
        "pruner_warmup_epochs": (int, 1),   # epochs every trial runs before it can be pruned
        "seed": (int, 0),
        "warm_start": (bool, True),         # enqueue the notebook's configurations first
        "n_trials": (int, 20),
        "timeout": ((int, float), 0),       # seconds; 0 = none
        "heartbeat_interval": (int, 60),    # seconds between a running trial's heartbeats
        "grace_period": (int, 180),         # a trial silent this long is failed and retried
        "max_retry": (int, 3),              # times one trial is retried after its worker died
    },
    "data": {
        "database": (str, None),            # required: the pics SQLite database
        "image_root": (str, ""),            # default: the database's folder
        "labels_file": (str, ""),           # default: <study stem>.labels.csv beside the study
        "cache_dir": (str, ""),             # default: .swipr-cache beside the study file
        "cache_px": (int, 256),             # images are decoded once, resized to this square
        "valid_pct": ((int, float), 0.2),
        "split_seed": (int, 42),
    },
    "data.rules": {
        "yes_dirs": (list, []),
        "no_dirs": (list, []),
        "invalid_labels": (list, []),
        "fail_labels": (list, []),
        "fail_on_male": (bool, False),
        "min_people": (int, 0),
        "max_people": (int, 0),
        "min_age": (int, 0),
        "max_age": (int, 0),
    },
    "model": {
        "arch": (str, "resnext50_32x4d"),
        "pretrained": (bool, True),
        "weights": (str, ""),               # a local weights file, for machines offline
    },
    "train": {
        "device": (str, "auto"),            # auto | cpu | cuda | cuda:N
        "head_epochs": (int, 1),            # frozen epochs before unfreezing (frozen_then_unfrozen)
        "precision": (str, "auto"),         # auto (bf16 on CUDA, fp32 on CPU) | bf16 | fp16 | fp32
        "compile": (str, "auto"),           # torch.compile: auto (on only where measured faster) | on | off
    },
    "cluster": {
        "dask": (str, ""),                  # a Dask scheduler address; `study run` runs trials there
        "checkpoint_dir": (str, ""),        # per-epoch checkpoints, on a folder every worker reads
    },
}
SECTION_ORDER = ("study", "data", "model", "train", "cluster", "space")


@dataclass(frozen=True)
class StudySection:
    name: str
    storage: str
    sampler: str
    pruner: str
    pruner_startup_trials: int
    pruner_warmup_epochs: int
    seed: int
    warm_start: bool
    n_trials: int
    timeout: float
    heartbeat_interval: int = 60
    grace_period: int = 180
    max_retry: int = 3


# The [data] section is exactly what the core needs to prepare a dataset.
DataSection = DataSpec


@dataclass(frozen=True)
class ModelSection:
    arch: str
    pretrained: bool
    weights: Path | None


@dataclass(frozen=True)
class TrainSection:
    device: str
    head_epochs: int
    precision: str
    compile: str = "auto"


@dataclass(frozen=True)
class ClusterSection:
    dask: str = ""                          # SWIPR_DASK overrides it, --dask overrides both
    checkpoint_dir: Path | None = None      # default: <cache_dir>/checkpoints


@dataclass(frozen=True)
class Range:
    low: float
    high: float
    log: bool = False
    step: float | None = None
    is_int: bool = False


@dataclass(frozen=True)
class Choices:
    values: tuple


@dataclass(frozen=True)
class StudyFile:
    path: Path
    study: StudySection
    data: DataSection
    model: ModelSection
    train: TrainSection
    space: dict[str, Range | Choices] = field(default_factory=dict)
    cluster: ClusterSection = ClusterSection()


def _type_name(expected) -> str:
    names = {str: "a string", int: "an integer", float: "a number", bool: "true or false",
             list: "an array", dict: "a table"}
    if isinstance(expected, tuple):
        return " or ".join(names[t] for t in expected) if expected != (int, float) else "a number"
    return names[expected]


def _check_type(where: str, value: Any, expected) -> None:
    kinds = expected if isinstance(expected, tuple) else (expected,)
    # TOML booleans are ints to Python; never accept one where a number is meant.
    ok = isinstance(value, kinds) and not (isinstance(value, bool) and bool not in kinds)
    if not ok:
        raise SwiprError(f"{where} must be {_type_name(expected)}, got {value!r}")


def _section(path: Path, raw: dict, name: str) -> dict[str, Any]:
    table = raw
    for part in name.split("."):
        table = table.get(part, {})
        if not isinstance(table, dict):
            raise SwiprError(f"{path}: [{name}] must be a table")
    schema = SCHEMA[name]
    values = {}
    for key, value in table.items():
        if name == "data" and key == "rules":
            continue
        if key not in schema:
            raise SwiprError(f"{path}: unknown key '{key}' in [{name}] (known: {', '.join(schema)})")
        _check_type(f"{path}: [{name}] {key}", value, schema[key][0])
        values[key] = value
    for key, (_, default) in schema.items():
        if key not in values:
            if default is None:
                raise SwiprError(f"{path}: [{name}] {key} is required")
            values[key] = default
    return values


def _one_of(path: Path, where: str, value: str, allowed: tuple[str, ...]) -> str:
    if value not in allowed:
        raise SwiprError(f"{path}: {where} must be one of {', '.join(allowed)}, got {value!r}")
    return value


def _int_list(path: Path, key: str, value: list) -> tuple[int, ...]:
    for item in value:
        _check_type(f"{path}: [data.rules] {key} item", item, int)
    return tuple(value)


def _str_list(path: Path, key: str, value: list) -> tuple[str, ...]:
    for item in value:
        _check_type(f"{path}: [data.rules] {key} item", item, str)
    return tuple(item.strip("/") for item in value)


def _parse_rules(path: Path, raw: dict) -> LabelRules:
    values = _section(path, raw, "data.rules")
    for key in ("min_people", "max_people", "min_age", "max_age"):
        if values[key] < 0:
            raise SwiprError(f"{path}: [data.rules] {key} must be 0 (no limit) or more, got {values[key]}")
    for low, high in (("min_people", "max_people"), ("min_age", "max_age")):
        if values[high] and values[low] > values[high]:
            raise SwiprError(f"{path}: [data.rules] {low} ({values[low]}) is above {high} ({values[high]})")
    return LabelRules(
        yes_dirs=_str_list(path, "yes_dirs", values["yes_dirs"]),
        no_dirs=_str_list(path, "no_dirs", values["no_dirs"]),
        invalid_labels=_int_list(path, "invalid_labels", values["invalid_labels"]),
        fail_labels=_int_list(path, "fail_labels", values["fail_labels"]),
        fail_on_male=values["fail_on_male"],
        min_people=values["min_people"],
        max_people=values["max_people"],
        min_age=values["min_age"],
        max_age=values["max_age"],
    )


# What each space key may hold: (allowed value types, extra check)
_SPACE_TYPES = {
    "lr": (int, float), "batch_size": int, "image_size": int, "freeze": str,
    "n_cycles": int, "cycle_len": int, "cycle_mult": int,
}


def _check_space_value(path: Path, key: str, value: Any) -> None:
    _check_type(f"{path}: [space] {key} value", value, _SPACE_TYPES[key])
    if key == "freeze":
        _one_of(path, "[space] freeze", value, FREEZE_STRATEGIES)
    elif key == "lr":
        if not (0 < value < 1):
            raise SwiprError(f"{path}: [space] lr must be between 0 and 1, got {value}")
    elif key == "cycle_mult":
        if value < 1:
            raise SwiprError(f"{path}: [space] cycle_mult must be 1 or more, got {value}")
    elif value < 1:
        raise SwiprError(f"{path}: [space] {key} must be 1 or more, got {value}")


def _parse_space(path: Path, raw: dict) -> dict[str, Range | Choices]:
    table = raw.get("space", {})
    if not isinstance(table, dict):
        raise SwiprError(f"{path}: [space] must be a table")
    space: dict[str, Range | Choices] = {}
    for key, spec in table.items():
        if key not in SPACE_KEYS:
            raise SwiprError(f"{path}: unknown key '{key}' in [space] (known: {', '.join(SPACE_KEYS)})")
        if isinstance(spec, list):
            if not spec:
                raise SwiprError(f"{path}: [space] {key} has no choices")
            for value in spec:
                _check_space_value(path, key, value)
            space[key] = Choices(tuple(spec))
        elif isinstance(spec, dict):
            space[key] = _parse_range(path, key, spec)
        else:
            _check_space_value(path, key, spec)
            space[key] = Choices((spec,))
    missing = [key for key in SPACE_KEYS if key not in space]
    if missing:
        raise SwiprError(f"{path}: [space] is missing {', '.join(missing)} (give a value, a range or choices)")
    return space


def _parse_range(path: Path, key: str, spec: dict) -> Range:
    if key == "freeze":
        raise SwiprError(f"{path}: [space] freeze takes choices (an array), not a range")
    unknown = set(spec) - {"low", "high", "log", "step"}
    if unknown:
        raise SwiprError(f"{path}: unknown key '{sorted(unknown)[0]}' in [space] {key} (known: low, high, log, step)")
    for bound in ("low", "high"):
        if bound not in spec:
            raise SwiprError(f"{path}: [space] {key} range needs '{bound}'")
        _check_space_value(path, f"{key}", spec[bound])
    log = spec.get("log", False)
    _check_type(f"{path}: [space] {key} log", log, bool)
    step = spec.get("step")
    if step is not None:
        _check_type(f"{path}: [space] {key} step", step, (int, float))
    low, high = spec["low"], spec["high"]
    if low > high:
        raise SwiprError(f"{path}: [space] {key} low ({low}) is above high ({high})")
    if log and step is not None:
        raise SwiprError(f"{path}: [space] {key} can't have both log = true and a step")
    return Range(low=low, high=high, log=log, step=step, is_int=key != "lr")


def _resolve(base: Path, value: str) -> Path:
    return (base / os.path.expanduser(value)).resolve()


def _journal_url(base: Path, value: str) -> str | None:
    """journal:///rel, journal:////abs or a bare path ending in .log/.journal, as an absolute
    journal:/// URL (relative to `base`); None for anything else."""
    from search.storage import JOURNAL_SCHEME, JOURNAL_SUFFIXES

    if value.startswith(JOURNAL_SCHEME):
        return JOURNAL_SCHEME + str(_resolve(base, value[len(JOURNAL_SCHEME):]))
    if "://" not in value and value.endswith(JOURNAL_SUFFIXES):
        return JOURNAL_SCHEME + str(_resolve(base, value))
    return None


def _storage_url(path: Path, configured: str) -> str:
    from_env = os.environ.get("SWIPR_STORAGE", "")
    if from_env:
        # Passed on to worker processes resolved, so a later change of folder can't move it.
        return _journal_url(Path(), from_env) or from_env
    if configured:
        if configured.startswith("sqlite:///") and not configured.startswith("sqlite:////"):
            # A relative SQLite path is relative to the study file, like every other path.
            return "sqlite:///" + str(_resolve(path.parent, configured[len("sqlite:///"):]))
        # A journal file's too; journal:////abs is absolute, as with sqlite.
        return _journal_url(path.parent, configured) or configured
    return f"sqlite:///{path.parent.resolve() / (path.stem + '.db')}"


def load_study_file(path: str | Path) -> StudyFile:
    path = Path(path)
    if not path.is_file():
        raise SwiprError(f"{path}: study file not found")
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as error:
        raise SwiprError(f"{path}: not valid TOML: {error}") from None
    except UnicodeDecodeError:
        raise SwiprError(f"{path}: not a text file") from None
    for name in raw:
        if name not in SECTION_ORDER:
            raise SwiprError(f"{path}: unknown section [{name}] (known: {', '.join(SECTION_ORDER)})")
    base = path.parent
    study = _section(path, raw, "study")
    data = _section(path, raw, "data")
    model = _section(path, raw, "model")
    train = _section(path, raw, "train")
    cluster = _section(path, raw, "cluster")

    _one_of(path, "[study] sampler", study["sampler"], SAMPLERS)
    _one_of(path, "[study] pruner", study["pruner"], PRUNERS)
    for key in ("n_trials", "pruner_startup_trials", "pruner_warmup_epochs"):
        if study[key] < 0:
            raise SwiprError(f"{path}: [study] {key} must be 0 or more, got {study[key]}")
    for key in ("heartbeat_interval", "grace_period"):
        if study[key] < 1:
            raise SwiprError(f"{path}: [study] {key} must be 1 second or more, got {study[key]}")
    if study["grace_period"] <= study["heartbeat_interval"]:
        raise SwiprError(f"{path}: [study] grace_period ({study['grace_period']}) must be longer than "
                         f"heartbeat_interval ({study['heartbeat_interval']}), or live trials are failed")
    if study["max_retry"] < 0:
        raise SwiprError(f"{path}: [study] max_retry must be 0 or more, got {study['max_retry']}")
    if study["timeout"] < 0 or not math.isfinite(study["timeout"]):
        raise SwiprError(f"{path}: [study] timeout must be 0 (none) or a positive number of seconds")
    storage = _storage_url(path, study["storage"])

    if not 0 < data["valid_pct"] < 1:
        raise SwiprError(f"{path}: [data] valid_pct must be between 0 and 1, got {data['valid_pct']}")
    if data["cache_px"] < 8:
        raise SwiprError(f"{path}: [data] cache_px must be at least 8, got {data['cache_px']}")
    database = _resolve(base, data["database"])
    _one_of(path, "[train] precision", train["precision"], ("auto", "bf16", "fp16", "fp32"))
    if not (train["device"] in ("auto", "cpu", "cuda") or train["device"].startswith("cuda:")):
        raise SwiprError(f"{path}: [train] device must be auto, cpu, cuda or cuda:N, got {train['device']!r}")
    if train["head_epochs"] < 1:
        raise SwiprError(f"{path}: [train] head_epochs must be 1 or more, got {train['head_epochs']}")
    _one_of(path, "[train] compile", train["compile"], ("auto", "on", "off"))

    space = _parse_space(path, raw)
    sizes = space["image_size"]
    largest = sizes.high if isinstance(sizes, Range) else max(sizes.values)
    if largest > data["cache_px"]:
        raise SwiprError(f"{path}: [space] image_size goes up to {largest}, above [data] cache_px ({data['cache_px']})")

    return StudyFile(
        path=path.resolve(),
        study=StudySection(
            name=study["name"] or path.stem,
            storage=storage,
            sampler=study["sampler"],
            pruner=study["pruner"],
            pruner_startup_trials=study["pruner_startup_trials"],
            pruner_warmup_epochs=study["pruner_warmup_epochs"],
            seed=study["seed"],
            warm_start=study["warm_start"],
            n_trials=study["n_trials"],
            timeout=float(study["timeout"]),
            heartbeat_interval=study["heartbeat_interval"],
            grace_period=study["grace_period"],
            max_retry=study["max_retry"],
        ),
        data=DataSection(
            database=database,
            image_root=_resolve(base, data["image_root"]) if data["image_root"] else database.parent,
            labels_file=_resolve(base, data["labels_file"] or f"{path.stem}.labels.csv"),
            cache_dir=_resolve(base, data["cache_dir"] or ".swipr-cache"),
            cache_px=data["cache_px"],
            valid_pct=float(data["valid_pct"]),
            split_seed=data["split_seed"],
            rules=_parse_rules(path, raw),
        ),
        model=ModelSection(
            arch=model["arch"],
            pretrained=model["pretrained"],
            weights=_resolve(base, model["weights"]) if model["weights"] else None,
        ),
        train=TrainSection(device=train["device"], head_epochs=train["head_epochs"], precision=train["precision"],
                           compile=train["compile"]),
        space=space,
        cluster=ClusterSection(
            dask=os.environ.get("SWIPR_DASK", "") or cluster["dask"],
            checkpoint_dir=_resolve(base, cluster["checkpoint_dir"]) if cluster["checkpoint_dir"] else None,
        ),
    )
