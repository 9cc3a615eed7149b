"""The learning-rate range test as a picture: smoothed loss against the head's learning rate
(log axis), each suggestion marked and named with its value, and the [space] lr range shaded,
so whether the search looks where the finder points shows at a glance."""
from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")   # files only, never a window; before pyplot is imported
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from swipr_core.train.lr_finding import LRFinding  # noqa: E402

SKIP_END = 5   # the last batches, where the loss shoots up, as fastai's own plot leaves them out
MARKERS = {"valley": ("C1", "o"), "slide": ("C2", "s"), "minimum": ("C3", "v"), "steep": ("C4", "^")}


def finding_title(finding: LRFinding) -> str:
    head = f" after {finding.head_epochs} head epoch{'s' if finding.head_epochs != 1 else ''}" \
        if finding.head_epochs else ""
    return f"LR finder: {finding.freeze}{head}, batch size {finding.batch_size}, {finding.image_size} px"


def plot_lr_find(finding: LRFinding, path: Path, lr_range: tuple[float, float] | None = None,
                 title: str | None = None) -> Path:
    """Write the picture to `path` (PNG); `lr_range` is the space's (low, high) lr."""
    cut = max(len(finding.lrs) - SKIP_END, 2)
    lrs, losses = np.array(finding.lrs[:cut]), np.array(finding.losses[:cut])
    fig, ax = plt.subplots(figsize=(7.5, 4.2))
    if lr_range is not None:
        ax.axvspan(*lr_range, color="C0", alpha=0.12, zorder=0,
                   label=f"[space] lr {lr_range[0]:.1e} to {lr_range[1]:.1e}")
    ax.plot(lrs, losses, color="C0", linewidth=1.8, label="smoothed training loss")
    for name, lr in finding.suggestions.items():
        color, marker = MARKERS.get(name, ("k", "o"))
        ax.axvline(lr, color=color, linestyle=":", linewidth=1.2, zorder=1)
        ax.plot([lr], [_loss_at(lr, lrs, losses)], marker, color=color, markersize=8, zorder=3,
                label=f"{name}: {lr:.1e}")
    ax.set_xscale("log")
    ax.set_xlabel("learning rate (head)")
    ax.set_ylabel("loss (smoothed)")
    ax.set_ylim(*_loss_limits(losses))
    ax.grid(True, which="major", color="0.9")
    ax.legend(fontsize="small", loc="lower left")
    ax.set_title(title or finding_title(finding))
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def _loss_at(lr: float, lrs: np.ndarray, losses: np.ndarray) -> float:
    """The curve's loss at `lr` (interpolated on the log axis), where the marker sits on it."""
    return float(np.interp(math.log(lr), np.log(lrs), losses))


def _loss_limits(losses: np.ndarray) -> tuple[float, float]:
    """From just below the lowest loss to a little above the starting loss: the climb at the
    end can reach 100 times that and would flatten the part worth reading."""
    finite = losses[np.isfinite(losses)]
    if not len(finite):
        return 0.0, 1.0
    low, start = float(finite.min()), float(finite[: max(len(finite) // 10, 1)].max())
    high = max(start, low) + 0.25 * max(start - low, 0.05)
    return low - 0.1 * (high - low), high
