"""Batches from the cache, augmented on the training device (here, the CPU)."""
import os

import numpy as np
import pytest
import torch

from swipr_core.data.loaders import (
    Augment,
    CachedBatches,
    augment_batch,
    gather_rows,
    outgrows_ram,
    prefetched,
    random_affine,
)

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def aug(size=16, **kwargs):
    return Augment(image_size=size, mean=MEAN, std=STD, **kwargs)


def images(n=4, px=20, seed=0):
    return torch.from_numpy(np.random.default_rng(seed).integers(0, 256, (n, px, px, 3), dtype=np.uint8))


def test_a_constant_image_normalises_to_the_model_stats():
    cases = [(px, train, resample) for px in (20, 40) for train in (True, False) for resample in ("grid", "crop")]
    for px, train, resample in cases:   # 40 px: more than 2× down, antialiased first
        batch = torch.full((2, px, px, 3), 51, dtype=torch.uint8)   # 51/255 = 0.2
        out = augment_batch(batch, aug(), train, torch.Generator().manual_seed(0), resample=resample)
        assert out.shape == (2, 3, 16, 16) and out.dtype == torch.float32
        expected = (0.2 - torch.tensor(MEAN)) / torch.tensor(STD)
        torch.testing.assert_close(out.mean(dim=(0, 2, 3)), expected, atol=1e-4, rtol=1e-4)


