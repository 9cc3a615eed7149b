"""Test-time augmentation: P(YES) averaged over a photo and its left-right mirror.

fastai's `learn.tta()` averages predictions over augmented copies of each image. Here the
one augmentation is the horizontal flip, the one training's augmentation applies at full
strength; zoomed crops were measured and left out (bench/tta.py, docs/top-losses-and-tta.md).
A bundle fit with `--tta` averages inside model.onnx, so any server gets the averaged P(YES)
its threshold was picked on; `swipr predict --tta` averages here, in numpy, for a bundle
that doesn't. The average of a flip-average is itself (f(x) and f(mirror x) just swap), so
averaging twice changes nothing. No torch here: this is on the CPU server's path.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np

from swipr_core.errors import SwiprError

MANIFEST_KEY = "tta"
HFLIP = "hflip"


def mirrored(images: np.ndarray) -> np.ndarray:
    """uint8 (B, H, W, 3) batches mirrored left to right (the width axis)."""
    return np.ascontiguousarray(images[:, :, ::-1])


def flip_average(probs_of: Callable[[np.ndarray], np.ndarray], images: np.ndarray) -> np.ndarray:
    """P(YES) of each image averaged with P(YES) of its mirror image."""
    return (probs_of(images) + probs_of(mirrored(images))) / 2


def manifest_record(used: bool, plain_loss: float, tta_loss: float, n_valid: int) -> dict:
    """The bundle's `tta` entry: whether model.onnx averages, and the loss each way on validation."""
    return {"used": used, "augmentations": [HFLIP] if used else [], "in_model": used,
            "val_loss_plain": plain_loss, "val_loss_tta": tta_loss, "n_valid": n_valid}


def bundle_averages(manifest: dict, where: Path) -> bool:
    """Whether the bundle's model.onnx already averages over the mirror (fit with --tta).

    Bundles from before TTA have no entry: they don't."""
    record = manifest.get(MANIFEST_KEY)
    if record is None:
        return False
    if not isinstance(record, dict) or not isinstance(record.get("used"), bool):
        raise SwiprError(f"{where}: '{MANIFEST_KEY}' must be an object with a true/false 'used', got {record!r}")
    return record["used"] and bool(record.get("in_model", True))
