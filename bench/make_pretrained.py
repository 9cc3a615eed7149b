"""Pretrained weights for the demo's network, made offline.

    python bench/make_pretrained.py          # writes WEIGHTS (about a minute on one CPU thread)

Fine-tuning pretrained weights is the real job, and bench/search_efficiency.py --pretrained
records its grid from these. They stand in for ImageNet weights: the demo's `test_resnet` is
trained on a DIFFERENT generated task over the demo generator's own scenes (any-colour
backgrounds, gradients, random shapes, pixel noise): every picture holds one faint blob of
one of COLOURS, and the network learns which colour. None is the warm YES cue and every
picture has a blob, so the task never teaches "blob or not" — only features that may
transfer, as ImageNet's do. Seeded: the same file every run (on the same torch build).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import fastai.callback.progress  # noqa: F401  (adds Learner.no_bar)
import fastai.callback.schedule  # noqa: F401  (adds Learner.fit_one_cycle)
import numpy as np
import timm
import torch
from fastai.data.core import DataLoaders
from fastai.learner import Learner
from fastai.losses import CrossEntropyLossFlat
from fastai.metrics import accuracy
from fastai.torch_core import set_seed
from safetensors.torch import save_file
from torch.utils.data import TensorDataset

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))   # run as a script from anywhere: the project's packages

from swipr_core.data.demo import CUE_ALPHA, NOISE_SD, ellipse, scene  # noqa: E402
from swipr_core.train.model import normalisation  # noqa: E402

WEIGHTS = ROOT / "bench" / "results" / "demo_pretrained_test_resnet.safetensors"
ARCH = "test_resnet"          # studies/demo.toml's [model] arch
# Blob colours of the pretraining task: cool and neutral, far from the YES cue's (230, 170, 130).
COLOURS = ((90, 130, 230), (110, 200, 120), (170, 100, 200), (128, 128, 128))
IMAGE_PX = 32                 # the demo grid's image_size
TRAIN_IMAGES, VALID_IMAGES = 3000, 600
EPOCHS, LR, BATCH = 8, 1e-2, 64


def make_images(n: int, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """(n, 3, px, px) uint8-valued float images and their colour classes."""
    images, labels = np.empty((n, IMAGE_PX, IMAGE_PX, 3), dtype=np.float32), rng.integers(0, len(COLOURS), n)
    for index, label in enumerate(labels):
        pixels = scene(IMAGE_PX, rng)
        blob = ellipse(IMAGE_PX, rng, 0.12, 0.25)   # the YES cue's sizes: features at its scale
        colour = np.array(COLOURS[label]) + rng.normal(0, 10, size=3)
        pixels[blob] = (1 - CUE_ALPHA) * pixels[blob] + CUE_ALPHA * colour
        images[index] = np.clip(pixels + rng.normal(0, NOISE_SD, size=pixels.shape), 0, 255)
    return torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(), torch.from_numpy(labels)


def pretrain(path: Path, seed: int, threads: int) -> float:
    """Train ARCH on the colour task, save its state_dict (safetensors) at `path`; return the
    validation accuracy."""
    torch.set_num_threads(threads)
    set_seed(seed)
    rng = np.random.default_rng(seed)
    model = timm.create_model(ARCH, pretrained=False, num_classes=len(COLOURS))
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in normalisation(model))   # as the project's loaders do

    def dataset(n: int) -> TensorDataset:
        images, labels = make_images(n, rng)
        return TensorDataset((images / 255 - mean) / std, labels)

    dls = DataLoaders.from_dsets(dataset(TRAIN_IMAGES), dataset(VALID_IMAGES), bs=BATCH, device="cpu")
    learn = Learner(dls, model, loss_func=CrossEntropyLossFlat(), metrics=accuracy)
    with learn.no_logging(), learn.no_bar():
        learn.fit_one_cycle(EPOCHS, LR)
        valid_loss, valid_accuracy = learn.validate()
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial")
    save_file({key: value.contiguous() for key, value in model.state_dict().items()}, str(partial))
    partial.replace(path)   # never half a weights file under the real name
    print(f"wrote {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}: {ARCH} pretrained "
          f"{EPOCHS} epochs on {TRAIN_IMAGES} blob-colour pictures, valid loss {valid_loss:.4f}, "
          f"accuracy {valid_accuracy:.3f}")
    return float(valid_accuracy)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=WEIGHTS, help=f"default: {WEIGHTS.relative_to(ROOT)}")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    args = parser.parse_args()
    pretrain(args.out, args.seed, args.threads)


if __name__ == "__main__":
    main()
