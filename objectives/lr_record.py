"""Learning-rate range tests kept on the study (`swipr lr-find`, the [space] lr finder), versioned.

A combination (freeze strategy, batch size, image size, and frozen_then_unfrozen's head epochs)
has versions 1, 2, ...: each range test adds one and none is ever replaced, so the finding a
trial trained with (its user attr FINDING_ATTR names the version) stays
readable. The search uses one version a combination, the *current* one: the version chosen
with `swipr lr-find --use`, else the latest.

Each version is a study system attr `swipr:lr_find:<key>:v<N>` (the curve is ~2 kB of JSON: as a
user attr it made `optuna studies` print rows of 14,000 characters); the choice is
`swipr:lr_find:<key>:use`. Studies written before kept one version per combination as the
user attr `lr_find:<key>`: read as that combination's version 1. Every record is checked when
read (check_record); a malformed one is skipped, with a line saying why.
"""
from __future__ import annotations

import datetime
import math
import numbers

import optuna

from objectives.optuna_compat import set_study_system_attr, study_system_attrs
from swipr_core.train.lr_finding import END_LR, START_LR, SUGGESTION_NAMES, LRFinding
from swipr_core.train.schedule import FREEZE_STRATEGIES

SYSTEM_PREFIX = "swipr:lr_find:"   # study system attrs: <key>:v<N> a version, <key>:use the one chosen
ATTR_PREFIX = "lr_find:"           # older studies: the study user attr of a combination's only version
# What a trial drawn with the [space] lr finder records (objectives.lr_finder writes them):
LR_ATTR = "lr"                     # trial user attr: the lr it trained with, the finder's times its factor
FINDER_LR_ATTR = "finder_lr"       # trial user attr: the finder's suggestion that was
FINDING_ATTR = "lr_finding"        # trial user attr: {key, version, finder, suggestion, factor, lr}


def finding_key(freeze: str, batch_size: int, image_size: int, head_epochs: int = 1) -> str:
    """A combination's key: "unfrozen:bs16:px32"; frozen_then_unfrozen's test runs after the head
    warm-up, so its head epochs are part of it: "frozen_then_unfrozen:head1:bs32:px32"."""
    head = f":head{head_epochs}" if freeze == "frozen_then_unfrozen" else ""
    return f"{freeze}{head}:bs{batch_size}:px{image_size}"


def finding_attr(freeze: str, batch_size: int, image_size: int) -> str:
    """The user attr an older study kept a combination's test in: "lr_find:unfrozen:bs16:px32"."""
    return f"{ATTR_PREFIX}{freeze}:bs{batch_size}:px{image_size}"


def picture_name(key: str, version: int) -> str:
    """The study artifact's file name: lr_find_unfrozen_bs16_px32_v2.png."""
    return f"lr_find_{key.replace(':', '_')}_v{version}.png"


