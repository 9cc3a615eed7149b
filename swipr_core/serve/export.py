"""The trained network as files a CPU server loads: safetensors weights and an ONNX graph.

The ONNX graph takes what the image cache holds — uint8 (batch, cache_px, cache_px, 3)
RGB, each photo's shorter side resized to cache_px and centre-cropped — and returns P(YES).
Resizing to image_size and normalising happen inside the graph, with the very code that
validation used in training (`loaders.augment_batch(train=False)`), so a server needs only
Pillow, numpy and onnxruntime, and can't get the normalisation wrong. torch's dynamo
exporter is used: the legacy one can't export antialiased resizing.
"""
from __future__ import annotations

import contextlib
import io
import logging
import warnings
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

from swipr_core.data.loaders import Augment, augment_batch
from swipr_core.serve.predict import INPUT_NAME, OUTPUT_NAME, OnnxModel

ONNX_OPSET = 18
# fp32 on the same CPU: measured differences are ~1e-7; a real export bug is far larger.
ONNX_TOLERANCE = 1e-4


class ServingModel(torch.nn.Module):
    """uint8 (B, cache_px, cache_px, 3) -> P(YES) (B,), with validation's pre-processing."""

    def __init__(self, model: torch.nn.Module, aug: Augment):
        super().__init__()
        self.model, self.aug = model, aug

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        logits = self.model(augment_batch(images, self.aug, train=False))
        return torch.softmax(logits.float(), dim=1)[:, 1]


def cpu_copy(model: torch.nn.Module) -> torch.nn.Module:
    return model.to("cpu", dtype=torch.float32).to(memory_format=torch.contiguous_format).eval()


def save_weights(model: torch.nn.Module, file: Path, metadata: dict[str, str]) -> None:
    state = {name: tensor.detach().cpu().contiguous() for name, tensor in model.state_dict().items()}
    save_file(state, str(file), metadata=metadata)


def export_onnx(serving: ServingModel, cache_px: int, file: Path) -> None:
    example = torch.zeros((2, cache_px, cache_px, 3), dtype=torch.uint8)
    # One eager call first: augment_batch caches its normalisation constants per device
    # (lru_cache), and if the exporter's fake tensors were first to fill that cache, every
    # later eager call would get a fake tensor back.
    with torch.no_grad():
        serving.eval()(example)
    batch = torch.export.Dim("batch", min=1, max=4096)
    # The exporter narrates every step and its dependencies warn; a fit's output is for results.
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        level = logging.getLogger("torch.onnx").level
        logging.getLogger("torch.onnx").setLevel(logging.ERROR)
        try:
            program = torch.onnx.export(serving.eval(), (example,), input_names=[INPUT_NAME],
                                        output_names=[OUTPUT_NAME], dynamic_shapes=({0: batch},),
                                        opset_version=ONNX_OPSET, dynamo=True, verbose=False)
        finally:
            logging.getLogger("torch.onnx").setLevel(level)
    if program is None:   # only the legacy (dynamo=False) exporter returns nothing
        raise RuntimeError("torch.onnx.export returned no program")
    program.save(str(file))


@torch.no_grad()
def torch_probs(serving: ServingModel, images: np.ndarray, batch_size: int = 64) -> np.ndarray:
    out = [serving(torch.from_numpy(np.ascontiguousarray(images[i:i + batch_size])))
           for i in range(0, len(images), batch_size)]
    return torch.cat(out).numpy() if out else np.zeros(0, dtype=np.float32)


def onnx_probs(onnx_bytes: bytes, images: np.ndarray, batch_size: int = 64) -> np.ndarray:
    """What `swipr predict` computes for these cached images: the server's path."""
    return OnnxModel(onnx_bytes).probs(images, batch_size)
