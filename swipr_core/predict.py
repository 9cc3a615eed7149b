"""YES or NO for photos, on a CPU, from a verified model bundle.

This is what a CPU-only server runs: Pillow decodes, numpy batches, onnxruntime scores.
It imports neither torch nor fastai nor optuna, and never unpickles: the manifest is JSON,
the model is ONNX (protobuf), and both are checked against their SHA-256 before use.
Pre-processing is the image cache's `load_square` (shorter side to cache_px, centre crop);
the rest of validation's pre-processing is inside the ONNX graph.
"""
from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

from swipr_core import bundle
from swipr_core.cache import load_square
from swipr_core.errors import SwiprError

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"})
CLASSES = ["NO", "YES"]
BATCH_SIZE = 32
INPUT_NAME, OUTPUT_NAME = "images", "p_yes"


class OnnxModel:
    """An onnxruntime session over a bundle's model: uint8 NHWC batches -> P(YES)."""

    def __init__(self, onnx_bytes: bytes, threads: int | None = None):
        import onnxruntime

        options = onnxruntime.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        options.log_severity_level = 3   # errors only: its warnings are about graph optimisations
        self.session = onnxruntime.InferenceSession(onnx_bytes, options, providers=["CPUExecutionProvider"])

    def probs(self, images: np.ndarray, batch_size: int = BATCH_SIZE) -> np.ndarray:
        out = [self.session.run([OUTPUT_NAME], {INPUT_NAME: np.ascontiguousarray(images[i:i + batch_size])})[0]
               for i in range(0, len(images), batch_size)]
        return np.concatenate(out).astype(np.float64) if out else np.zeros(0)


@dataclass
class Prediction:
    image: str
    answer: str | None = None      # YES | NO, or None when the image could not be read
    p_yes: float | None = None
    error: str | None = None


class Predictor:
    """A verified bundle, ready to answer."""

    def __init__(self, bundle_path: str | Path, threads: int | None = None):
        verified = bundle.verify(bundle_path, load=(bundle.ONNX,))
        manifest = verified.manifest
        where = Path(bundle_path) / bundle.MANIFEST
        if manifest["classes"] != CLASSES:
            raise SwiprError(f"{where}: classes {manifest['classes']} are not {CLASSES}")
        if not 0 <= manifest["threshold"] <= 1:
            raise SwiprError(f"{where}: threshold {manifest['threshold']} is not between 0 and 1")
        if manifest["cache_px"] < 1:
            raise SwiprError(f"{where}: cache_px {manifest['cache_px']} is not a size")
        self.manifest = manifest
        self.manifest_sha256 = verified.manifest_sha256
        self.threshold = float(manifest["threshold"])
        self.cache_px = int(manifest["cache_px"])
        try:
            self.model = OnnxModel(verified.contents[bundle.ONNX], threads)
        except Exception as error:  # onnxruntime raises its own types for a graph it can't run
            raise SwiprError(f"{Path(bundle_path) / bundle.ONNX}: onnxruntime can't load it: {error}") from None

    def answer(self, p_yes: float) -> str:
        return "YES" if p_yes >= self.threshold else "NO"

    def predict(self, images: Iterable[Path], batch_size: int = BATCH_SIZE) -> Iterator[Prediction]:
        """One Prediction per image, in order; an unreadable image gets a row with its error."""
        if batch_size < 1:
            raise SwiprError(f"--batch-size must be 1 or more, got {batch_size}")
        pending: list[tuple[Prediction, np.ndarray]] = []
        for image in images:
            row = Prediction(str(image))
            try:
                pixels = load_square(image, self.cache_px)
            except FileNotFoundError:
                row.error = "no such file"
            except IsADirectoryError:
                row.error = "is a folder"
            except Exception as error:  # Pillow raises many types for one cause: not a readable image
                row.error = f"can't decode image: {str(error).splitlines()[0] if str(error) else type(error).__name__}"
            if row.error is not None:
                # Rows come out in input order: first the batch before this image.
                yield from self._flush(pending)
                pending = []
                yield row
                continue
            pending.append((row, pixels))
            if len(pending) == batch_size:
                yield from self._flush(pending)
                pending = []
        yield from self._flush(pending)

    def _flush(self, pending) -> Iterator[Prediction]:
        if not pending:
            return
        probs = self.model.probs(np.stack([pixels for _, pixels in pending]), batch_size=len(pending))
        for (row, _), p in zip(pending, probs):
            row.p_yes = float(p)
            row.answer = self.answer(row.p_yes) if math.isfinite(row.p_yes) else None
            if row.answer is None:
                row.error = "model returned a non-finite probability"
            yield row


def expand_inputs(inputs: Iterable[str | Path]) -> list[Path]:
    """Files as given (whatever their name: the decoder decides); folders walked, sorted,
    for files with an image suffix. A path that doesn't exist is kept: its row says so."""
    found: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            for root, dirs, files in os.walk(path):
                dirs.sort()
                found.extend(Path(root) / name for name in sorted(files)
                             if Path(name).suffix.lower() in IMAGE_SUFFIXES and not name.startswith("."))
        else:
            found.append(path)
    return found


def as_dict(row: Prediction) -> dict:
    return asdict(row)
