"""sklearn's 8 x 8 handwritten digits as a 64-D density estimation problem.

Data space is the dequantized pixel space: each pixel value v in {0, ..., 16} becomes
``v + u``, ``u ~ U(0, 1)``, so the data live in [0, 17]^64 and a density there is a lower
bound on the discrete pixels' likelihood. Likelihoods are reported in bits/dim of that space:
``nll / (64 ln 2)``; independent per-pixel histograms score about 2.4 bits/dim.
"""

from __future__ import annotations

from typing import Any

import torch
from sklearn.datasets import load_digits
from torch import Tensor

from distill.data.datamodule import Rows, SplitDataModule, split_rng

NUM_LEVELS = 17  # pixel values 0..16


class Dequantized(Rows):
    """Integer-valued rows (N, D); every fetched batch is ``values + U(0, 1)^D`` with fresh
    noise at every draw (from torch's global generator)."""

    def transform(self, batch: Tensor) -> Tensor:
        return batch + torch.rand(batch.shape, dtype=batch.dtype)


class DigitsDataModule(SplitDataModule):
    """The 1797 digits of ``sklearn.datasets.load_digits`` (shipped with sklearn), split into
    disjoint train/val/test rows by ``seed``; 64-D, ``image_shape = (8, 8)``.

    ``val_data`` and ``test_data`` carry fixed dequantization noise (drawn from ``seed``);
    the train loader draws fresh noise at every epoch around ``train_pixels`` (the integer
    training pixels), and ``train_data`` is one fixed draw (used to fit the preprocessing).
    Preprocessing: logit with margin ``logit_alpha`` on [0, 17], then standardization.
    """

    name = "digits"
    image_shape = (8, 8)
    bits_per_dim = True

    def __init__(self, logit_alpha: float = 0.05, test_fraction: float = 0.2, **splits: Any):
        super().__init__(64, test_fraction=test_fraction, **splits)
        self.logit_alpha = logit_alpha
        self.train_pixels: Tensor | None = None

    @property
    def preprocessing_config(self) -> dict:
        return {
            "features": self.features,
            "logit_upper": float(NUM_LEVELS),
            "logit_alpha": self.logit_alpha,
        }

    def _rows(self) -> Tensor:
        return torch.as_tensor(load_digits().data, dtype=torch.float32)

    def _splits(self) -> tuple[Tensor, Tensor, Tensor]:
        splits = super()._splits()  # integer pixels
        self.train_pixels = splits[0]
        return tuple(
            split + torch.as_tensor(split_rng(self.seed, index).rand(*split.shape))
            for index, split in enumerate(splits)
        )

    def _train_dataset(self) -> Rows:
        return Dequantized(self.train_pixels)
