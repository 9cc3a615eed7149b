"""A small "pretrained" weights file, as an offline user makes one for `[model] weights = FILE`:
a timm network with its ImageNet-shaped head (1000 classes), trained a few steps on generated
images so that its weights (and BatchNorm statistics) are nothing a fresh model starts from,
saved with safetensors. Tests and benchmarks share it."""
from __future__ import annotations

from pathlib import Path

import timm
import torch
from safetensors.torch import load_file, save_file

ARCH = "test_resnet"   # the tests' arch: 0.5M parameters, trains in a blink on a CPU
IMAGENET_CLASSES = 1000


def make_weights(path: Path, arch: str = ARCH, steps: int = 3, image_px: int = 32, seed: int = 0) -> Path:
    """Write the weights file at `path` (kept if it is there already); return its path."""
    if path.is_file():
        return path
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = timm.create_model(arch, pretrained=False, num_classes=IMAGENET_CLASSES)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    model.train()
    for _ in range(steps):
        images = torch.randn((8, 3, image_px, image_px), generator=generator)
        targets = torch.randint(0, IMAGENET_CLASSES, (8,), generator=generator)
        loss = torch.nn.functional.cross_entropy(model(images), targets)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({key: value.contiguous() for key, value in model.state_dict().items()}, str(path))
    return path


def load_weights(path: Path) -> dict[str, torch.Tensor]:
    """The file's tensors by state_dict key."""
    return load_file(str(path))
