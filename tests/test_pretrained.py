"""`[model] pretrained = true, weights = FILE`, the way an offline user (and every real study)
starts: the file's weights load, a frozen phase leaves the body as the file has it (BatchNorm
aside: fastai's freeze trains BatchNorm layers), the unfrozen phase trains the body at a
hundredth of the head's learning rate, and a study and a fit run on it, the bundle predicting
with the file's body."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from fastai.callback.core import Callback
from fastai.torch_core import defaults
from safetensors.torch import load_file

from search.study.data_record import prepare_study_data
from search.studyfile import load_study_file
from swipr_core.data.loaders import Augment
from swipr_core.serve import bundle
from swipr_core.serve.export import ServingModel, torch_probs
from swipr_core.serve.predict import Predictor
from swipr_core.train.model import ModelSpec, create_model
from swipr_core.train.run import BODY_LR_DIVISOR, train
from swipr_core.train.schedule import TrainConfig
from tests.studykit import one_line_error, run_cli, space_toml, study_toml, write_study
from tests.weights import ARCH, load_weights, make_weights

HEAD = "fc."   # test_resnet's classifier
FROZEN_SPACE = space_toml(batch_size="[16]", freeze='["frozen"]')


@pytest.fixture(scope="module")
def weights_file(tmp_path_factory):
    return make_weights(tmp_path_factory.mktemp("weights") / f"{ARCH}.safetensors")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory, data_dir):
    return prepare_study_data(load_study_file(write_study(tmp_path_factory.mktemp("pretrained-data"), data_dir)))


def pretrained(weights_file) -> ModelSpec:
    return ModelSpec(arch=ARCH, pretrained=True, weights=weights_file)


def batchnorm_keys(model) -> set[str]:
    """state_dict keys of BatchNorm layers: weight, bias and running statistics."""
    layers = [name for name, module in model.named_modules() if isinstance(module, torch.nn.BatchNorm2d)]
    return {key for key in model.state_dict() for layer in layers if key.startswith(f"{layer}.")}


def config(freeze: str) -> TrainConfig:
    return TrainConfig(lr=1e-2, batch_size=16, image_size=32, freeze=freeze, n_cycles=1, cycle_len=1, cycle_mult=1)


def test_the_file_loads_into_everything_but_the_head(weights_file):
    model, saved = create_model(pretrained(weights_file)), load_weights(weights_file)
    state = model.state_dict()
    body = [key for key in state if not key.startswith(HEAD)]
    assert len(body) > 50 and all(torch.equal(state[key], saved[key]) for key in body)
    # the file's 1000-class head gives way to a fresh 2-class one
    assert state["fc.weight"].shape[0] == 2 and saved["fc.weight"].shape[0] == 1000
    # the check can fail: a model from random weights is not the file's
    fresh = create_model(ModelSpec(arch=ARCH, pretrained=False)).state_dict()
    assert not torch.equal(fresh["conv1.0.weight"], saved["conv1.0.weight"])
    assert not torch.equal(fresh["conv1.1.running_mean"], saved["conv1.1.running_mean"])


def test_a_frozen_run_leaves_the_body_as_the_file_has_it(weights_file, dataset):
    result = train(dataset, config("frozen"), pretrained(weights_file), device="cpu")
    state, saved = result.model.state_dict(), load_weights(weights_file)
    norms = batchnorm_keys(result.model)
    kept = [key for key in state if not key.startswith(HEAD) and key not in norms]
    assert len(kept) > 10 and all(torch.equal(state[key], saved[key]) for key in kept)
    # BatchNorm still trains under fastai's freeze (train_bn): its statistics moved
    assert any(not torch.equal(state[key], saved[key]) for key in norms if key.endswith("running_mean"))


class GroupLrs(Callback):
    """Every fit a Learner runs: for each training batch, each param group's learning rate and
    whether all its parameters train. Put in fastai's defaults.callbacks, so train's own
    Learner carries it."""

    fits: list[list[tuple[list[float], list[bool]]]] = []

    def before_fit(self):
        GroupLrs.fits.append([])

    def after_batch(self):
        if self.training:
            trains = [all(p.requires_grad for p in params) for params in self.opt.param_lists]
            GroupLrs.fits[-1].append(([float(h["lr"]) for h in self.opt.hypers], trains))


def test_the_unfrozen_phase_trains_the_body_at_a_hundredth_of_the_heads_lr(weights_file, dataset, monkeypatch):
    monkeypatch.setattr(defaults, "callbacks", [*defaults.callbacks, GroupLrs])
    monkeypatch.setattr(GroupLrs, "fits", [])
    result = train(dataset, config("frozen_then_unfrozen"), pretrained(weights_file), device="cpu")
    frozen, unfrozen = GroupLrs.fits   # the head's warm-up, then the unfrozen SGDR fit
    assert frozen and all(trains == [False, True] for _, trains in frozen)
    assert unfrozen and all(trains == [True, True] for _, trains in unfrozen)
    moving = [(body, head) for (body, head), _ in unfrozen if head > 0]
    assert moving and all(body == pytest.approx(head / BODY_LR_DIVISOR) for body, head in moving)
    saved = load_weights(weights_file)
    assert not torch.equal(result.model.state_dict()["conv1.0.weight"], saved["conv1.0.weight"])   # it did train


@pytest.fixture(scope="module")
def fitted(tmp_path_factory, data_dir, weights_file):
    """Two trials of a frozen study on the weights file, then `swipr fit` of the best one."""
    folder = tmp_path_factory.mktemp("pretrained-study")
    study = folder / "study.toml"
    text = study_toml(data_dir, space=FROZEN_SPACE)
    assert "pretrained = false" in text
    study.write_text(text.replace("pretrained = false", f'pretrained = true\nweights = "{weights_file}"'))
    ran = run_cli("study", "run", study, "--n-trials", 2)
    assert ran.returncode == 0, ran.stderr
    fit = run_cli("fit", study, "--out", folder / "bundle")
    assert fit.returncode == 0, fit.stderr
    return folder / "bundle"


def test_a_study_and_a_fit_run_on_the_file_and_the_bundle_keeps_its_body(fitted, weights_file):
    weights, saved = load_file(str(fitted / bundle.WEIGHTS)), load_weights(weights_file)
    model = create_model(pretrained(weights_file))
    norms = batchnorm_keys(model)
    body = [key for key in weights if not key.startswith(HEAD) and key not in norms]
    assert len(body) > 10 and all(torch.equal(weights[key], saved[key]) for key in body)


def test_the_bundle_predicts_with_the_files_body(fitted, weights_file):
    # The file's body, with only the bundle's head and BatchNorm layers: what the bundle answers.
    manifest = bundle.verify(fitted).manifest
    model = create_model(pretrained(weights_file))
    weights = load_file(str(fitted / bundle.WEIGHTS))
    trained = {key: value for key, value in weights.items() if key.startswith(HEAD) or key in batchnorm_keys(model)}
    model.load_state_dict(trained, strict=False)
    serving = ServingModel(model.eval(), Augment(manifest["image_size"], tuple(manifest["mean"]),
                                                 tuple(manifest["std"])))
    images = np.random.default_rng(1).integers(0, 256, (9, 40, 40, 3), dtype=np.uint8)
    expected = torch_probs(serving, images)
    np.testing.assert_allclose(Predictor(fitted).model.probs(images), expected, atol=1e-5)
    assert not np.allclose(expected, expected[0])   # the answers depend on the image


def test_a_file_for_another_arch_is_refused_not_loaded_as_nothing(tmp_path, data_dir):
    # timm loads such a file with strict=False once it has dropped the file's head: nothing
    # would load, and the study would train from random weights it believes pretrained.
    other = make_weights(tmp_path / "test_vit.safetensors", arch="test_vit")
    study = write_study(tmp_path, data_dir)
    study.write_text(study.read_text().replace("pretrained = false", f'pretrained = true\nweights = "{other}"'))
    error = one_line_error(run_cli("study", "run", study, "--n-trials", 1))
    assert f"[model] weights file {other} lacks 90 of the 90 weights of 'test_resnet' below its head" in error
    assert "is it for another arch?" in error
