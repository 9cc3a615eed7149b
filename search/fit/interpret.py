"""What the fit tells about its model beyond the scores: TTA's effect and the top losses.

TTA (swipr_core.serve.tta) is measured on every fit, used or not: the flip-averaged validation
loss beside the plain one is what decides whether `--tta` is worth its doubled inference
cost. Both are computed here the same way (one fp32 pass each over the validation split),
so the comparison is fair on any device. The top-loss grid (search.views.top_losses) is
written beside the bundle, not inside it: it is for people, and a server never needs it.
"""
from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import torch

from search.views.top_losses import draw_top_losses
from swipr_core.serve.tta import manifest_record
from swipr_core.train.flip_average import tta_valid_probs
from swipr_core.train.metrics import image_log_losses
from swipr_core.train.run import TrainResult
from swipr_core.train.schedule import TrainConfig


def measure_tta(result: TrainResult, dataset, config: TrainConfig, device: str, use: bool,
                echo) -> tuple[TrainResult, dict]:
    """(the result to bundle — with flip-averaged P(YES) when `use` — and the manifest's tta record)."""
    where = torch.device(device)
    plain = tta_valid_probs(result.model, dataset, config, result.mean, result.std, where, "fp32", flip=False)
    averaged = tta_valid_probs(result.model, dataset, config, result.mean, result.std, where, "fp32", flip=True)
    plain_loss = float(image_log_losses(plain, result.valid_targets).mean())
    tta_loss = float(image_log_losses(averaged, result.valid_targets).mean())
    change = tta_loss - plain_loss
    verdict = ("used: model.onnx averages the two" if use else
               "not used; `swipr fit --tta` bundles it" if change < 0 else "not used (it doesn't help here)")
    echo(f"TTA (each image and its mirror, averaged) on {len(plain)} validation images: val_loss "
         f"{plain_loss:.4f} without, {tta_loss:.4f} with ({change:+.4f}); {verdict}")
    record = manifest_record(use, plain_loss, tta_loss, len(plain))
    return (dataclasses.replace(result, valid_probs=averaged) if use else result), record


def top_losses_file(out: Path) -> Path:
    """The grid's place: beside the bundle folder, named after it."""
    return out.parent / f"{out.name}-top-losses.png"


def write_top_losses(out: Path, result: TrainResult, dataset, threshold: float, echo) -> Path | None:
    """The grid beside the bundle; a picture that can't be drawn warns: the bundle is written already."""
    try:
        path = draw_top_losses(dataset, result.valid_probs, result.valid_targets, top_losses_file(out),
                               f"bundle {out.name}", threshold=threshold, with_names=True)
    except Exception as error:  # noqa: BLE001 - the bundle and its link are done; a picture is extra
        print(f"warning: could not draw the top losses: {type(error).__name__}: {error}", file=sys.stderr, flush=True)
        return None
    echo(f"top losses: the validation images with the highest loss are drawn in {path}")
    return path
