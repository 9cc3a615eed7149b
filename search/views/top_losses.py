"""The validation images with the highest loss, in a grid: fastai's `plot_top_losses`.

The images the model is most confidently wrong about show label noise (a photo filed under
the wrong folder) and what the model learned to look at. Each tile carries the label, the
model's answer at the threshold, P(YES) and the image's cross-entropy, as fastai titles
them (prediction / actual / loss / probability); a wrong answer's title is red. Drawn with
matplotlib's object API (no pyplot, no global backend), so it is safe inside a worker.
"""
from __future__ import annotations

import math
import os
import tempfile
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from swipr_core.data.split import CLASSES
from swipr_core.train.metrics import image_log_losses

TOP_LOSSES_PNG = "top_losses.png"
DEFAULT_K = 9
COLUMNS = 3
TILE_INCHES = 2.6


def top_loss_rows(probs, targets, k: int = DEFAULT_K) -> np.ndarray:
    """Positions (in validation order) of the k highest-loss images, highest first; ties by position."""
    losses = image_log_losses(probs, targets)
    return np.argsort(-losses, kind="stable")[:max(k, 0)]


def valid_images(dataset, rows) -> np.ndarray:
    """uint8 (n, px, px, 3) cached images of these validation positions (TrainResult order)."""
    valid = np.asarray(dataset.split.indices(True))[np.asarray(rows, dtype=np.int64)]
    array = dataset.cache.open()
    return np.stack([array[i] for i in valid]) if len(valid) else np.zeros((0, 1, 1, 3), np.uint8)


def valid_paths(dataset, rows) -> list[str]:
    indices = dataset.split.indices(True)
    return [dataset.split.paths[indices[int(r)]] for r in rows]


def plot_top_losses(images: np.ndarray, targets, probs, path: Path, title: str, threshold: float = 0.5,
                    names: list[str] | None = None) -> Path:
    """Tiles of `images` (already chosen, highest loss first) with label, answer, P(YES) and loss."""
    targets, probs = np.asarray(targets).astype(int), np.asarray(probs, dtype=np.float64)
    losses = image_log_losses(probs, targets)
    n = len(images)
    columns = max(1, min(COLUMNS, n))
    rows = max(1, math.ceil(n / columns))
    figure = Figure(figsize=(columns * TILE_INCHES, rows * (TILE_INCHES + 0.35) + 0.5))
    axes = figure.subplots(rows, columns, squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.set_axis_off()
        if i >= n:
            continue
        answer = int(probs[i] >= threshold)
        ax.imshow(images[i], interpolation="nearest" if images[i].shape[0] < 96 else "antialiased")
        label = f"label {CLASSES[targets[i]]} · model {CLASSES[answer]}\nP(YES) {probs[i]:.2f} · loss {losses[i]:.2f}"
        if names is not None:
            label += f"\n{_short(names[i])}"
        ax.set_title(label, fontsize=9, color="#b00" if answer != targets[i] else "#222")
    if n == 0:
        axes.flat[0].text(0.5, 0.5, "no validation images", ha="center", va="center")
    figure.suptitle(f"{title}: highest loss first (answer at P(YES) >= {threshold:.2f})", fontsize=10)
    figure.tight_layout()
    return _save(figure, path)


def _short(name: str, width: int = 30) -> str:
    return name if len(name) <= width else "…" + name[-(width - 1):]


def _save(figure: Figure, path: Path) -> Path:
    """Written to a temp file beside `path`, then renamed: a reader never sees half a PNG."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as file:
            figure.savefig(file, format="png", dpi=90)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)
    return path


def draw_top_losses(dataset, probs, targets, path: Path, title: str, threshold: float = 0.5,
                    k: int = DEFAULT_K, with_names: bool = False) -> Path:
    """Choose the k highest-loss validation images of a run and draw them to `path`."""
    rows = top_loss_rows(probs, targets, k)
    probs, targets = np.asarray(probs)[rows], np.asarray(targets)[rows]
    names = valid_paths(dataset, rows) if with_names else None
    return plot_top_losses(valid_images(dataset, rows), targets, probs, path, title, threshold, names)
