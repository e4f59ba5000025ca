"""The generated 2-D data sets: shapes, seeds, disjoint splits, entropies."""

import math

import numpy as np
import pytest
import torch
from scipy import integrate
from scipy.special import i0e

from distill.data import TOYS, build_datamodule
from distill.data.entropy import gaussian_kernel, grid_density, grid_entropy, mixture_entropy
from distill.data.toys import (
    entropy_8gaussians,
    entropy_moons,
    sample_8gaussians,
    sample_checkerboard,
)
from tests.data.helpers import histogram_cross_entropy

GENERATED = ["moons", "siggraph", *TOYS]
SMALL = {"num_train": 600, "num_val": 101, "num_test": 203, "batch_size": 64}


@pytest.fixture(scope="module")
def default_splits():
    """Every generated data set at its default sizes, set up once."""
    modules = {}
    for name in GENERATED:
        module = build_datamodule(name)
        module.setup()
        modules[name] = module
    return modules


@pytest.mark.parametrize("name", GENERATED)
def test_shapes_batches_and_attributes(name):
    module = build_datamodule(name, **SMALL)
    assert module.name == name and module.features == 2 and module.image_shape is None
    module.setup()
    for data, size in ((module.train_data, 600), (module.val_data, 101), (module.test_data, 203)):
        assert data.shape == (size, 2) and data.dtype == torch.float32
        assert torch.isfinite(data).all()
    batch = next(iter(module.train_dataloader()))
    assert (
        isinstance(batch, torch.Tensor) and batch.shape == (64, 2) and batch.dtype == torch.float32
    )
    assert sum(len(b) for b in module.val_dataloader()) == 101
    assert sum(len(b) for b in module.test_dataloader()) == 203
    model_side, _ = module.preprocessing.inverse(module.train_data)
    torch.testing.assert_close(model_side.mean(0), torch.zeros(2), atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", GENERATED)
def test_same_seed_same_data_and_disjoint_splits(name):
    first, again, other = (build_datamodule(name, seed=seed, **SMALL) for seed in (3, 3, 4))
    for module in (first, again, other):
        module.setup()
    splits = (first.train_data, first.val_data, first.test_data)
    for a, b in zip(splits, (again.train_data, again.val_data, again.test_data), strict=True):
        assert torch.equal(a, b)
    assert not torch.equal(first.train_data, other.train_data)
    rows = [{tuple(row) for row in split.tolist()} for split in splits]
    assert not (rows[0] & rows[1] or rows[0] & rows[2] or rows[1] & rows[2])


def test_entropies_of_the_named_toys(default_splits):
    assert default_splits["checkerboard"].entropy == math.log(32)
    assert default_splits["moons"].entropy == pytest.approx(0.289, abs=0.01)
    assert default_splits["8gaussians"].entropy == pytest.approx(2.832, abs=0.01)
    assert default_splits["pinwheel"].entropy is None


# Bin widths near each data set's best: the histogram's NLL is then within ~0.2 of the truth.
HISTOGRAM_WIDTH = {"moons": 0.04, "siggraph": 0.04}


@pytest.mark.parametrize("name", [name for name in GENERATED if name != "pinwheel"])
def test_entropy_agrees_with_a_histogram_estimate(default_splits, name):
    module = default_splits[name]
    nll, standard_error = histogram_cross_entropy(
        module.train_data.double().numpy(),
        module.test_data.double().numpy(),
        HISTOGRAM_WIDTH.get(name, 0.16),
    )
    assert module.entropy - 3 * standard_error <= nll <= module.entropy + 0.25


def test_checkerboard_is_uniform_on_eight_squares_of_area_four():
    points = sample_checkerboard(40_000, np.random.RandomState(0))
    assert (np.abs(points) <= 4).all()
    squares = np.floor(points / 2).astype(int)
    assert ((squares[:, 0] + squares[:, 1]) % 2 == 0).all()
    _, counts = np.unique(squares, axis=0, return_counts=True)
    assert len(counts) == 8 and np.all(np.abs(counts / 5_000 - 1) < 0.06)


def test_8gaussians_entropy_matches_monte_carlo_of_the_exact_density():
    rng = np.random.RandomState(1)
    points = sample_8gaussians(200_000, rng)
    directions = np.array(
        [(1, 0), (-1, 0), (0, 1), (0, -1)] + [(a, b) for a in (1, -1) for b in (1, -1)]
    )
    centers = directions / np.linalg.norm(directions, axis=1, keepdims=True) * 4 / 1.414
    std = 0.5 / 1.414
    squared = ((points[:, None, :] - centers[None]) ** 2).sum(-1)
    log_components = -squared / (2 * std**2) - math.log(2 * math.pi * std**2) - math.log(8)
    log_density = np.logaddexp.reduce(log_components, axis=1)
    estimate, error = -log_density.mean(), log_density.std() / math.sqrt(len(points))
    assert estimate == pytest.approx(entropy_8gaussians(), abs=4 * error)


def test_grid_quadrature_is_exact_for_a_gaussian():
    std = 0.3
    density = grid_density(np.zeros((1, 2)), np.ones(1), gaussian_kernel(std), 9 * std, std / 2)
    assert density.sum() * (std / 2) ** 2 == pytest.approx(1.0, abs=1e-10)
    assert grid_entropy(density, std / 2) == pytest.approx(
        math.log(2 * math.pi * math.e * std**2), abs=1e-8
    )


def test_grid_quadrature_matches_a_radial_integral_for_a_ring():
    """A circle of radius R, uniform in angle, plus N(0, s^2 I) noise has the density
    exp(-(r - R)^2 / 2s^2) i0e(rR / s^2) / (2 pi s^2): its entropy is a 1-D integral."""
    radius, std = 1.5, 0.1

    def log_density(r):
        return (
            -((r - radius) ** 2) / (2 * std**2)
            + np.log(i0e(r * radius / std**2))
            - np.log(2 * np.pi * std**2)
        )

    def integrand(r):
        return -np.exp(log_density(r)) * log_density(r) * 2 * np.pi * r

    expected, _ = integrate.quad(
        integrand, max(0.0, radius - 12 * std), radius + 12 * std, limit=200
    )
    count = math.ceil(2 * math.pi * radius / (std / 2))
    angles = 2 * np.pi * np.arange(count) / count
    nodes = radius * np.stack([np.cos(angles), np.sin(angles)], axis=1)
    computed = mixture_entropy(
        nodes, np.full(count, 1 / count), gaussian_kernel(std), 9 * std, std / 2
    )
    assert computed == pytest.approx(expected, abs=1e-7)


def test_moons_noise_option():
    assert entropy_moons(0.1) > entropy_moons(0.05)
    assert entropy_moons(0.004) is None  # too fine for the quadrature grid
    module = build_datamodule("moons", noise=0.1, **SMALL)
    module.setup()
    assert module.entropy == entropy_moons(0.1)
    with pytest.raises(ValueError, match="noise must be positive"):
        build_datamodule("moons", noise=0.0)


@pytest.mark.parametrize("key", ["num_train", "num_val", "num_test"])
def test_sizes_must_be_positive(key):
    with pytest.raises(ValueError, match=key):
        build_datamodule("rings", **{key: 0})


def test_batch_size_larger_than_the_train_split_is_an_error():
    module = build_datamodule("rings", num_train=50, batch_size=64)
    with pytest.raises(ValueError, match="batch_size=64 exceeds the 50 training rows"):
        module.setup()