def new_record(finding: LRFinding, num_it: int, data_fingerprint: str, lr_range: tuple[float, float] | None,
               ran_by: str, trial: int | None = None) -> dict:
    """A test as stored: the curve, its suggestions, how it ran and what it cost (`ran_by`:
    "search" for a trial's own test, "lr-find" for the command's; `trial`: the trial that ran it)."""
    return {
        "key": finding_key(finding.freeze, finding.batch_size, finding.image_size, finding.head_epochs),
        "freeze": finding.freeze, "batch_size": finding.batch_size, "image_size": finding.image_size,
        "head_epochs": finding.head_epochs, "head_lr": finding.head_lr,
        "suggestions": finding.suggestions, "unreadable": finding.unreadable,
        # 4 significant digits: a plot's worth, and ~2 kB of JSON for 100 batches
        "lrs": [float(f"{lr:.4g}") for lr in finding.lrs],
        "losses": [float(f"{loss:.4g}") for loss in finding.losses],
        "num_it": num_it, "data_fingerprint": data_fingerprint, "seed": finding.seed,
        "cpu_threads": finding.cpu_threads, "lr_range": list(lr_range) if lr_range else None,
        "cost": {"seconds": round(finding.seconds, 1), "epochs_equivalent": round(finding.epochs_equivalent, 2),
                 "by": ran_by, "trial": trial},
        "when": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


def _versions(study: optuna.Study) -> tuple[dict[str, dict[int, object]], dict[str, object]]:
    """({key: {version: stored value}}, {key: chosen version}) from the system attrs and, for
    older studies, the user attrs (version 1). Values are as stored: check_record reads them."""
    versions: dict[str, dict[int, object]] = {}
    chosen: dict[str, object] = {}
    for attr, value in study.user_attrs.items():
        if attr.startswith(ATTR_PREFIX):
            versions.setdefault(attr[len(ATTR_PREFIX):], {})[1] = value
    for attr, value in study_system_attrs(study).items():
        if not attr.startswith(SYSTEM_PREFIX):
            continue
        key, _, last = attr[len(SYSTEM_PREFIX):].rpartition(":")
        if last == "use":
            chosen[key] = value
        elif last.startswith("v") and last[1:].isdigit():
            versions.setdefault(key, {})[int(last[1:])] = value
    return versions, chosen


def add_finding(study: optuna.Study, record: dict, use: bool = True) -> int:
    """Store `record` as its combination's next version; with `use`, make it the current one.
    Returns the version. Nothing stored before is changed."""
    versions, _ = _versions(study)
    version = max(versions.get(record["key"], {}), default=0) + 1
    set_study_system_attr(study, f"{SYSTEM_PREFIX}{record['key']}:v{version}", {**record, "version": version})
    if use:
        use_version(study, record["key"], version)
    return version


def use_version(study: optuna.Study, key: str, version: int) -> None:
    """Make `version` the one the search uses for `key` from now on."""
    set_study_system_attr(study, f"{SYSTEM_PREFIX}{key}:use", version)


def current_version(study: optuna.Study, key: str) -> int | None:
    """The version the search uses for `key`: the chosen one, else the latest; None: no test yet."""
    return _current(*_versions(study), key)


def _current(versions: dict[str, dict[int, object]], chosen: dict[str, object], key: str) -> int | None:
    choice = chosen.get(key)
    if isinstance(choice, int) and choice in versions.get(key, {}):
        return choice
    return max(versions.get(key, {}), default=None)


def stored_finding(study: optuna.Study, key: str, version: int) -> tuple[dict | None, str]:
    """(the record, "") for a stored version, or (None, why it can't be used)."""
    versions, _ = _versions(study)
    if version not in versions.get(key, {}):
        return None, f"the study has no range test {key} version {version}"
    return _read(key, version, versions[key][version])


def _read(key: str, version: int, value) -> tuple[dict | None, str]:
    why = check_record(value)
    if why:
        return None, f"range test {key} v{version} is malformed ({why})"
    assert isinstance(value, dict)
    return {**value, "key": key, "version": version, "legacy": "key" not in value}, ""


def recorded_findings(study: optuna.Study) -> tuple[list[dict], list[str]]:
    """(every well-formed range test on the study, by combination then version, each with its
    "key", "version" and "current"; one line for each malformed one, which is left out)."""
    versions, chosen = _versions(study)
    found, skipped = [], []
    for key in sorted(versions):
        current = _current(versions, chosen, key)
        for version in sorted(versions[key]):
            record, why = _read(key, version, versions[key][version])
            if record is None:
                skipped.append(why)
            else:
                found.append({**record, "current": version == current})
    return found, skipped


def _number(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def check_record(record) -> str:
    """"" for a record a finding can be read from, else what is wrong with it (one phrase)."""
    if not isinstance(record, dict):
        return f"a {type(record).__name__}, not a record"
    if record.get("freeze") not in FREEZE_STRATEGIES:
        return f"freeze {record.get('freeze')!r}"
    for name in ("batch_size", "image_size"):
        if not (isinstance(record.get(name), int) and not isinstance(record.get(name), bool) and record[name] > 0):
            return f"{name} {record.get(name)!r}"
    lrs, losses = record.get("lrs"), record.get("losses")
    if not isinstance(lrs, list) or not isinstance(losses, list) or len(lrs) != len(losses) or len(lrs) < 2:
        return "its curve is not two lists of the same length"
    if not all(_number(lr) and math.isfinite(lr) and lr > 0 for lr in lrs) or not all(map(_number, losses)):
        return "its curve has a value that is not a positive number"
    suggestions = record.get("suggestions")
    if not isinstance(suggestions, dict) or not isinstance(record.get("unreadable", {}), dict):
        return "its suggestions are not a table"
    for name, lr in suggestions.items():
        if name not in SUGGESTION_NAMES:
            return f"unknown suggestion {name!r}"
        if not (_number(lr) and math.isfinite(lr) and START_LR / 10 <= lr <= END_LR):
            return f"suggestion {name} is {lr!r}, not a learning rate between {START_LR:g} and {END_LR:g}"
    return ""


def finding_of(record: dict) -> LRFinding:
    """A stored range test (check_record passed) as the core's LRFinding (to draw it again)."""
    return LRFinding(freeze=record["freeze"], batch_size=record["batch_size"], image_size=record["image_size"],
                     lrs=tuple(record["lrs"]), losses=tuple(record["losses"]),
                     suggestions=dict(record.get("suggestions", {})), unreadable=dict(record.get("unreadable", {})),
                     head_epochs=int(record.get("head_epochs") or 0), head_lr=record.get("head_lr"))


def range_test_cost(study: optuna.Study) -> dict:
    """What the study's range tests cost: {"count", "seconds", "epochs_equivalent", "by_lr_find",
    "uncosted"} (uncosted: older records, which kept no cost)."""
    records, _ = recorded_findings(study)
    costs = [r["cost"] for r in records if isinstance(r.get("cost"), dict)]
    return {"count": len(records), "seconds": sum(float(c.get("seconds") or 0) for c in costs),
            "epochs_equivalent": sum(float(c.get("epochs_equivalent") or 0) for c in costs),
            "by_lr_find": sum(c.get("by") == "lr-find" for c in costs), "uncosted": len(records) - len(costs)}
