"""Top losses: the validation images with the highest loss, chosen and drawn."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from search.views.top_losses import plot_top_losses, top_loss_rows
from swipr_core.train.metrics import image_log_losses


def test_the_most_confidently_wrong_come_first():
    # row 3 is a YES the model gives 0.01 (loss 4.6), row 0 a NO it gives 0.9 (loss 2.3)
    probs = np.array([0.9, 0.2, 0.6, 0.01, 0.99])
    targets = np.array([0, 0, 1, 1, 1])
    np.testing.assert_allclose(image_log_losses(probs, targets), -np.log([0.1, 0.8, 0.6, 0.01, 0.99]))
    assert list(top_loss_rows(probs, targets, k=3)) == [3, 0, 2]
    assert list(top_loss_rows(probs, targets, k=10)) == [3, 0, 2, 1, 4]
    # P(YES) exactly 0 for a YES (an fp32 softmax can round there): a large finite loss, first
    assert np.isfinite(image_log_losses([0.0], [1])[0]) and top_loss_rows([0.5, 0.0], [1, 1], 1)[0] == 1


@pytest.mark.parametrize("n", [0, 2, 9])
def test_the_grid_is_a_picture_of_every_tile(tmp_path, n):
    images = np.random.default_rng(0).integers(0, 256, (n, 40, 40, 3), dtype=np.uint8)
    probs, targets = np.linspace(0.1, 0.9, n), np.arange(n) % 2
    path = plot_top_losses(images, targets, probs, tmp_path / "top.png", "trial 3",
                           names=[f"insta/no/img_{i}.jpg" for i in range(n)])
    with Image.open(path) as picture:
        width, height = picture.size
    assert width >= 200 and height >= 200
    if n:
        assert (height > width) == (n == 9)   # three rows of three are taller than one row
    assert list(tmp_path.iterdir()) == [path]   # no temp file left beside it
