"""Read a study file (TOML) once, at the edge: every key typed, every value checked, every
failure one line that names the file and the key."""
from __future__ import annotations

import dataclasses
import hashlib
import math
import os
import tomllib
from pathlib import Path

from objectives.space import N_CYCLES_MODES
from search.studyfile.fields import keyed, one_of, parse_table, resolve, table_at
from search.studyfile.learn_from import check_learn_from, parse_learn_from
from search.studyfile.sections import (
    PRECISIONS,
    PROMOTIONS,
    PRUNE_AT_CHOICES,
    PRUNERS,
    SAMPLERS,
    SCHEDULERS,
    ClusterSection,
    StudyFile,
    StudySection,
    TrainSection,
)
from search.studyfile.space import check_epochs, largest, largest_image_size, parse_space
from search.studyfile.storage_url import storage_url
from swipr_core.data.dataset import MAX_SEED, DataSpec
from swipr_core.data.labels import LabelRules
from swipr_core.errors import SwiprError
from swipr_core.train.model_spec import ModelSpec
from swipr_core.train.schedule import check_compile_mode, check_device

SECTIONS = ("study", "data", "model", "train", "cluster", "space")
MAX_HEARTBEAT_S = 86_400   # a day: far beyond any real interval, far below what overflows a timer


def load_study_file(path: str | Path) -> StudyFile:
    path = Path(path)
    raw, sha256 = _read_toml(path)
    data = _data(path, raw)
    space = parse_space(path, raw)
    if largest_image_size(space) > data.cache_px:
        where = "[space]" if largest(space["image_size"]) == largest_image_size(space) else "[space.stage2]"
        raise SwiprError(f"{path}: {where} image_size goes up to {largest_image_size(space)}, "
                         f"above [data] cache_px ({data.cache_px})")
    model = ModelSpec(**parse_table(path, "model", table_at(path, raw, "model"), ModelSpec, path.parent))
    train = _train(path, raw)
    check_epochs(path, space, train.head_epochs)
    return StudyFile(path=path.resolve(), study=_study(path, raw), data=data, model=model, train=train, space=space,
                     cluster=_cluster(path, raw), sha256=sha256)


def _read_toml(path: Path) -> tuple[dict, str]:
    """The file's tables and the SHA-256 of the bytes they were read from (read once)."""
    if not path.is_file():
        raise SwiprError(f"{path}: study file not found")
    content = path.read_bytes()
    try:
        raw = tomllib.loads(content.decode("utf-8"))
    except tomllib.TOMLDecodeError as error:
        raise SwiprError(f"{path}: not valid TOML: {error}") from None
    except UnicodeDecodeError:
        raise SwiprError(f"{path}: not a text file") from None
    for name in raw:
        if name not in SECTIONS:
            raise SwiprError(f"{path}: unknown section [{name}] (known: {', '.join(SECTIONS)})")
    return raw, hashlib.sha256(content).hexdigest()


def _study(path: Path, raw: dict) -> StudySection:
    table = table_at(path, raw, "study")
    where = f"{path}: [study]"
    study = StudySection(**parse_table(path, "study", table, StudySection, path.parent, skip=("learn_from",)))
    if "learn_from" in table:
        learn_from = parse_learn_from(where, table["learn_from"], path.parent)
        check_learn_from(where, path, learn_from)
        study = dataclasses.replace(study, learn_from=learn_from)
    one_of(f"{where} sampler", study.sampler, SAMPLERS)
    one_of(f"{where} pruner", study.pruner, PRUNERS)
    one_of(f"{where} prune_at", study.prune_at, PRUNE_AT_CHOICES)
    one_of(f"{where} scheduler", study.scheduler, SCHEDULERS)
    one_of(f"{where} promotion", study.promotion, PROMOTIONS)
    if study.promotion_eta < 2:
        raise SwiprError(f"{where} promotion_eta must be 2 or more, got {study.promotion_eta}")
    if study.n_cycles:
        one_of(f"{where} n_cycles", study.n_cycles, N_CYCLES_MODES)
    for key in ("pruner_startup_trials", "pruner_warmup_epochs", "max_retry", "learn_from_top"):
        if getattr(study, key) < 0:
            raise SwiprError(f"{where} {key} must be 0 or more, got {getattr(study, key)}")
    for key in ("n_trials", "max_failures_in_a_row"):
        if getattr(study, key) < 1:
            raise SwiprError(f"{where} {key} must be 1 or more, got {getattr(study, key)}")
    if not 0 <= study.seed <= MAX_SEED:
        raise SwiprError(f"{where} seed must be between 0 and {MAX_SEED}, got {study.seed}")
    for key in ("heartbeat_interval", "grace_period"):
        if not 1 <= getattr(study, key) <= MAX_HEARTBEAT_S:
            raise SwiprError(f"{where} {key} must be between 1 and {MAX_HEARTBEAT_S} seconds, got {getattr(study, key)}")
    if study.grace_period <= study.heartbeat_interval:
        raise SwiprError(f"{where} grace_period ({study.grace_period}) must be longer than "
                         f"heartbeat_interval ({study.heartbeat_interval}), or live trials are failed")
    if study.timeout < 0 or not math.isfinite(study.timeout):
        raise SwiprError(f"{where} timeout must be 0 (none) or a positive number of seconds")
    return dataclasses.replace(study, name=study.name or path.stem, storage=storage_url(path, study.storage))


def _data(path: Path, raw: dict) -> DataSpec:
    values = parse_table(path, "data", table_at(path, raw, "data"), DataSpec, path.parent, skip=("rules",))
    values = {key: value for key, value in values.items() if value is not None}   # "" = the default
    if values.get("database") is None:
        raise SwiprError(f"{path}: [data] database is required")
    values.setdefault("image_root", values["database"].parent)
    values.setdefault("labels_file", resolve(path.parent, f"{path.stem}.labels.csv"))
    values.setdefault("cache_dir", resolve(path.parent, ".swipr-cache"))
    rules = _rules(path, raw)
    with keyed(f"{path}: [data]"):
        return DataSpec(**values, rules=rules)


def _rules(path: Path, raw: dict) -> LabelRules:
    values = parse_table(path, "data.rules", table_at(path, raw, "data.rules"), LabelRules, path.parent)
    for key in ("yes_dirs", "no_dirs"):
        if key in values:
            values[key] = tuple(folder.strip("/") for folder in values[key])
    with keyed(f"{path}: [data.rules]"):
        return LabelRules(**values)


def _train(path: Path, raw: dict) -> TrainSection:
    train = TrainSection(**parse_table(path, "train", table_at(path, raw, "train"), TrainSection, path.parent))
    where = f"{path}: [train]"
    one_of(f"{where} precision", train.precision, PRECISIONS)
    with keyed(where):
        check_compile_mode(train.compile)
        check_device(train.device)
    if train.head_epochs < 1:
        raise SwiprError(f"{where} head_epochs must be 1 or more, got {train.head_epochs}")
    return train


def _cluster(path: Path, raw: dict) -> ClusterSection:
    cluster = ClusterSection(**parse_table(path, "cluster", table_at(path, raw, "cluster"), ClusterSection,
                                           path.parent))
    return dataclasses.replace(cluster, dask=os.environ.get("SWIPR_DASK", "") or cluster.dask)
