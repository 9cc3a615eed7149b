"""Batches from the image cache, augmented on the device that trains.

A batch is gathered from the memory-mapped uint8 cache (no JPEG decoding per epoch),
moved to the device (pinned memory on CUDA), and only then turned into floats,
randomly zoomed (up to 1.1), shifted, flipped, resized and normalised — one
affine_grid/grid_sample call for the whole batch. The same code runs on a CPU.
Batches are prepared one step ahead on a thread so gathering overlaps training.
"""
from __future__ import annotations

import math
import queue
import threading
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

MAX_ZOOM = 1.1
PREFETCH = 2


@dataclass(frozen=True)
class Augment:
    image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    max_zoom: float = MAX_ZOOM
    flip: bool = True


def augment_batch(images: torch.Tensor, aug: Augment, train: bool, generator: torch.Generator | None = None,
                  channels_last: bool = False) -> torch.Tensor:
    """uint8 (B, H, W, 3) on any device -> normalised float (B, 3, S, S) on that device."""
    device = images.device
    x = images.permute(0, 3, 1, 2).float().div_(255)
    size = aug.image_size
    if train:
        # Shrink first with antialiasing so the bilinear sampling below never skips pixels.
        pre = math.ceil(size * aug.max_zoom)
        if x.shape[-1] > pre:
            x = F.interpolate(x, size=(pre, pre), mode="bilinear", antialias=True, align_corners=False)
        n = x.shape[0]
        rand = torch.rand((n, 4), generator=generator)  # params drawn on the CPU: reproducible anywhere
        zoom = 1 + (aug.max_zoom - 1) * rand[:, 0]
        span = 1 - 1 / zoom   # how far the zoomed window can move and stay inside the image
        shift_x = (rand[:, 1] * 2 - 1) * span
        shift_y = (rand[:, 2] * 2 - 1) * span
        flip = torch.where(rand[:, 3] < 0.5, -1.0, 1.0) if aug.flip else torch.ones(n)
        theta = torch.zeros((n, 2, 3))
        theta[:, 0, 0] = flip / zoom
        theta[:, 0, 2] = shift_x
        theta[:, 1, 1] = 1 / zoom
        theta[:, 1, 2] = shift_y
        grid = F.affine_grid(theta.to(device), [n, 3, size, size], align_corners=False)
        x = F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
    elif x.shape[-1] != size:
        x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    mean = torch.tensor(aug.mean, device=device).view(1, 3, 1, 1)
    std = torch.tensor(aug.std, device=device).view(1, 3, 1, 1)
    x = (x - mean) / std
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return x


class CachedBatches:
    """An iterable of (images, targets) batches that fastai's Learner can fit on.

    Each pass over a training loader reshuffles with seed + pass number, so a run is
    reproducible and a resumed run can skip to the pass it left off at.
    """

    def __init__(self, array: np.ndarray, indices, targets, batch_size: int, aug: Augment, train: bool,
                 device: torch.device | str = "cpu", seed: int = 0):
        self.array = array
        self.indices = np.asarray(indices, dtype=np.int64)
        self.targets = np.asarray(targets, dtype=np.int64)
        self.batch_size = batch_size
        self.aug = aug
        self.train = train
        self.device = torch.device(device)
        self.seed = seed
        self.passes = 0
        # Dropping a last batch of one keeps BatchNorm from failing on it in training.
        self.drop_last = train and len(self.indices) % batch_size == 1

    def to(self, device):
        self.device = torch.device(device)
        return self

    def __len__(self) -> int:
        n = len(self.indices)
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def _order(self) -> np.ndarray:
        if not self.train:
            return np.arange(len(self.indices))
        return np.random.default_rng(self.seed + self.passes).permutation(len(self.indices))

    def _host_batches(self, order):
        cuda = self.device.type == "cuda"
        for start in range(0, len(self) * self.batch_size, self.batch_size):
            chosen = np.sort(order[start:start + self.batch_size])  # sorted: sequential reads from the memmap
            rows = self.indices[chosen]
            images = torch.from_numpy(np.ascontiguousarray(self.array[rows]))
            targets = torch.from_numpy(self.targets[chosen])
            if cuda:
                images, targets = images.pin_memory(), targets.pin_memory()
            yield images, targets

    def __iter__(self):
        order = self._order()
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.passes)
        self.passes += 1
        channels_last = self.device.type == "cuda"
        for images, targets in _prefetched(self._host_batches(order)):
            images = images.to(self.device, non_blocking=True)
            targets = targets.to(self.device, non_blocking=True)
            yield augment_batch(images, self.aug, self.train, generator, channels_last), targets


def _prefetched(batches, depth: int = PREFETCH):
    """Run a generator on a thread, `depth` items ahead; errors surface in the consumer."""
    slots: queue.Queue = queue.Queue(maxsize=depth)
    done = object()
    stop = threading.Event()

    def produce():
        try:
            for item in batches:
                if stop.is_set():
                    return
                slots.put(item)
        except BaseException as error:  # handed to the consumer, which re-raises it
            slots.put(error)
        finally:
            slots.put(done)

    thread = threading.Thread(target=produce, daemon=True)
    thread.start()
    try:
        while True:
            item = slots.get()
            if item is done:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        while thread.is_alive():  # unblock a producer waiting on a full queue
            try:
                slots.get_nowait()
            except queue.Empty:
                thread.join(timeout=0.05)
