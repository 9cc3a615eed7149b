"""The network: one timm factory call, its own normalisation, and a body/head split.

Normalisation comes from the model's pretrained config (timm's data config), never from
hard-coded ImageNet numbers, so a study can switch arch without silently mis-normalising.
"""
from __future__ import annotations

import logging
import os
import re
import socket
from contextlib import contextmanager

import huggingface_hub.constants as hub_constants
import timm
from timm.data import resolve_model_data_config
from timm.models import load_state_dict

from swipr_core.errors import FieldError
from swipr_core.train.model_spec import ModelSpec  # noqa: F401  (the spec lives apart: no timm to read it)

HUB_HOST = "huggingface.co"




def _hub_reachable(timeout: float = 3.0) -> bool:
    # The hub client retries for about a minute before it gives up offline; one quick
    # connect tells the same thing in seconds.
    try:
        with socket.create_connection((HUB_HOST, 443), timeout=timeout):
            return True
    except OSError:
        return False


def _offline_help(spec: ModelSpec, reason: str) -> str:
    return (
        f"'{spec.arch}': can't fetch its pretrained weights ({reason}). "
        f"On a machine offline, download them once elsewhere (timm.create_model('{spec.arch}', pretrained=True), "
        f"then save model.state_dict() with safetensors) and set weights = \"/path/to/file.safetensors\"; "
        f"or set pretrained = false to train from scratch"
    )


def similar_archs(name: str, n: int = 5) -> list[str]:
    """timm's model names nearest `name`, by edit distance on names lower-cased and stripped of
    `_`, `-` and `.` (so `resnet_50` finds `resnet50` first); only those within half its length."""
    wanted = _normalised(name)
    limit = max(2, len(wanted) // 2)
    ranked = sorted((_edit_distance(wanted, _normalised(arch)), arch) for arch in timm.list_models())
    return [arch for distance, arch in ranked[:n] if distance <= limit]


def _normalised(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower())


def _edit_distance(a: str, b: str) -> int:
    """Levenshtein distance: the fewest insertions, deletions and substitutions from a to b."""
    previous = list(range(len(b) + 1))
    for i, char_a in enumerate(a, start=1):
        current = [i]
        for j, char_b in enumerate(b, start=1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (char_a != char_b)))
        previous = current
    return previous[-1]


def create_model(spec: ModelSpec, num_classes: int = 2):
    if not timm.is_model(spec.arch):
        close = similar_archs(spec.arch)
        hint = f" (similar: {', '.join(close)})" if close else ""
        raise FieldError("arch", f"'{spec.arch}' is not a timm model{hint}")
    if spec.weights is not None:
        if not spec.weights.is_file():
            raise FieldError("weights", f"file {spec.weights} not found")
        try:
            # timm logs the keys a file lacks and loads on; _check_all_loaded says it in one line.
            with _timm_logs_at(logging.ERROR):
                model = timm.create_model(spec.arch, pretrained=True, num_classes=num_classes,
                                          pretrained_cfg_overlay={"file": str(spec.weights)})
        except Exception as error:  # a wrong or corrupt file surfaces as many error types
            raise FieldError("weights", f"file {spec.weights} doesn't load into '{spec.arch}': {error}") from None
        _check_all_loaded(model, spec)
        return model
    if not spec.pretrained:
        return timm.create_model(spec.arch, pretrained=False, num_classes=num_classes)
    try:
        # Weights already in the local hub cache load without a network.
        return _create_offline(spec, num_classes)
    except Exception:
        pass
    if not _hub_reachable():
        raise FieldError("arch", _offline_help(spec, f"{HUB_HOST} is not reachable"))
    try:
        return timm.create_model(spec.arch, pretrained=True, num_classes=num_classes)
    except Exception as error:
        raise FieldError("arch", _offline_help(spec, str(error).splitlines()[0] if str(error) else type(error).__name__)) from None


@contextmanager
def _timm_logs_at(level: int):
    logger = logging.getLogger("timm")
    before = logger.level
    logger.setLevel(level)
    try:
        yield
    finally:
        logger.setLevel(before)


def _check_all_loaded(model, spec: ModelSpec) -> None:
    """Every weight but the head's came from the file. timm drops a file's head whose class
    count isn't ours and then loads the rest with strict=False, so a file for another arch
    would load nothing, leave random weights and say so only in a log line."""
    in_file = set(load_state_dict(str(spec.weights)))
    head = {id(tensor) for tensor in model.get_classifier().state_dict(keep_vars=True).values()}
    ours = model.state_dict(keep_vars=True)   # the tensors themselves, so the head's are known by id
    missing = [key for key, tensor in ours.items() if id(tensor) not in head and key not in in_file]
    if missing:
        raise FieldError("weights", f"file {spec.weights} lacks {len(missing)} of the {len(ours) - len(head)} "
                                    f"weights of '{spec.arch}' below its head (first: {missing[0]}): is it for "
                                    f"another arch?")


def _create_offline(spec: ModelSpec, num_classes: int):
    previous = os.environ.get("HF_HUB_OFFLINE")
    os.environ["HF_HUB_OFFLINE"] = "1"
    try:
        was = hub_constants.HF_HUB_OFFLINE
        hub_constants.HF_HUB_OFFLINE = True
        try:
            return timm.create_model(spec.arch, pretrained=True, num_classes=num_classes)
        finally:
            hub_constants.HF_HUB_OFFLINE = was
    finally:
        if previous is None:
            os.environ.pop("HF_HUB_OFFLINE", None)
        else:
            os.environ["HF_HUB_OFFLINE"] = previous


def normalisation(model) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Mean and std the model was pretrained with, from timm's data config."""
    config = resolve_model_data_config(model)
    return tuple(config["mean"]), tuple(config["std"])


def body_and_head(model) -> list[list]:
    """Two parameter groups for fastai: the body, then the classifier head.

    fastai's freeze() trains only the last group; discriminative learning rates
    (lr_max=slice(lo, hi)) spread across the groups from body to head.
    """
    head = list(model.get_classifier().parameters())
    head_ids = {id(p) for p in head}
    body = [p for p in model.parameters() if id(p) not in head_ids]
    return [body, head]


def check_model(spec: ModelSpec) -> None:
    """Fail before the first trial, not inside it: unknown arch, missing weights file, or
    pretrained weights that can't be fetched (this also fills the hub cache once)."""
    create_model(spec)
