"""`Flow`: a distribution over R^D defined by a base density and a bijector."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Size, Tensor, nn

from distill.flows.base import Bijector, Chain, check_features

_HALF_LOG_TWO_PI = 0.5 * math.log(2 * math.pi)


class StandardNormal(nn.Module):
    """N(0, I) over R^D that lives on the module's device and dtype (follows ``.to()``)."""

    def __init__(self, features: int):
        super().__init__()
        self.features = features
        self.register_buffer("_anchor", torch.zeros(()), persistent=False)

    def log_prob(self, z: Tensor) -> Tensor:
        """``(..., D) -> (...)``."""
        return -0.5 * z.square().sum(-1) - self.features * _HALF_LOG_TWO_PI

    def rsample(self, sample_shape: Size | tuple[int, ...] = ()) -> Tensor:
        """``sample_shape + (D,)`` standard normal draws."""
        anchor = self._anchor
        return torch.randn(*sample_shape, self.features, dtype=anchor.dtype, device=anchor.device)


class Flow(nn.Module):
    """The distribution of ``x = bijector.forward(u)``, ``u ~ base``, optionally given a
    context c: log q(x | c) = log p(u) + log|det du/dx|, ``u = bijector.inverse(x, c)``.

    ``base`` is any module with ``log_prob(z)`` and ``rsample(sample_shape)``; it defaults to
    a standard Normal on the module's device and dtype.

    Shapes: data ``(..., D)``; context ``(..., C)`` broadcastable against the data's batch
    shape; sampling methods take ``sample_shape`` as a tuple or an int (``sample(1000)`` is
    ``sample((1000,))``) and return ``sample_shape + context.shape[:-1] + (D,)``.
    """

    def __init__(self, bijector: Bijector, base: nn.Module | None = None):
        super().__init__()
        if base is None:
            if bijector.features is None:
                raise ValueError("pass base=..., the bijector does not know its dimension")
            base = StandardNormal(bijector.features)
        self.bijector = bijector
        self.base = base
        self.features = getattr(base, "features", bijector.features)

    def log_prob(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        """log q(x | context), ``(..., D) -> (...)``; one inverse (data -> noise) pass."""
        check_features(x, self.features, "x")
        u, log_det = self.bijector.inverse(x, context)
        return self.base.log_prob(u) + log_det

    def _noise(self, sample_shape: int | Sequence[int], context: Tensor | None) -> Tensor:
        """Base draws of ``sample_shape`` (an int N is ``(N,)``, as in ``torch.randn``) plus the
        context's batch shape."""
        shape = Size((sample_shape,) if isinstance(sample_shape, int) else sample_shape)
        if context is not None:
            shape = shape + context.shape[:-1]
        return self.base.rsample(shape)

    def rsample(self, sample_shape=(), context: Tensor | None = None) -> Tensor:
        """Reparameterized samples ``sample_shape + context batch + (D,)``, differentiable
        with respect to the parameters (and the context)."""
        x, _ = self.bijector(self._noise(sample_shape, context), context)
        return x

    @torch.no_grad()
    def sample(self, sample_shape=(), context: Tensor | None = None) -> Tensor:
        """Samples ``sample_shape + context batch + (D,)``, without a graph."""
        return self.rsample(sample_shape, context)

    def sample_and_log_prob(
        self, sample_shape=(), context: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """Samples x and their log q(x | c) from forward passes only.

        Draws u, computes ``x, log|dx/du| = bijector.forward(u)`` and returns
        ``(x, log p(u) - log|dx/du|)``: the density of a flow's own samples comes from the
        cached noise, with no inverse pass (for an IAF, one parallel pass in all).
        Differentiable (reparameterized).
        """
        u = self._noise(sample_shape, context)
        x, log_det = self.bijector(u, context)
        return x, self.base.log_prob(u) - log_det


def in_data_space(flow: Flow, preprocessing: Bijector | None) -> Flow:
    """The distribution of ``preprocessing.forward(x)``, ``x ~ flow``: a flow fitted in the
    preprocessed (model) space, seen in the data's own space (the preprocessing's log-det
    included in ``log_prob``; samples mapped to data space). Shares ``flow``'s modules."""
    if preprocessing is None:
        return flow
    return Flow(Chain([flow.bijector, preprocessing]), base=flow.base)
