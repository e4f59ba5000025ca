"""Permutations of the dimensions: volume preserving, log-det exactly zero."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from distill.flows.base import Bijector


class Permute(Bijector):
    """``forward(z)[..., i] = z[..., permutation[i]]``; ``inverse`` undoes it.

    Between autoregressive layers this lets later layers model the dependencies that an
    earlier layer's ordering could not (the tutorial's p(x1 | x2))."""

    def __init__(self, permutation: Sequence[int] | Tensor):
        super().__init__()
        permutation = torch.as_tensor(permutation).long()
        if sorted(permutation.tolist()) != list(range(len(permutation))):
            raise ValueError(
                f"not a permutation of range({len(permutation)}): {permutation.tolist()}"
            )
        self.features = len(permutation)
        self.register_buffer("permutation", permutation, persistent=False)
        self.register_buffer("inverse_permutation", permutation.argsort(), persistent=False)

    def forward(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return z.index_select(-1, self.permutation), z.new_zeros(z.shape[:-1])

    def inverse(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return x.index_select(-1, self.inverse_permutation), x.new_zeros(x.shape[:-1])


class Reverse(Permute):
    """Reverses the order of the D dimensions (its own inverse)."""

    def __init__(self, features: int):
        super().__init__(torch.arange(features - 1, -1, -1))

    def forward(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return z.flip(-1), z.new_zeros(z.shape[:-1])

    def inverse(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return x.flip(-1), x.new_zeros(x.shape[:-1])


class RandomPermute(Permute):
    """A fixed random permutation, drawn once from ``seed`` (reproducible, device-free)."""

    def __init__(self, features: int, seed: int = 0):
        generator = torch.Generator().manual_seed(seed)
        super().__init__(torch.randperm(features, generator=generator))
