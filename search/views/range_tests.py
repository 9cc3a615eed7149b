"""The range tests a study ran ([space] lr finder, `swipr lr-find`), counted: what they cost
beside the trials' own epochs (objectives.lr_record.range_test_cost)."""
from __future__ import annotations

import optuna

from objectives.lr_record import range_test_cost


def range_test_rows(study: optuna.Study) -> list[tuple[str, str]]:
    """("range tests", "6, 30 s ≈ 34.5 epochs") for the summary table and `swipr study best`;
    no row for a study without one."""
    cost = range_test_cost(study)
    if not cost["count"]:
        return []
    text = f"{cost['count']}, {cost['seconds']:.0f} s ≈ {cost['epochs_equivalent']:.1f} epochs"
    notes = []
    if cost["by_lr_find"]:
        notes.append(f"{cost['by_lr_find']} by swipr lr-find")
    if cost["uncosted"]:
        notes.append(f"{cost['uncosted']} from an older study, cost not recorded")
    return [("range tests", text + (f" ({'; '.join(notes)})" if notes else ""))]
