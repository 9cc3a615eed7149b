"""Does test-time augmentation help? Validation loss of each finished trial, replayed, scored
plain, with the mirror (what `swipr fit --tta` bundles), and with zoomed crops added.

Zoomed crops are training's other augmentation (zoom up to 1.1, search.loaders.MAX_ZOOM): a
centre crop and four corner crops of 1/1.1 of the side, each with its mirror. Prints one JSON
line per trial and a summary line of the mean change against plain:

    .venv/bin/python bench/tta.py studies/demo.toml [--trials 5]
"""
from __future__ import annotations

import argparse
import json

import numpy as np
import optuna
import torch

from objectives.trial_attrs import attrs_of


def crops(images: np.ndarray, zoom: float, corners: bool) -> list[np.ndarray]:
    """The centre crop (and the four corners) of side px/zoom, uint8 NHWC."""
    px = images.shape[1]
    side = round(px / zoom)
    starts = [((px - side) // 2, (px - side) // 2)]
    if corners:
        starts += [(0, 0), (0, px - side), (px - side, 0), (px - side, px - side)]
    return [np.ascontiguousarray(images[:, top:top + side, left:left + side]) for top, left in starts]


def with_mirrors(views: list[np.ndarray]) -> list[np.ndarray]:
    from swipr_core.serve.tta import mirrored

    return [v for view in views for v in (view, mirrored(view))]


def mean_loss(serving, views: list[np.ndarray], targets) -> float:
    """Validation loss of P(YES) averaged over the views."""
    from swipr_core.serve.export import torch_probs
    from swipr_core.train.metrics import image_log_losses

    probs = np.mean([torch_probs(serving, view) for view in views], axis=0)
    return float(image_log_losses(probs, targets).mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("study_file")
    parser.add_argument("--trials", type=int, default=5, help="the best N finished trials")
    args = parser.parse_args()

    from search.fit.replay import train_config
    from search.study.data_record import prepare_study_data
    from search.study.open import open_study
    from search.studyfile import load_study_file
    from search.views.top_losses import valid_images
    from swipr_core.data.loaders import MAX_ZOOM, Augment
    from swipr_core.serve.export import ServingModel, cpu_copy
    from swipr_core.train.run import train
    from swipr_core.train.schedule import STAGE_KEYS

    study_file = load_study_file(args.study_file)
    study = open_study(study_file, create=False)
    dataset = prepare_study_data(study_file)
    images = valid_images(dataset, range(len(dataset.split.indices(True))))
    done = sorted(study.get_trials(states=[optuna.trial.TrialState.COMPLETE]), key=lambda t: t.value)
    changes: dict[str, list[float]] = {}
    for trial in done[:args.trials]:
        torch.set_num_threads(attrs_of(trial).get("cpu_threads", torch.get_num_threads()))
        config = train_config(trial, STAGE_KEYS, study_file)
        result = train(dataset, config, study_file.model, "cpu", "fp32")
        serving = ServingModel(cpu_copy(result.model), Augment(config.image_size, result.mean, result.std)).eval()
        targets = result.valid_targets
        row = {"trial": trial.number, "trial_val_loss": trial.value,
               "plain": mean_loss(serving, [images], targets),
               "flip": mean_loss(serving, with_mirrors([images]), targets),
               "flip+centre_zoom": mean_loss(serving, with_mirrors([images, *crops(images, MAX_ZOOM, False)]), targets),
               "flip+5_zoom_crops": mean_loss(serving, with_mirrors([images, *crops(images, MAX_ZOOM, True)]), targets)}
        for key in ("flip", "flip+centre_zoom", "flip+5_zoom_crops"):
            changes.setdefault(key, []).append(row[key] - row["plain"])
        print(json.dumps(row), flush=True)
    print(json.dumps({"n_valid": len(images), "trials": len(changes.get("flip", [])),
                      "mean_change_vs_plain": {k: float(np.mean(v)) for k, v in changes.items()},
                      "trials_improved": {k: int(np.sum(np.array(v) < 0)) for k, v in changes.items()}}))


if __name__ == "__main__":
    main()
