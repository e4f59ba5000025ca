"""Shared checks for the data tests."""

from __future__ import annotations

import math

import numpy as np


def histogram_cross_entropy(
    train: np.ndarray, test: np.ndarray, width: float
) -> tuple[float, float]:
    """Mean NLL (nats) of ``test`` (M, 2) under a histogram density of ``train`` (N, 2) with
    square bins of side ``width`` (mixed with 0.1% uniform so no test point gets zero), and its
    standard error. A proper density fitted on other data: by Gibbs' inequality its expected
    value is at least the true entropy."""
    low = np.minimum(train.min(0), test.min(0)) - width
    bins = np.ceil((np.maximum(train.max(0), test.max(0)) + width - low) / width).astype(int)
    extent = [(low[i], low[i] + bins[i] * width) for i in range(2)]
    counts, _, _ = np.histogram2d(train[:, 0], train[:, 1], bins=bins, range=extent)
    density = 0.999 * counts / (len(train) * width**2) + 0.001 / np.prod(bins * width)
    index = np.floor((test - low) / width).astype(int)
    nll = -np.log(density[index[:, 0], index[:, 1]])
    return float(nll.mean()), float(nll.std() / math.sqrt(len(nll)))
