"""Batches from the image cache, augmented on the device that trains.

A batch is gathered from the memory-mapped uint8 cache (no JPEG decoding per epoch)
straight into one buffer (pinned memory on CUDA), moved to the device, and only there
turned into floats, randomly zoomed (up to 1.1), shifted, flipped, resized and normalised:
one affine_grid/grid_sample call for the whole batch. The same code runs on a CPU.

The GPU never waits on the host inside a batch: the random affine parameters are drawn
on a CPU thread one step ahead and travel with the images; on CUDA the copy runs on a
side stream, and the consumer's stream waits on an event, not the host. The
normalisation constants live on the device once, not a new tensor per batch.
"""
from __future__ import annotations

import ctypes
import functools
import math
import mmap
import os
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


def random_affine(n: int, aug: Augment, generator: torch.Generator | None = None) -> torch.Tensor:
    """(n, 2, 3) affine matrices on the CPU: zoom in up to max_zoom, shift within the
    image, flip half of them; axis-aligned (no rotation), as axis_aligned_grid needs. Drawn on the CPU so a seed gives the same batch anywhere."""
    rand = torch.rand((n, 4), generator=generator)
    zoom = 1 + (aug.max_zoom - 1) * rand[:, 0]
    span = 1 - 1 / zoom   # how far the zoomed window can move and stay inside the image
    flip = torch.where(rand[:, 3] < 0.5, -1.0, 1.0) if aug.flip else torch.ones(n)
    theta = torch.zeros((n, 2, 3))
    theta[:, 0, 0] = flip / zoom
    theta[:, 0, 2] = (rand[:, 1] * 2 - 1) * span
    theta[:, 1, 1] = 1 / zoom
    theta[:, 1, 2] = (rand[:, 2] * 2 - 1) * span
    return theta


def axis_aligned_grid(theta: torch.Tensor, size: int) -> torch.Tensor:
    """F.affine_grid(theta, [n, 3, size, size], align_corners=False) for matrices with no
    rotation or shear (random_affine's), built from one row and one column per image:
    the general affine_grid is a batched matmul that costs more than grid_sample on a CPU."""
    n = theta.shape[0]
    base = (torch.arange(size, device=theta.device, dtype=theta.dtype) * 2 + 1) / size - 1
    xs = theta[:, 0, 0, None] * base + theta[:, 0, 2, None]   # (n, size): where each column samples
    ys = theta[:, 1, 1, None] * base + theta[:, 1, 2, None]   # (n, size): where each row samples
    grid = torch.empty((n, size, size, 2), device=theta.device, dtype=theta.dtype)
    grid[..., 0] = xs[:, None, :]
    grid[..., 1] = ys[:, :, None]
    return grid


