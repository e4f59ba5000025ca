"""The 2-D toy densities of the flow literature, with their true entropies where known.

Samplers follow FFJORD's ``lib/toy_data.py`` (Grathwohl et al., 2019) and sklearn's
``make_moons``; each takes a ``numpy.random.RandomState`` and returns ``(n, 2)`` float64
points. Entropies (nats) are those of the limiting distribution (for the toys whose samplers
place points on a regular grid of angles, of the uniform angle), computed by grid quadrature
(`distill.data.entropy`) to about 1e-8, cached.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any, NamedTuple

import numpy as np
import torch
from sklearn.datasets import make_circles, make_moons
from sklearn.utils import shuffle

from distill.data.datamodule import GeneratedDataModule
from distill.data.entropy import box_gaussian_kernel, gaussian_kernel, mixture_entropy

# 8gaussians: FFJORD divides by 1.414, not sqrt(2); kept for fidelity.
_EIGHT_GAUSSIANS_SCALE = 4.0 / 1.414
_EIGHT_GAUSSIANS_STD = 0.5 / 1.414
_DIAGONAL = 1 / math.sqrt(2)
_EIGHT_DIRECTIONS = np.array(
    [(1, 0), (-1, 0), (0, 1), (0, -1)]
    + [(sx * _DIAGONAL, sy * _DIAGONAL) for sx, sy in ((1, 1), (1, -1), (-1, 1), (-1, -1))]
)
_RINGS_RADII = (3.0, 2.25, 1.5, 0.75)
_RINGS_STD = 0.08
_CIRCLES_RADII = (3.0, 1.5)
_CIRCLES_STD = 0.24
_SPIRAL_TURNS = 3 * math.pi  # FFJORD's 540 degrees
_SPIRAL_BOX = 0.5 / 3
_SPIRAL_STD = 0.1
_MOONS_MIN_NOISE_FOR_ENTROPY = 0.005


def sample_8gaussians(num_samples: int, rng: np.random.RandomState) -> np.ndarray:
    """Equal mixture of 8 isotropic Gaussians, std 0.5 / 1.414, centred at radius 4 / 1.414
    on the axes and diagonals."""
    centers = _EIGHT_DIRECTIONS[rng.randint(8, size=num_samples)] * _EIGHT_GAUSSIANS_SCALE
    return centers + rng.randn(num_samples, 2) * _EIGHT_GAUSSIANS_STD


def sample_checkerboard(num_samples: int, rng: np.random.RandomState) -> np.ndarray:
    """Uniform on the 8 black squares (side 2) of a 4 x 4 checkerboard covering [-4, 4]^2:
    ``x1 ~ U(-2, 2)``, ``x2 ~ U(0, 1) - 2 B + (floor(x1) mod 2)`` with B a fair bit, times 2."""
    x1 = rng.rand(num_samples) * 4 - 2
    x2 = rng.rand(num_samples) - rng.randint(0, 2, num_samples) * 2 + np.floor(x1) % 2
    return np.stack([x1, x2], axis=1) * 2


def in_checkerboard(points: np.ndarray) -> np.ndarray:
    """Inside one of the 8 black squares of `sample_checkerboard`: ``(N, 2)`` -> ``(N,)`` bool
    (in units of a square, both coordinates in [-2, 2) with an even sum of their floors)."""
    cells = np.floor(points / 2)
    inside_board = np.all((cells >= -2) & (cells <= 1), axis=1)
    return inside_board & (cells.sum(axis=1) % 2 == 0)


def sample_pinwheel(num_samples: int, rng: np.random.RandomState) -> np.ndarray:
    """5 curved arms: ``(a, b) ~ N((1, 0), diag(0.3^2, 0.1^2))`` rotated by
    ``-(2 pi k / 5 + 0.25 exp(a))`` for arm k, times 2. FFJORD draws ``n // 5`` per arm;
    here arm ``i % 5`` for point i, so exactly n points."""
    features = rng.randn(num_samples, 2) * np.array([0.3, 0.1]) + np.array([1.0, 0.0])
    arms = np.arange(num_samples) % 5
    angles = 2 * np.pi * arms / 5 + 0.25 * np.exp(features[:, 0])
    cos, sin = np.cos(angles), np.sin(angles)
    rotated = np.stack(
        [features[:, 0] * cos + features[:, 1] * sin, -features[:, 0] * sin + features[:, 1] * cos],
        axis=1,
    )
    return 2 * rng.permutation(rotated)


def _spiral_centers(turns: np.ndarray) -> np.ndarray:
    """The spiral ``(-n cos n, n sin n) / 3`` at parameters ``n`` (K,) -> (K, 2)."""
    return np.stack([-np.cos(turns) * turns, np.sin(turns) * turns], axis=1) / 3


def sample_2spirals(num_samples: int, rng: np.random.RandomState) -> np.ndarray:
    """Two opposite spirals: ``n = 3 pi sqrt(U)``, the point ``(-n cos n, n sin n) / 3 +
    U(0, 1/6)^2``, the second spiral its negative, plus N(0, 0.1^2) noise. FFJORD draws
    ``n // 2`` per spiral; here ``n // 2`` and the rest, so exactly n points."""
    first = num_samples // 2
    turns = np.sqrt(rng.rand(num_samples)) * _SPIRAL_TURNS
    points = _spiral_centers(turns) + rng.rand(num_samples, 2) * _SPIRAL_BOX
    points[first:] *= -1
    return rng.permutation(points + rng.randn(num_samples, 2) * _SPIRAL_STD)


