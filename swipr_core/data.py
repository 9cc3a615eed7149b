"""From a pics database to a labelled, split, cached dataset that every trial shares."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from swipr_core.cache import ImageCache, build_cache
from swipr_core.labels import LabelRules
from swipr_core.split import LabeledSplit, prepare_labels


@dataclass(frozen=True)
class DataSpec:
    database: Path
    image_root: Path
    labels_file: Path
    cache_dir: Path
    cache_px: int
    valid_pct: float
    split_seed: int
    rules: LabelRules


@dataclass(frozen=True)
class Dataset:
    split: LabeledSplit
    cache: ImageCache

    @property
    def fingerprint(self) -> str:
        return self.split.fingerprint


def prepare_data(spec: DataSpec, progress=None) -> Dataset:
    split = prepare_labels(spec.database, spec.image_root, spec.rules, spec.valid_pct, spec.split_seed,
                           spec.labels_file)
    cache = build_cache(spec.image_root, split.paths, spec.cache_dir, spec.cache_px, progress=progress)
    return Dataset(split=split, cache=cache)
