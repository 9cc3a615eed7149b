"""Learning-rate range tests kept on the study (`swipr lr-find`, the [space] lr finder): one
study user attr per freeze strategy, batch size and image size, so every storage keeps them,
optuna-dashboard lists them, trials reuse them, and the report draws them again."""
from __future__ import annotations

import datetime

import optuna

from swipr_core.lr_find import LRFinding

ATTR_PREFIX = "lr_find:"


def finding_attr(freeze: str, batch_size: int, image_size: int) -> str:
    """The user attr of one combination: "lr_find:unfrozen:bs16:px32"."""
    return f"{ATTR_PREFIX}{freeze}:bs{batch_size}:px{image_size}"


def picture_name(finding: LRFinding) -> str:
    """The study artifact's file name: lr_find_unfrozen_bs16_px32.png."""
    return f"lr_find_{finding.freeze}_bs{finding.batch_size}_px{finding.image_size}.png"


def record_finding(study: optuna.Study, finding: LRFinding, num_it: int, data_fingerprint: str,
                   lr_range: tuple[float, float] | None) -> str:
    """Store the range test on the study (replacing one of the same combination); return its attr."""
    attr = finding_attr(finding.freeze, finding.batch_size, finding.image_size)
    study.set_user_attr(attr, {
        "freeze": finding.freeze, "batch_size": finding.batch_size, "image_size": finding.image_size,
        "suggestions": finding.suggestions, "unreadable": finding.unreadable,
        # 4 significant digits: a plot's worth, and ~2 kB of JSON for 100 batches
        "lrs": [float(f"{lr:.4g}") for lr in finding.lrs],
        "losses": [float(f"{loss:.4g}") for loss in finding.losses],
        "num_it": num_it, "data_fingerprint": data_fingerprint,
        "lr_range": list(lr_range) if lr_range else None,
        "when": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    })
    return attr


def recorded_findings(study: optuna.Study) -> list[dict]:
    """Every range test stored on the study, in attr order (freeze, batch size, image size)."""
    attrs = study.user_attrs
    return [attrs[key] for key in sorted(attrs) if key.startswith(ATTR_PREFIX) and isinstance(attrs[key], dict)]


def finding_of(record: dict) -> LRFinding:
    """A stored range test as the core's LRFinding (to draw it again)."""
    return LRFinding(freeze=record["freeze"], batch_size=record["batch_size"], image_size=record["image_size"],
                     lrs=tuple(record["lrs"]), losses=tuple(record["losses"]),
                     suggestions=dict(record.get("suggestions", {})), unreadable=dict(record.get("unreadable", {})))
