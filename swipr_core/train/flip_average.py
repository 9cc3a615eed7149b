"""The flip average as a torch module, for the fit's validation and the bundle's ONNX graph.

`FlipAverage(model)` returns log(mean of the two softmaxes) in place of logits: softmax of it
is the averaged probability, so every caller that takes softmax of a model's output
(training's predict_valid, export's ServingModel) gets the TTA probability unchanged, and
the ONNX graph of a `--tta` bundle does the average itself. The mirror is taken after
pre-processing (resize, normalise), on the tensor the model sees.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from swipr_core.data.dataset import Dataset
from swipr_core.train.run import make_loaders, predict_valid
from swipr_core.train.schedule import TrainConfig


class FlipAverage(torch.nn.Module):
    """(B, 3, S, S) -> log of P averaged over each image and its left-right mirror."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Two calls, not one on torch.cat([x, mirror]): splitting a doubled batch makes
        # torch.export fix the ONNX graph's batch size.
        plain = torch.log_softmax(self.model(x).float(), dim=1)
        mirror = torch.log_softmax(self.model(x.flip(-1)).float(), dim=1)
        return torch.logaddexp(plain, mirror) - math.log(2)


def tta_valid_probs(model: torch.nn.Module, dataset: Dataset, config: TrainConfig, mean, std,
                    device: torch.device, precision: str, flip: bool = True) -> np.ndarray:
    """P(YES) of every validation image, flip-averaged (or plain), in split order (as TrainResult.valid_probs)."""
    # The size the trained model ends at: its last stage's.
    _, valid = make_loaders(dataset, config.final_image_size, config.final_batch_size, mean, std, device, config.seed)
    probs, _ = predict_valid(FlipAverage(model) if flip else model, valid, precision)
    return probs