def test_validation_is_a_plain_resize_with_no_randomness():
    batch = images()
    first = augment_batch(batch, aug(), train=False)
    torch.testing.assert_close(first, augment_batch(batch, aug(), train=False))
    same_size = augment_batch(images(px=16), aug(), train=False)
    expected = (images(px=16).permute(0, 3, 1, 2).float() / 255 - torch.tensor(MEAN).view(1, 3, 1, 1)) \
        / torch.tensor(STD).view(1, 3, 1, 1)
    torch.testing.assert_close(same_size, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("resample", ["grid", "crop"])
def test_a_flip_without_zoom_mirrors_the_image(resample):
    batch = images(n=1, px=16)
    theta = torch.tensor([[[-1.0, 0, 0], [0, 1.0, 0]]])
    flipped = augment_batch(batch, aug(max_zoom=1.0), True, theta=theta, resample=resample)
    plain = augment_batch(batch, aug(), train=False)
    torch.testing.assert_close(flipped, plain.flip(-1), atol=1e-4, rtol=1e-4)


def test_the_cpus_crop_path_matches_the_gpus_grid_path_up_to_whole_pixels():
    # A smooth picture: rounding the zoom window to whole pixels moves values very little.
    ramp = torch.linspace(0, 1, 40)
    picture = torch.stack([ramp[None, :].expand(40, 40), ramp[:, None].expand(40, 40), (ramp[None, :] + ramp[:, None]) / 2],
                          dim=-1)
    batch = (picture * 255).round().to(torch.uint8)[None].repeat(8, 1, 1, 1)
    theta = random_affine(8, aug(size=32), torch.Generator().manual_seed(5))
    grid = augment_batch(batch, aug(size=32), True, theta=theta, resample="grid")
    crop = augment_batch(batch, aug(size=32), True, theta=theta, resample="crop")
    one_step = (1 / 40) / min(STD)   # one source pixel of the ramp, in normalised units
    assert (grid - crop).abs().max() < 1.5 * one_step
    # Flipped images come out flipped on both paths: the horizontal ramp runs the other way.
    flipped = theta[:, 0, 0] < 0
    assert flipped.any() and not flipped.all()
    slope = crop[:, 0, 16, -1] - crop[:, 0, 16, 0]
    assert (slope[flipped] < 0).all() and (slope[~flipped] > 0).all()


def test_random_affine_stays_within_zoom_shift_and_flips_about_half():
    theta = random_affine(4000, aug(), torch.Generator().manual_seed(1))
    scale_x, shift_x, scale_y, shift_y = theta[:, 0, 0], theta[:, 0, 2], theta[:, 1, 1], theta[:, 1, 2]
    zoom = 1 / scale_y
    assert (zoom >= 1).all() and (zoom <= 1.1 + 1e-6).all()
    assert torch.allclose(scale_x.abs(), scale_y)
    span = 1 - scale_y    # the zoomed window never leaves the image
    assert (shift_x.abs() <= span + 1e-6).all() and (shift_y.abs() <= span + 1e-6).all()
    assert 0.45 < (scale_x < 0).float().mean() < 0.55
    assert (random_affine(10, aug(flip=False))[:, 0, 0] > 0).all()


def test_augmentation_is_reproducible_from_the_seed():
    batch = images()
    for resample in ("grid", "crop"):
        a = augment_batch(batch, aug(), True, torch.Generator().manual_seed(3), resample=resample)
        b = augment_batch(batch, aug(), True, torch.Generator().manual_seed(3), resample=resample)
        c = augment_batch(batch, aug(), True, torch.Generator().manual_seed(4), resample=resample)
        torch.testing.assert_close(a, b)
        assert not torch.allclose(a, c)


def test_gather_rows_copies_the_rows_into_one_tensor():
    array = np.random.default_rng(0).integers(0, 256, (10, 4, 4, 3), dtype=np.uint8)
    rows = np.array([1, 4, 9])
    out = gather_rows(array, rows)
    assert out.dtype == torch.uint8 and out.is_contiguous()
    np.testing.assert_array_equal(out.numpy(), array[rows])


def make_loader(n=21, batch_size=4, train=True, seed=0):
    array = np.random.default_rng(0).integers(0, 256, (n + 5, 20, 20, 3), dtype=np.uint8)
    array[:, 0, 0, 0] = np.arange(n + 5)   # pixel (0, 0) names the row it came from
    indices = np.arange(5, n + 5)
    targets = indices % 2
    return array, CachedBatches(array, indices, targets, batch_size, aug(), train, seed=seed)


def test_every_image_once_per_epoch_with_its_target():
    _, loader = make_loader(train=False)
    targets = []
    for x, y in loader:
        assert x.shape[1:] == (3, 16, 16)
        targets.append(y)
    # Validation batches come in order; the row ids make the targets checkable.
    assert sum(len(y) for y in targets) == 21
    assert torch.cat(targets).tolist() == [i % 2 for i in range(5, 26)]


def test_each_training_pass_reshuffles_reproducibly():
    def orders(seed):
        _, loader = make_loader(seed=seed)
        return [loader.order().tolist() for loader.passes in (0, 1)]
    first, second = orders(0)
    assert sorted(first) == list(range(21)) and first != second
    assert orders(0) == [first, second]


def test_training_batches_are_reproducible_and_differ_per_pass():
    _, a = make_loader(seed=5)
    _, b = make_loader(seed=5)
    epoch_a, epoch_b = [x for x, _ in a], [x for x, _ in b]
    for x, y in zip(epoch_a, epoch_b, strict=True):
        torch.testing.assert_close(x, y)
    second_a = [x for x, _ in a]
    assert not torch.allclose(epoch_a[0], second_a[0])


def test_a_last_training_batch_of_one_is_dropped():
    _, loader = make_loader(n=21, batch_size=4)        # 21 = 5·4 + 1
    assert len(loader) == 5 and sum(len(y) for _, y in loader) == 20
    _, loader = make_loader(n=22, batch_size=4)
    assert len(loader) == 6 and sum(len(y) for _, y in loader) == 22
    _, loader = make_loader(n=21, batch_size=4, train=False)
    assert len(loader) == 6


def test_targets_travel_with_their_images():
    array = np.zeros((12, 8, 8, 3), dtype=np.uint8)
    array[:, :, :, :] = (np.arange(12) * 20).reshape(12, 1, 1, 1)   # brightness names the row
    loader = CachedBatches(array, np.arange(12), np.arange(12) * 20, 5,
                           Augment(8, (0.0,) * 3, (1.0,) * 3), train=True, seed=1)
    for x, y in loader:
        torch.testing.assert_close(x.mean(dim=(1, 2, 3)) * 255, y.float(), atol=1e-3, rtol=1e-4)


def test_prefetch_errors_reach_the_consumer():
    def broken():
        yield 1
        raise OSError("disk went away")

    seen = []
    with pytest.raises(OSError, match="disk went away"):
        for item in prefetched(broken()):
            seen.append(item)
    assert seen == [1]


def test_stopping_early_releases_the_prefetch_thread():
    import threading

    before = threading.active_count()
    for i, _ in enumerate(prefetched(iter(range(100)), depth=2)):
        if i == 3:
            break
    assert threading.active_count() == before


def test_the_axis_aligned_grid_equals_torchs_affine_grid():
    import torch.nn.functional as F

    from swipr_core.data.loaders import axis_aligned_grid

    theta = random_affine(6, aug(), torch.Generator().manual_seed(2))
    expected = F.affine_grid(theta, [6, 3, 16, 16], align_corners=False)
    torch.testing.assert_close(axis_aligned_grid(theta, 16), expected, atol=1e-6, rtol=1e-5)


def _read_bytes() -> int:
    with open("/proc/self/io") as handle:
        return next(int(line.split()[1]) for line in handle if line.startswith("read_bytes"))


def _cold_memmap(tmp_path, rows=400, px=128):
    file = tmp_path / "cache.npy"
    array = np.lib.format.open_memmap(file, mode="w+", dtype=np.uint8, shape=(rows, px, px, 3))
    array[:] = (np.arange(rows, dtype=np.uint8) * 7)[:, None, None, None]
    array.flush()
    del array
    fd = os.open(file, os.O_RDONLY)
    os.fsync(fd)
    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)   # out of the page cache: the next read is the disk's
    os.close(fd)
    return file


