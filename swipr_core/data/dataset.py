"""From a pics database to a labelled, split, cached dataset that every trial shares."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from swipr_core.data.cache import ImageCache, build_cache
from swipr_core.data.labels import LabelRules
from swipr_core.data.split import LabeledSplit, prepare_labels
from swipr_core.errors import FieldError

MAX_CACHE_PX = 4096   # one cached image is cache_px² × 3 bytes: 48 MB at this size already
MAX_SEED = 2**32 - 1   # numpy's seeds


@dataclass(frozen=True)
class DataSpec:
    """Where the photos and their labels are, and how they are split and cached."""

    database: Path                 # the pics SQLite database
    image_root: Path               # paths in the pics table are relative to it
    labels_file: Path              # the labels CSV with its fixed split
    cache_dir: Path                # the decoded-image cache
    cache_px: int = 256            # images are decoded once, resized to this square
    valid_pct: float = 0.2         # share of each class held out for validation
    split_seed: int = 42
    rules: LabelRules = field(default_factory=LabelRules)

    def __post_init__(self):
        if not 0 < self.valid_pct < 1:
            raise FieldError("valid_pct", f"must be between 0 and 1, got {self.valid_pct}")
        if not 8 <= self.cache_px <= MAX_CACHE_PX:
            raise FieldError("cache_px", f"must be between 8 and {MAX_CACHE_PX}, got {self.cache_px}")
        if not 0 <= self.split_seed <= MAX_SEED:
            raise FieldError("split_seed", f"must be between 0 and {MAX_SEED}, got {self.split_seed}")


@dataclass(frozen=True)
class Dataset:
    split: LabeledSplit
    cache: ImageCache

    @property
    def fingerprint(self) -> str:
        return self.split.fingerprint


def prepare_data(spec: DataSpec, progress=None) -> Dataset:
    split = prepare_labels(spec.database, spec.image_root, spec.rules, spec.valid_pct, spec.split_seed,
                           spec.labels_file, cache_px=spec.cache_px)
    cache = build_cache(spec.image_root, split.paths, spec.cache_dir, spec.cache_px, progress=progress)
    return Dataset(split=split, cache=cache)
