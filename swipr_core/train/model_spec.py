"""Which network a study trains: a name for timm's factory and where its weights come from.

Apart from swipr_core.train.model so that reading a study file never imports timm or torch."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class ModelSpec:
    arch: str = "resnext50_32x4d"
    pretrained: bool = True
    weights: Path | None = None   # a local weights file: pretrained weights without a network
