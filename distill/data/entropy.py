"""Differential entropies of 2-D toy densities by quadrature on a grid.

The toys with a known density are mixtures of a separable kernel placed along points, lines
or curves: ``p(x) = sum_m w_m k(x_1 - c_m1) k(x_2 - c_m2)`` (Gaussian noise around a curve is
the continuum limit, discretized by quadrature nodes ``c_m`` on the curve). On a uniform grid
the density is then one matrix product, and ``H = -integral p log p`` is a Riemann sum, which
for such smooth, fast-decaying integrands converges faster than any power of the spacing:
with a spacing of half the kernel's width the result is exact to about 1e-8 nats.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from scipy.special import ndtr

Kernel = Callable[[np.ndarray], np.ndarray]


def gaussian_kernel(std: float) -> Kernel:
    """The N(0, std^2) density, elementwise."""
    return lambda t: np.exp(-0.5 * (t / std) ** 2) / (std * np.sqrt(2 * np.pi))


def box_gaussian_kernel(width: float, std: float) -> Kernel:
    """The density of ``U(0, width) + N(0, std^2)``, elementwise."""
    return lambda t: (ndtr(t / std) - ndtr((t - width) / std)) / width


def grid_density(
    centers: np.ndarray, weights: np.ndarray, kernel: Kernel, reach: float, spacing: float
) -> np.ndarray:
    """``p(x) = sum_m weights[m] kernel(x_1 - centers[m, 0]) kernel(x_2 - centers[m, 1])`` on
    a grid of the given spacing covering the centres ``(M, 2)`` plus ``reach`` on each side
    (where the kernel has vanished). Returns the ``(n_1, n_2)`` array of density values."""
    low, high = centers.min(0) - reach, centers.max(0) + reach
    axes = [np.arange(low[i], high[i] + spacing, spacing) for i in range(2)]
    along_1 = kernel(axes[0][None, :] - centers[:, :1]) * weights[:, None]
    along_2 = kernel(axes[1][None, :] - centers[:, 1:])
    return along_1.T @ along_2


def grid_entropy(density: np.ndarray, spacing: float) -> float:
    """``-sum p log p * spacing^2`` (nats) for density values on a uniform 2-D grid."""
    positive = density[density > 0]
    return float(-(positive * np.log(positive)).sum() * spacing**2)


def mixture_entropy(
    centers: np.ndarray, weights: np.ndarray, kernel: Kernel, reach: float, spacing: float
) -> float:
    """Entropy (nats) of the separable-kernel mixture of `grid_density`."""
    density = grid_density(centers, weights, kernel, reach, spacing)
    return grid_entropy(density, spacing)
