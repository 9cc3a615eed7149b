"""Per-epoch checkpoints of a training run: how a retried trial resumes where it stopped.

Saved with torch.save and read back with weights_only=True, so loading one never
unpickles arbitrary classes; fastai's optimizer state is turned into plain lists first.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import torch
from fastcore.foundation import L

CHECKPOINT_FILE = "last.pth"


def save_checkpoint(directory: Path, model, opt, history: list[dict], train_seconds: float,
                    train_images: int, smooth_loss: dict | None = None) -> None:
    """Weights, optimizer and history after an epoch, written to a temp file then renamed.
    `smooth_loss`: fastai's smoothed training loss so far in the fit ({"val": tensor, "count": int})."""
    directory.mkdir(parents=True, exist_ok=True)
    state = {
        "model": model.state_dict(),
        "opt": _plain(opt.state_dict()) if opt is not None else None,
        "history": history,
        "train_seconds": train_seconds,
        "train_images": train_images,
        "smooth_loss": smooth_loss,
    }
    fd, tmp = tempfile.mkstemp(dir=directory, suffix=".tmp")
    os.close(fd)
    try:
        torch.save(state, tmp)
        os.replace(tmp, directory / CHECKPOINT_FILE)
    finally:
        Path(tmp).unlink(missing_ok=True)


def load_checkpoint(directory: Path | None) -> dict | None:
    if directory is None or not (directory / CHECKPOINT_FILE).is_file():
        return None
    try:
        return torch.load(directory / CHECKPOINT_FILE, map_location="cpu", weights_only=True)
    except Exception:
        return None   # a checkpoint torn by a crash: start the trial over rather than fail it


def fastai_opt_state(saved: dict) -> dict:
    """A saved optimizer state in the shape fastai's Optimizer.load_state_dict expects."""
    return {"state": L(saved["state"]), "hypers": L(saved["hypers"])}


def _plain(value):
    """fastai's optimizer state holds fastcore `L` lists and numpy scalars, which
    torch.load(weights_only=True) refuses; plain lists and dicts load without unpickling."""
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)) or type(value).__name__ == "L":
        return [_plain(item) for item in value]
    if isinstance(value, np.generic):   # numpy scalars in the hypers (fit_sgdr's lr_max)
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return value
