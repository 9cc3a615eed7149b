"""Preloaded by test Dask workers (`dask worker --preload`): each epoch of a trial takes a second
longer after it is reported, so a test can kill a worker between two epochs of one trial."""
import time

import objectives.finetune as finetune

PAUSE_S = 1.5
_train = finetune.train


def train(*args, on_epoch=None, **kwargs):
    def report_then_pause(record) -> None:
        on_epoch(record)   # the epoch's checkpoint is already saved
        time.sleep(PAUSE_S)

    return _train(*args, on_epoch=report_then_pause, **kwargs)


finetune.train = train
