"""sklearn digits: splits, dequantization, preprocessing, bits/dim."""

import math

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits

from distill.data import build_datamodule, to_bits_per_dim
from distill.data.datamodule import split_rows


@pytest.fixture(scope="module")
def digits():
    module = build_datamodule("digits")
    module.setup()
    return module


def test_shapes_and_attributes(digits):
    assert digits.features == 64 and digits.image_shape == (8, 8) and digits.bits_per_dim
    sizes = [len(split) for split in (digits.train_data, digits.val_data, digits.test_data)]
    assert sizes == [1258, 180, 359] and sum(sizes) == len(load_digits().data)
    for split in (digits.train_data, digits.val_data, digits.test_data):
        assert split.shape[1] == 64 and split.dtype == torch.float32
        assert split.min() >= 0 and split.max() <= 17
    assert digits.entropy is None
    batch = next(iter(digits.train_dataloader()))
    assert batch.shape == (256, 64) and batch.dtype == torch.float32


def test_dequantization_is_pixel_plus_uniform_and_fresh_for_training(digits):
    pixels = digits.train_pixels
    assert torch.equal(pixels, pixels.round()) and pixels.max() == 16
    noise = digits.train_data - pixels  # in [0, 1]: float32 may round 16 + u up to 17
    assert noise.min() >= 0 and noise.max() <= 1 and abs(noise.mean().item() - 0.5) < 0.01
    dataset = digits.train_dataloader().dataset
    first, second = dataset[0], dataset[0]
    assert not torch.equal(first, second)
    assert ((first - pixels[0]) >= 0).all() and ((first - pixels[0]) <= 1).all()


def test_split_is_disjoint_fixed_and_covers_every_row():
    rows = torch.arange(1797.0)[:, None]
    train, val, test = split_rows(rows, 0.1, 0.2, seed=0, source="digits")
    indices = torch.cat([train, val, test])[:, 0]
    assert torch.equal(indices.sort().values, rows[:, 0])
    again = split_rows(rows, 0.1, 0.2, seed=0, source="digits")
    assert all(torch.equal(a, b) for a, b in zip((train, val, test), again, strict=True))
    other = split_rows(rows, 0.1, 0.2, seed=1, source="digits")
    assert not torch.equal(train, other[0])


def test_val_and_test_noise_is_fixed_by_the_seed(digits):
    again = build_datamodule("digits")
    again.setup()
    assert torch.equal(again.val_data, digits.val_data)
    assert torch.equal(again.test_data, digits.test_data)


def test_preprocessing_is_logit_then_standardize(digits):
    assert digits.preprocessing_config == {"features": 64, "logit_upper": 17.0, "logit_alpha": 0.05}
    model_side, log_det = digits.preprocessing.inverse(digits.train_data)
    assert torch.isfinite(model_side).all() and torch.isfinite(log_det).all()
    torch.testing.assert_close(model_side.mean(0), torch.zeros(64), atol=1e-4, rtol=0)
    torch.testing.assert_close(model_side.std(0), torch.ones(64), atol=1e-4, rtol=0)
    back, _ = digits.preprocessing(model_side)
    torch.testing.assert_close(back, digits.train_data, atol=1e-4, rtol=0)


def test_per_pixel_histograms_score_about_2_4_bits_per_dim(digits):
    """Scale for the flows: independent per-pixel histograms (unit bins, a density on the
    dequantized space) score about 2.43 bits/dim on the test split."""
    train, test = digits.train_data.numpy(), digits.test_data.numpy()
    nll = 0.0
    for pixel in range(64):
        counts = np.bincount(np.floor(train[:, pixel]).astype(int), minlength=17) + 0.5
        levels = np.minimum(np.floor(test[:, pixel]).astype(int), 16)
        nll -= np.log(counts[levels] / counts.sum()).mean()
    assert to_bits_per_dim(nll, 64) == pytest.approx(2.43, abs=0.1)
    assert to_bits_per_dim(64 * math.log(2), 64) == pytest.approx(1.0)