@functools.lru_cache(maxsize=16)
def _bias_and_scale(mean: tuple, std: tuple, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """x in 0..255 -> x · 1/(255·std) - mean/std, i.e. (x/255 - mean)/std in one multiply-add.
    Made once per device: a fresh torch.tensor per batch would be a host-to-device copy
    that waits for the GPU to drain."""
    bias = torch.tensor([-m / s for m, s in zip(mean, std, strict=True)], device=device).view(1, 3, 1, 1)
    scale = torch.tensor([1 / (255 * s) for s in std], device=device).view(1, 3, 1, 1)
    return bias, scale


def augment_batch(images: torch.Tensor, aug: Augment, train: bool, generator: torch.Generator | None = None,
                  channels_last: bool = False, theta: torch.Tensor | None = None,
                  resample: str = "auto") -> torch.Tensor:
    """uint8 (B, H, W, 3) on any device -> normalised float (B, 3, S, S) on that device.

    `theta` (from random_affine, already on the device) skips drawing it here; it must be
    axis-aligned (zoom, shift, flip), as random_affine's are. `resample` for training:
    "grid" (one grid_sample), "crop" (per-image uint8 crop and resize, whole pixels) or
    "auto" (crop on a CPU, grid elsewhere)."""
    device = images.device
    size = aug.image_size
    if train and (resample == "crop" or (resample == "auto" and device.type == "cpu")):
        n = images.shape[0]
        theta = random_affine(n, aug, generator) if theta is None else theta
        x = _crop_and_resize(images, theta.cpu(), size).float()
    elif train:
        x = images.permute(0, 3, 1, 2).float()   # values 0..255; the permuted view is channels_last in memory
        # Bilinear sampling reads 2×2 neighbours, so up to 2× down it touches every pixel;
        # only further down would it skip pixels (alias), and there a cheap antialiased
        # shrink goes first. The usual 256 px cache -> 224 px skips it, which costs as much
        # as all the rest on a CPU.
        if x.shape[-1] > 2 * size:
            pre = math.ceil(size * aug.max_zoom)
            x = F.interpolate(x, size=(pre, pre), mode="bilinear", antialias=True, align_corners=False)
        n = x.shape[0]
        if theta is None:
            theta = random_affine(n, aug, generator).to(device)
        grid = axis_aligned_grid(theta, size)
        x = F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
    else:
        x = images.permute(0, 3, 1, 2).float()
        if x.shape[-1] != size:
            x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    bias, scale = _bias_and_scale(tuple(aug.mean), tuple(aug.std), device)
    # One pass, in place: x is always a fresh tensor here (.float(), grid_sample and
    # interpolate all allocate), and a new output would cost its page faults on a CPU.
    x = torch.addcmul(bias, x, scale, out=x)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return x


def _crop_and_resize(images: torch.Tensor, theta: torch.Tensor, size: int) -> torch.Tensor:
    """The CPU's way to the same augmentation: each image's zoom window (from theta, rounded
    to whole pixels) resized in uint8, then flipped. On a CPU that's ~4x faster than a
    float grid_sample over the batch; on a GPU, one grid_sample beats a call per image."""
    n, height, width = images.shape[:3]
    x = images.permute(0, 3, 1, 2)   # channels_last uint8: the fast path of CPU bilinear resize
    out = torch.empty((n, 3, size, size), dtype=torch.uint8).contiguous(memory_format=torch.channels_last)
    for i, (sx, tx, sy, ty) in enumerate(theta[:, [0, 0, 1, 1], [0, 2, 1, 2]].tolist()):
        w, h = max(1, round(abs(sx) * width)), max(1, round(abs(sy) * height))
        left = min(max(0, round((tx - abs(sx) + 1) / 2 * width)), width - w)
        top = min(max(0, round((ty - abs(sy) + 1) / 2 * height)), height - h)
        crop = x[i:i + 1, :, top:top + h, left:left + w]
        resized = F.interpolate(crop, size=(size, size), mode="bilinear", align_corners=False,
                                antialias=w > 2 * size)
        out[i] = resized[0].flip(-1) if sx < 0 else resized[0]
    return out


def gather_rows(array: np.ndarray, rows: np.ndarray, pin: bool = False, advise: bool = False) -> torch.Tensor:
    """array[rows] copied once, straight into a (pinned, if asked) tensor.

    Sorted rows read the memmap front to back; pages come from the OS page cache that
    every process on the machine shares. `advise` (for a cache larger than RAM, see
    outgrows_ram) asks the kernel for exactly these rows first (will_need)."""
    if advise:
        will_need(array, rows)
    out = torch.empty((len(rows), *array.shape[1:]), dtype=torch.uint8, pin_memory=pin)
    np.take(array, rows, axis=0, out=out.numpy())
    return out


def _madvise():
    """libc's madvise(addr, length, advice), or None where there is none (not POSIX)."""
    try:
        function = ctypes.CDLL(None, use_errno=True).madvise
    except (OSError, AttributeError):
        return None
    function.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
    function.restype = ctypes.c_int
    return function


_MADVISE = _madvise()
_WILL_NEED = getattr(mmap, "MADV_WILLNEED", None)


def will_need(array: np.ndarray, rows: np.ndarray) -> None:
    """Tell the kernel which of a memory-mapped array's rows come next: MADV_WILLNEED on
    each run of consecutive rows, so it reads exactly those pages, all at once.

    Without it, a fault on a page not in the page cache reads the disk's readahead window
    around it (read_ahead_kb: 8 MB on a virtio disk), most of it rows this batch does not
    use; on a cache larger than RAM they are dropped before a later batch needs them, and
    an epoch read 11-14x the rows it used. Only advice: an array in RAM, or a
    platform without madvise, is left as it is."""
    if _MADVISE is None or _WILL_NEED is None or not isinstance(array, np.memmap) or len(rows) == 0 \
            or not array.flags.c_contiguous:
        return
    rows = np.unique(rows)   # sorted, so neighbours merge into one range
    breaks = np.flatnonzero(np.diff(rows) != 1) + 1
    starts, ends = rows[np.r_[0, breaks]], rows[np.r_[breaks - 1, len(rows) - 1]] + 1
    base, row_bytes = array.ctypes.data, array.strides[0]
    for start, end in zip(starts.tolist(), ends.tolist(), strict=True):
        first = base + start * row_bytes
        aligned = first - first % mmap.PAGESIZE   # madvise takes whole pages
        _MADVISE(aligned, base + end * row_bytes - aligned, _WILL_NEED)


def outgrows_ram(array: np.ndarray, available: int | None = None) -> bool:
    """Whether a memory-mapped array is larger than the memory available now (`available`,
    default MemAvailable: free memory plus page cache that can be dropped, its own pages
    included). Then pages are dropped before a later batch or epoch uses them, and rows are
    best asked for (will_need). A cache that fits keeps the plain mapping: each page is read
    once, in the disk's big readahead, and the ~20 µs a row that the advice costs even on
    cached pages (measured on a 2-core VM) is not paid."""
    if not isinstance(array, np.memmap):
        return False
    return array.nbytes > (_available_memory() if available is None else available)


def _available_memory() -> int:
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")   # not Linux: all of RAM


class CachedBatches:
    """An iterable of (images, targets) batches that fastai's Learner can fit on.

    Each pass over a training loader reshuffles with seed + pass number, so a run is
    reproducible and a resumed run can skip to the pass it left off at. `advise`: ask the
    kernel for each batch's rows of a memmap (see will_need); None decides it each pass,
    by whether the array outgrows the memory available (outgrows_ram).
    """

    def __init__(self, array: np.ndarray, indices, targets, batch_size: int, aug: Augment, train: bool,
                 device: torch.device | str = "cpu", seed: int = 0, advise: bool | None = None):
        self.array = array
        self.advise = advise
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

    def order(self) -> np.ndarray:
        """Row positions in this pass's order: shuffled by seed + passes when training."""
        if not self.train:
            return np.arange(len(self.indices))
        return np.random.default_rng(self.seed + self.passes).permutation(len(self.indices))

    def host_batches(self, order, generator):
        """(uint8 images, targets, theta or None) on the host, in batch order; pinned for CUDA."""
        pin = self.device.type == "cuda"
        # Decided once a pass: what else runs on the machine, and so the memory left, changes.
        advise = outgrows_ram(self.array) if self.advise is None else self.advise
        for start in range(0, len(self) * self.batch_size, self.batch_size):
            chosen = np.sort(order[start:start + self.batch_size])  # sorted: sequential reads from the memmap
            images = gather_rows(self.array, self.indices[chosen], pin, advise)
            targets = torch.from_numpy(self.targets[chosen])
            theta = random_affine(len(chosen), self.aug, generator) if self.train else None
            if pin:
                targets = targets.pin_memory()
                theta = theta.pin_memory() if theta is not None else None
            yield images, targets, theta

    def _device_batches(self, host_batches):
        """On CUDA: copy each batch on a side stream, on the prefetch thread, so the copy
        overlaps the previous step; hand over an event to wait on instead of a sync."""
        if self.device.type != "cuda":
            for images, targets, theta in host_batches:
                yield images.to(self.device), targets.to(self.device), \
                    theta.to(self.device) if theta is not None else None, None
            return
        stream = torch.cuda.Stream(self.device)
        for batch in host_batches:
            with torch.cuda.stream(stream):
                moved = tuple(t.to(self.device, non_blocking=True) if t is not None else None for t in batch)
                ready = torch.cuda.Event()
                ready.record(stream)
            yield (*moved, ready)

    def __iter__(self):
        order = self.order()
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.passes)
        self.passes += 1
        cuda = self.device.type == "cuda"
        for images, targets, theta, ready in prefetched(self._device_batches(self.host_batches(order, generator))):
            if ready is not None:
                current = torch.cuda.current_stream(self.device)
                current.wait_event(ready)   # the GPU waits for the copy; the host does not
                for tensor in (images, targets, theta):
                    if tensor is not None:
                        tensor.record_stream(current)   # allocated on the side stream, used on this one
            yield augment_batch(images, self.aug, self.train, channels_last=cuda, theta=theta), targets


def prefetched(batches, depth: int = PREFETCH):
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