def sample_rings(num_samples: int, rng: np.random.RandomState) -> np.ndarray:
    """4 concentric circles of radii 3, 2.25, 1.5, 0.75 (a quarter of the points each, the
    innermost takes the remainder), evenly spaced angles, plus N(0, 0.08^2) noise."""
    quarter = num_samples // 4
    counts = (quarter, quarter, quarter, num_samples - 3 * quarter)
    circles = []
    for radius, count in zip(_RINGS_RADII, counts, strict=True):
        angles = np.linspace(0, 2 * np.pi, count, endpoint=False)
        circles.append(radius * np.stack([np.cos(angles), np.sin(angles)], axis=1))
    points = shuffle(np.concatenate(circles), random_state=rng)
    return points + rng.normal(scale=_RINGS_STD, size=points.shape)


def sample_circles(num_samples: int, rng: np.random.RandomState) -> np.ndarray:
    """sklearn ``make_circles(factor=0.5, noise=0.08)`` times 3: circles of radii 3 and 1.5
    (half the points each), evenly spaced angles, plus N(0, 0.24^2) noise."""
    points, _ = make_circles(num_samples, factor=0.5, noise=0.08, random_state=rng)
    return points * 3


def sample_moons(num_samples: int, rng: np.random.RandomState, noise: float) -> np.ndarray:
    """sklearn ``make_moons``: half the points evenly spaced on the upper half of the unit
    circle, half on the lower half of the unit circle centred at (1, 0.5), plus N(0, noise^2)."""
    points, _ = make_moons(num_samples, noise=noise, random_state=rng)
    return points


def _circle_nodes(radius: float, std: float) -> np.ndarray:
    """Evenly spaced points on a circle, well under the noise std apart (K, 2); the
    periodic trapezoid rule on them is spectrally accurate."""
    count = math.ceil(2 * math.pi * radius / (std / 2))
    angles = 2 * np.pi * np.arange(count) / count
    return radius * np.stack([np.cos(angles), np.sin(angles)], axis=1)


def _circles_entropy(radii: tuple[float, ...], std: float) -> float:
    """Equal mixture of circles of the given radii, uniform in angle, plus N(0, std^2 I)."""
    nodes = [_circle_nodes(radius, std) for radius in radii]
    weights = [np.full(len(n), 1 / (len(n) * len(radii))) for n in nodes]
    return mixture_entropy(
        np.concatenate(nodes), np.concatenate(weights), gaussian_kernel(std), 9 * std, std / 2
    )


@functools.cache
def entropy_8gaussians() -> float:
    """About 2.8319 nats (log 8 + log(2 pi e std^2) minus a little for the overlaps)."""
    centers = _EIGHT_DIRECTIONS * _EIGHT_GAUSSIANS_SCALE
    std = _EIGHT_GAUSSIANS_STD
    return mixture_entropy(centers, np.full(8, 1 / 8), gaussian_kernel(std), 9 * std, std / 2)


def entropy_checkerboard() -> float:
    """Uniform on 8 squares of area 4: exactly log 32."""
    return math.log(32)


