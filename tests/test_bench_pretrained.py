"""bench/make_pretrained.py's committed weights: what bench/search_efficiency.py's pretrained
table fine-tunes from, loaded the way a study loads `[model] pretrained = true, weights = FILE`."""

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from swipr_core.train.model import ModelSpec, create_model
from tests.benchkit import load_bench


@pytest.fixture(scope="module")
def make_pretrained():
    return load_bench("make_pretrained")


def test_the_committed_weights_load_into_the_demo_network_below_a_fresh_head(make_pretrained):
    assert load_bench("search_efficiency").WEIGHTS == make_pretrained.WEIGHTS   # the table's file is this one
    model = create_model(ModelSpec(arch=make_pretrained.ARCH, pretrained=True, weights=make_pretrained.WEIGHTS))
    saved = load_file(str(make_pretrained.WEIGHTS))
    head = {f"fc.{name}" for name, _ in model.get_classifier().named_parameters()}
    assert model.get_classifier().out_features == 2 and saved["fc.weight"].shape[0] == len(make_pretrained.COLOURS)
    body = {name: tensor for name, tensor in model.state_dict().items() if name not in head}
    assert body and all(torch.equal(tensor, saved[name]) for name, tensor in body.items())


def test_the_pretraining_pictures_are_seeded_and_every_colour_is_a_class(make_pretrained):
    first, labels = make_pretrained.make_images(40, np.random.default_rng(3))
    again, same = make_pretrained.make_images(40, np.random.default_rng(3))
    assert torch.equal(first, again) and torch.equal(labels, same)
    assert first.shape == (40, 3, make_pretrained.IMAGE_PX, make_pretrained.IMAGE_PX)
    assert set(labels.tolist()) == set(range(len(make_pretrained.COLOURS)))
