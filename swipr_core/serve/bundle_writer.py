"""Write a model bundle: weights, an ONNX model checked against PyTorch, and its manifest.

The bundle is staged beside its final folder and moved into place by swipr_core.serve.bundle.finish,
so a reader sees the old bundle or the new one, never half of one.
"""
from __future__ import annotations

import platform
import shutil
import subprocess
from importlib import metadata
from pathlib import Path

import numpy as np

from swipr_core.data.loaders import Augment
from swipr_core.data.split import CLASSES
from swipr_core.errors import SwiprError
from swipr_core.serve import bundle
from swipr_core.serve.export import (
    ONNX_TOLERANCE,
    ServingModel,
    cpu_copy,
    export_onnx,
    onnx_probs,
    save_weights,
    torch_probs,
)
from swipr_core.serve.tta import bundle_averages
from swipr_core.train.flip_average import FlipAverage

SAMPLE_IMAGES = 256   # validation images the ONNX export is checked on


def model_manifest(arch: str, cache_px: int, image_size: int, mean, std, threshold) -> dict:
    """What a server needs to run the model: input, output, normalisation, the threshold."""
    return {
        "arch": arch,
        "cache_px": cache_px,
        "image_size": image_size,
        "mean": list(mean),
        "std": list(std),
        "classes": list(CLASSES),
        "input": {"name": "images", "dtype": "uint8", "shape": ["batch", cache_px, cache_px, 3],
                  "layout": "RGB, shorter side resized to cache_px (bilinear) and centre-cropped "
                            "(swipr_core.data.images.load_square); resizing to image_size and normalising "
                            "happen inside model.onnx"},
        "output": {"name": "p_yes", "meaning": "P(YES); answer YES when p_yes >= threshold"},
        "threshold": threshold.value,
        "threshold_rule": threshold.rule,
    }


def code_version() -> str:
    """The project's git commit (with '+changes' when the tree differs from it), or 'unknown'."""
    root = Path(__file__).resolve().parents[1]
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True,
                                timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return commit + ("+changes" if dirty else "")


def library_versions() -> dict[str, str]:
    versions = {"python": platform.python_version(), "swipr-search": code_version()}
    for name in ("torch", "timm", "fastai", "optuna", "numpy", "pillow", "safetensors", "onnx", "onnxscript",
                 "onnxruntime", "scikit-learn"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def write_bundle(out: Path, result, dataset, manifest: dict, checked_vs_training: bool, echo, force: bool = False) -> str:
    """Weights, ONNX export (checked against PyTorch on validation images) and manifest,
    staged beside `out` and moved into place. Returns the manifest's SHA-256."""
    model = cpu_copy(result.model)
    scorer = FlipAverage(model) if bundle_averages(manifest, out) else model   # TTA inside model.onnx
    serving = ServingModel(scorer, Augment(image_size=manifest["image_size"], mean=result.mean, std=result.std))
    staging = bundle.staging_dir(out, force)
    try:
        save_weights(model, staging / bundle.WEIGHTS, {"arch": manifest["arch"], "classes": "NO,YES"})
        export_onnx(serving.eval(), manifest["cache_px"], staging / bundle.ONNX)
        sample = _sample_images(dataset, SAMPLE_IMAGES)
        reference = torch_probs(serving, sample)
        exported = onnx_probs((staging / bundle.ONNX).read_bytes(), sample)
        onnx_diff = float(np.max(np.abs(reference - exported))) if len(sample) else 0.0
        # The serving wrapper must score validation as training did (same pre-processing, same
        # model). On a CPU the replay validated in fp32, so the two must agree; a GPU validated
        # with its own kernels (and bf16/fp16 autocast), so there the gap is only reported.
        train_diff = float(np.max(np.abs(reference - result.valid_probs[:len(sample)]))) if len(sample) else 0.0
        if onnx_diff > ONNX_TOLERANCE or (checked_vs_training and train_diff > ONNX_TOLERANCE):
            raise SwiprError(f"export check failed: on {len(sample)} validation images the ONNX model differs from "
                             f"PyTorch by {onnx_diff:.3g} and the serving model from training's validation by "
                             f"{train_diff:.3g} (tolerance {ONNX_TOLERANCE:g}); no bundle written")
        echo(f"export: model.onnx gives PyTorch's probabilities on {len(sample)} validation images "
             f"(max difference {onnx_diff:.2g}, tolerance {ONNX_TOLERANCE:g}); {train_diff:.2g} from the replay's "
             f"own validation{'' if checked_vs_training else ' (validated on the GPU: reported, not checked)'}")
        manifest = {**manifest, "export_check": {"images": int(len(sample)), "max_abs_difference": onnx_diff,
                                                 "tolerance": ONNX_TOLERANCE, "vs_replay_validation": train_diff}}
        return bundle.finish(staging, out, manifest, force)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _sample_images(dataset, n: int) -> np.ndarray:
    """The first n validation images from the cache, in the order training validated them."""
    valid = dataset.split.indices(True)[:n]
    return np.ascontiguousarray(dataset.cache.open()[valid])
