"""The GPU training path: its device-agnostic parts on the CPU, its CUDA-only parts on a GPU."""
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from search.studyfile import load_study_file
from swipr_core.data.loaders import Augment, CachedBatches
from swipr_core.errors import SwiprError
from swipr_core.train.run import DeviceSmoothLoss, compile_enabled
from tests.studykit import study_toml

CUDA = torch.cuda.is_available()
needs_cuda = pytest.mark.skipif(not CUDA, reason="no CUDA device visible: pinned memory, side-stream copies, "
                                                 "channels_last kernels and bf16 autocast need one")
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def test_compile_auto_is_off_until_measured_and_on_off_are_honoured():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert not compile_enabled("auto", cpu) and not compile_enabled("auto", cuda)
    assert compile_enabled("on", cpu) and not compile_enabled("off", cuda)
    with pytest.raises(SwiprError, match="compile must be one of auto, on, off"):
        compile_enabled("yes", cpu)


def test_study_file_compile_key(tmp_path):
    file = tmp_path / "s.toml"
    file.write_text(study_toml(tmp_path))
    assert load_study_file(file).train.compile == "auto"
    file.write_text(study_toml(tmp_path, extra={"train": 'compile = "on"'}))
    assert load_study_file(file).train.compile == "on"
    file.write_text(study_toml(tmp_path, extra={"train": 'compile = "fast"'}))
    with pytest.raises(SwiprError, match=r"\[train\] compile must be one of auto, on, off, got 'fast'"):
        load_study_file(file)


def test_the_device_side_smooth_loss_matches_fastais():
    from fastai.learner import AvgSmoothLoss

    stock, ours, learn = AvgSmoothLoss(beta=0.9), DeviceSmoothLoss(beta=0.9), SimpleNamespace(loss=None)
    assert ours.beta == 0.9
    for metric in (stock, ours):
        metric.reset()
    for value in (2.0, 1.0, 0.5, 0.7):
        learn.loss = torch.tensor([value, value])
        stock.accumulate(learn)
        ours.accumulate(learn)
        assert float(ours.value) == pytest.approx(float(stock.value), rel=1e-6)
    assert ours.value.device == learn.loss.device   # never copied to the CPU on its own


def _loader(device, train=True):
    array = np.random.default_rng(0).integers(0, 256, (40, 24, 24, 3), dtype=np.uint8)
    return CachedBatches(array, np.arange(40), np.arange(40) % 2, 8, Augment(16, MEAN, STD), train,
                         device=device, seed=2)


@needs_cuda
def test_cuda_batches_come_channels_last_with_the_cpus_targets():
    for train in (True, False):
        for (x_gpu, y_gpu), (x_cpu, y_cpu) in zip(_loader("cuda", train), _loader("cpu", train), strict=True):
            assert x_gpu.is_cuda and y_gpu.is_cuda and x_gpu.shape == x_cpu.shape
            assert x_gpu.is_contiguous(memory_format=torch.channels_last)
            assert torch.equal(y_gpu.cpu(), y_cpu)
            if not train:
                torch.testing.assert_close(x_gpu.cpu(), x_cpu, atol=1e-3, rtol=1e-3)


@needs_cuda
def test_the_gpu_grid_path_equals_the_same_path_on_the_cpu():
    from swipr_core.data.loaders import augment_batch, random_affine

    images = torch.from_numpy(np.random.default_rng(1).integers(0, 256, (6, 24, 24, 3), dtype=np.uint8))
    aug = Augment(16, MEAN, STD)
    theta = random_affine(6, aug, torch.Generator().manual_seed(0))
    on_gpu = augment_batch(images.cuda(), aug, True, theta=theta.cuda())
    on_cpu = augment_batch(images, aug, True, theta=theta, resample="grid")
    torch.testing.assert_close(on_gpu.cpu(), on_cpu, atol=1e-3, rtol=1e-3)


@needs_cuda
def test_cuda_host_batches_are_pinned():
    loader = _loader("cuda")
    images, targets, theta = next(loader.host_batches(loader.order(), torch.Generator().manual_seed(0)))
    assert images.is_pinned() and targets.is_pinned() and theta.is_pinned()


@needs_cuda
def test_a_bf16_run_on_cuda_trains_and_keeps_its_loss_on_the_gpu(tmp_path):
    from swipr_core.data.dataset import DataSpec, prepare_data
    from swipr_core.data.demo import DEMO_RULES
    from swipr_core.train.model import ModelSpec
    from swipr_core.train.run import train
    from swipr_core.train.schedule import TrainConfig
    from tests.studykit import demo_data

    database = demo_data(tmp_path)
    dataset = prepare_data(DataSpec(database=database, image_root=tmp_path, labels_file=tmp_path / "l.csv",
                                    cache_dir=tmp_path / "c", cache_px=40, valid_pct=0.25, split_seed=1,
                                    rules=DEMO_RULES))
    config = TrainConfig(lr=1e-2, batch_size=16, image_size=32, freeze="unfrozen", n_cycles=1, cycle_len=2,
                         cycle_mult=1)
    result = train(dataset, config, ModelSpec(arch="test_resnet", pretrained=False), device="cuda",
                   precision="bf16", compile="off")
    assert result.metrics["epochs"] == 2
    assert np.isfinite(result.metrics["val_loss"])
    assert next(result.model.parameters()).is_cuda