@functools.cache
def entropy_2spirals() -> float:
    """About 2.6455 nats: the spiral point ``m(n)`` with ``n`` of density ``2n / (3 pi)^2`` on
    [0, 3 pi] (Gauss-Legendre nodes), convolved with the separable U(0, 1/6) + N(0, 0.1^2)
    kernel; the second spiral is ``-m(n) - 1/6`` with the same kernel."""
    nodes, weights = np.polynomial.legendre.leggauss(500)
    turns = (nodes + 1) * _SPIRAL_TURNS / 2
    weights = weights * _SPIRAL_TURNS / 2 * 2 * turns / _SPIRAL_TURNS**2
    centers = _spiral_centers(turns)
    return mixture_entropy(
        np.concatenate([centers, -centers - _SPIRAL_BOX]),
        np.concatenate([weights, weights]) / 2,
        box_gaussian_kernel(_SPIRAL_BOX, _SPIRAL_STD),
        _SPIRAL_BOX + 9 * _SPIRAL_STD,
        _SPIRAL_STD / 2,
    )


@functools.cache
def entropy_rings() -> float:
    """About 2.6232 nats."""
    return _circles_entropy(_RINGS_RADII, _RINGS_STD)


@functools.cache
def entropy_circles() -> float:
    """About 3.2681 nats."""
    return _circles_entropy(_CIRCLES_RADII, _CIRCLES_STD)


@functools.cache
def entropy_moons(noise: float) -> float | None:
    """About 0.2892 nats for noise 0.05: each half circle, uniform in angle (Gauss-Legendre
    nodes, well under ``noise`` apart), convolved with N(0, noise^2 I); equal mixture.
    None below noise 0.005, where the grid (memory ~ 1 / noise^2) would exceed ~100 MB."""
    if noise < _MOONS_MIN_NOISE_FOR_ENTROPY:
        return None
    nodes, weights = np.polynomial.legendre.leggauss(max(64, math.ceil(2 * math.pi / noise)))
    angles = (nodes + 1) * math.pi / 2
    outer = np.stack([np.cos(angles), np.sin(angles)], axis=1)
    inner = np.array([1.0, 0.5]) - outer
    return mixture_entropy(
        np.concatenate([outer, inner]),
        np.concatenate([weights, weights]) / 4,
        gaussian_kernel(noise),
        9 * noise,
        noise / 2,
    )


class Toy(NamedTuple):
    """A toy's sampler ``(num_samples, rng) -> (num_samples, 2)``, its entropy function
    (None when the density is not tractable) and its support test ``(N, 2) -> (N,)`` bool
    (None when the support is unbounded)."""

    sample: Callable[[int, np.random.RandomState], np.ndarray]
    entropy: Callable[[], float] | None
    contains: Callable[[np.ndarray], np.ndarray] | None = None


#: The FFJORD toys by name. pinwheel's density needs the preimages of a map that is not
#: injective in the tails: its entropy is not computed.
TOYS = {
    "8gaussians": Toy(sample_8gaussians, entropy_8gaussians),
    "checkerboard": Toy(sample_checkerboard, entropy_checkerboard, in_checkerboard),
    "pinwheel": Toy(sample_pinwheel, None),
    "2spirals": Toy(sample_2spirals, entropy_2spirals),
    "rings": Toy(sample_rings, entropy_rings),
    "circles": Toy(sample_circles, entropy_circles),
}


class ToyDataModule(GeneratedDataModule):
    """One of the FFJORD toys (`TOYS`): 2-D, each split an independent draw of its size
    (``splits``: the sizes, seed and loader options of `GeneratedDataModule`)."""

    def __init__(
        self,
        name: str,
        **splits: Any,
    ):
        if name not in TOYS:
            raise ValueError(f"unknown toy data set {name!r}: choose one of {sorted(TOYS)}")
        super().__init__(2, **splits)
        self.name = name

    def _sample(self, num_samples: int, rng: np.random.RandomState) -> np.ndarray:
        return TOYS[self.name].sample(num_samples, rng)

    def _true_entropy(self) -> float | None:
        entropy = TOYS[self.name].entropy
        return None if entropy is None else entropy()

    def in_support(self, points: torch.Tensor) -> torch.Tensor | None:
        contains = TOYS[self.name].contains
        if contains is None:
            return None
        return torch.as_tensor(contains(points.detach().cpu().double().numpy()), dtype=torch.bool)


class MoonsDataModule(GeneratedDataModule):
    """Two interleaved half circles (sklearn ``make_moons``) with Gaussian ``noise``; 2-D."""

    name = "moons"

    def __init__(
        self,
        noise: float = 0.05,
        **splits: Any,
    ):
        if noise <= 0:
            raise ValueError(f"moons noise must be positive (its entropy is finite), got {noise}")
        super().__init__(2, **splits)
        self.noise = noise

    def _sample(self, num_samples: int, rng: np.random.RandomState) -> np.ndarray:
        return sample_moons(num_samples, rng, self.noise)

    def _true_entropy(self) -> float | None:
        return entropy_moons(self.noise)