@pytest.mark.skipif(not os.path.exists("/proc/self/io"), reason="counts disk reads in Linux /proc/self/io")
def test_advised_rows_of_a_cold_cache_are_read_once_not_with_the_readahead_around_them(tmp_path):
    # Issue 22: a page fault on a cold memmap reads the disk's readahead window around it;
    # scattered rows advised first are read alone.
    file = _cold_memmap(tmp_path)
    array = np.load(file, mmap_mode="r")
    rows = np.arange(3, 400, 50)   # 8 rows, far apart, as a batch of a big cache is
    before = _read_bytes()
    out = gather_rows(array, rows, advise=True)
    read = _read_bytes() - before
    np.testing.assert_array_equal(out.numpy()[:, 0, 0, 0], (rows * 7).astype(np.uint8))
    if read == 0:
        pytest.skip("this file system does not count its reads in /proc/self/io (tmpfs?)")
    assert read <= 1.5 * out.numel(), f"read {read} bytes for {out.numel()} bytes of rows"


def test_only_a_memmap_larger_than_the_memory_available_is_advised():
    in_ram = np.zeros((4, 8, 8, 3), dtype=np.uint8)
    assert not outgrows_ram(in_ram, available=0)   # nothing to ask the disk for


def test_outgrows_ram_compares_the_mapping_with_the_memory_available(tmp_path):
    array = np.load(_cold_memmap(tmp_path, rows=10, px=16), mmap_mode="r")
    assert outgrows_ram(array, available=array.nbytes - 1)
    assert not outgrows_ram(array, available=array.nbytes)
    assert not outgrows_ram(array)   # 7.7 KB fits in any machine's memory


def test_advised_and_plain_loaders_give_the_same_batches(tmp_path):
    array = np.load(_cold_memmap(tmp_path, rows=30, px=16), mmap_mode="r")
    aug = Augment(16, (0.5,) * 3, (0.5,) * 3)
    runs = [[(x, y) for x, y in CachedBatches(array, np.arange(2, 30), np.arange(28) % 2, 8, aug, True,
                                                 seed=1, advise=advise)] for advise in (True, False, None)]
    assert len(runs[0]) == 4
    for other in runs[1:]:
        for (xa, ya), (xb, yb) in zip(runs[0], other, strict=True):
            torch.testing.assert_close(xa, xb)
            assert torch.equal(ya, yb)
