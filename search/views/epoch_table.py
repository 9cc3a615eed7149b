"""fastai's per-epoch table, one row an epoch, for `swipr study run` and `swipr fit`.

The same columns as fastai's progress table (epoch, train_loss, valid_loss, accuracy, time),
plus the trial, the phase (frozen body or not) and the training speed. Epochs are numbered
from 0, as fastai, Optuna's steps, the pictures and the report number them.
"""
from __future__ import annotations

# (title, width); every value is right-aligned under its title but the phase
COLUMNS = (("trial", 5), ("epoch", 5), ("phase", 8), ("train_loss", 10), ("valid_loss", 10), ("accuracy", 8),
           ("train_time", 10), ("images/s", 8))


def header() -> str:
    return "  ".join(f"{title:<{width}}" if title == "phase" else f"{title:>{width}}" for title, width in COLUMNS)


def clock(seconds: float) -> str:
    """mm:ss, as fastai writes an epoch's time (h:mm:ss past an hour)."""
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes:02d}:{secs:02d}"


def row(trial_number: int | str, record) -> str:
    """One epoch (swipr_core.train.run.EpochRecord); ' cycle end' after an epoch that ended one."""
    images = getattr(record, "images", 0)
    speed = f"{images / record.seconds:.1f}" if images and record.seconds > 0 else "-"
    values = (str(trial_number), str(record.epoch), record.phase, f"{record.train_loss:.4f}",
              f"{record.valid_loss:.4f}", f"{record.accuracy:.4f}", clock(record.seconds), speed)
    cells = [f"{value:<{width}}" if title == "phase" else f"{value:>{width}}"
             for value, (title, width) in zip(values, COLUMNS, strict=True)]
    return "  ".join(cells) + ("  cycle end" if getattr(record, "cycle_end", False) else "")
