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
import onnxruntime

from swipr_core.data.dataset import MAX_CACHE_PX
from swipr_core.data.images import NotRegularFile, decode_problem, load_square
from swipr_core.errors import SwiprError
from swipr_core.serve import bundle, tta

CLASSES = ["NO", "YES"]
BATCH_SIZE = 32
INPUT_NAME, OUTPUT_NAME = "images", "p_yes"


class OnnxModel:
    """An onnxruntime session over a bundle's model: uint8 NHWC batches -> P(YES)."""

    def __init__(self, onnx_bytes: bytes, threads: int | None = None):
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

    def __init__(self, bundle_path: str | Path, threads: int | None = None, expect_sha256: str | None = None,
                 tta_flip: bool = False):
        if threads is not None and threads < 1:   # 0 or less would silently mean "all cores"
            raise SwiprError(f"--threads must be 1 or more, got {threads}")
        verified = bundle.verify(bundle_path, load=(bundle.ONNX,), expect_sha256=expect_sha256)
        manifest = verified.manifest
        where = Path(bundle_path) / bundle.MANIFEST
        if manifest["classes"] != CLASSES:
            raise SwiprError(f"{where}: classes {manifest['classes']} are not {CLASSES}")
        if not 0 <= manifest["threshold"] <= 1:
            raise SwiprError(f"{where}: threshold {manifest['threshold']} is not between 0 and 1")
        for key in ("cache_px", "image_size"):
            if not 1 <= manifest[key] <= MAX_CACHE_PX:
                raise SwiprError(f"{where}: {key} {manifest[key]} is not a size from 1 to {MAX_CACHE_PX}")
        self.manifest = manifest
        # A bundle fit with --tta averages inside model.onnx; --tta on another averages here.
        in_model = tta.bundle_averages(manifest, where)
        self.tta, self._mirror_here = in_model or tta_flip, tta_flip and not in_model
        self.manifest_sha256 = verified.manifest_sha256
        self.threshold = float(manifest["threshold"])
        self.cache_px = int(manifest["cache_px"])
        try:
            self.model = OnnxModel(verified.contents[bundle.ONNX], threads)
        except Exception as error:  # onnxruntime raises its own types for a graph it can't run
            raise SwiprError(f"{Path(bundle_path) / bundle.ONNX}: onnxruntime can't load it: {error}") from None
        self.onnx_file = Path(bundle_path) / bundle.ONNX
        self._check_input_shape(where)

    def _check_input_shape(self, where: Path) -> None:
        """The graph must take uint8 (batch, cache_px, cache_px, 3): else every batch would fail."""
        inputs = self.model.session.get_inputs()
        shape = inputs[0].shape if len(inputs) == 1 and inputs[0].name == INPUT_NAME else None
        if shape is None or len(shape) != 4 or shape[3] != 3:
            raise SwiprError(f"{self.onnx_file}: takes {[(i.name, i.shape) for i in inputs]}, not "
                             f"one input '{INPUT_NAME}' of shape (batch, cache_px, cache_px, 3)")
        fixed = [size for size in shape[1:3] if isinstance(size, int)]
        if any(size != self.cache_px for size in fixed):
            raise SwiprError(f"{where}: cache_px {self.cache_px} disagrees with {bundle.ONNX}, "
                             f"which takes {shape[1]}x{shape[2]} images")

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
            except NotRegularFile:
                row.error = "not a regular file"  # a FIFO or device: never read, it could block
            except Exception as error:  # Pillow raises many types for one cause: not a readable image
                row.error = f"can't decode image: {decode_problem(error)}"
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
        try:
            batch = np.stack([pixels for _, pixels in pending])
            score = lambda images: self.model.probs(images, batch_size=len(images))  # noqa: E731 - one batch, one run
            probs = tta.flip_average(score, batch) if self._mirror_here else score(batch)
        except Exception as error:  # onnxruntime's own types: the graph can't run on what the manifest says
            first = str(error).splitlines()[0] if str(error) else type(error).__name__
            raise SwiprError(f"{self.onnx_file}: onnxruntime failed on a batch: {first}") from None
        for (row, _), p in zip(pending, probs, strict=True):
            row.p_yes = float(p)
            row.answer = self.answer(row.p_yes) if math.isfinite(row.p_yes) else None
            if row.answer is None:
                row.error = "model returned a non-finite probability"
            yield row


def expand_inputs(inputs: Iterable[str | Path]) -> list[Path]:
    """Files as given; folders walked, sorted, through symlinked folders too, for every file
    not hidden (a dot name). The decoder decides what is an image, as it does for training:
    a .jfif is answered, a .heic or a notes.txt gets an error row, none is skipped unseen.
    A path that doesn't exist is kept: its row says so."""
    found: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            found.extend(_files_under(path))
        else:
            found.append(path)
    return found


def _files_under(folder: Path) -> Iterator[Path]:
    seen: set[tuple[int, int]] = set()
    for root, dirs, files in os.walk(folder, followlinks=True):
        try:
            info = os.stat(root)
        except OSError:  # removed while walking
            continue
        if (info.st_dev, info.st_ino) in seen:  # a symlink back to a folder above: walked once
            dirs.clear()
            continue
        seen.add((info.st_dev, info.st_ino))
        dirs.sort()
        yield from (Path(root) / name for name in sorted(files) if not name.startswith("."))


def as_dict(row: Prediction) -> dict:
    return asdict(row)
