"""Fixed preprocessing bijectors, fitted once to the training data.

Direction, as for every bijector here: ``forward`` maps model space -> data space,
``inverse`` maps data -> model space. A flow composed as ``Chain([flow_bijector,
preprocessing])`` therefore has its ``log_prob`` and its samples in the data's own space: the
preprocessing log-det is part of every reported likelihood.

Nothing here is trained: fitted statistics are buffers (saved in a state_dict), and the
structure is rebuilt from plain values by `build_preprocessing`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from distill.flows.base import Bijector, Chain


class Standardize(Bijector):
    """Per-dimension affine ``x = z * std + mean`` (forward, model -> data); the inverse
    ``z = (x - mean) / std`` standardizes data. Fast both ways; log-det ``sum(log std)``
    forward. ``mean`` and ``std`` are ``(D,)`` buffers: the identity until `fit_`."""

    def __init__(self, features: int):
        super().__init__()
        self.features = features
        self.register_buffer("mean", torch.zeros(features))
        self.register_buffer("std", torch.ones(features))

    @torch.no_grad()
    def fit_(self, x: Tensor) -> Standardize:
        """Set ``mean`` and ``std`` to the statistics of ``x`` (N, D), in place; returns self.

        A constant column has no density (its entropy is minus infinity), so it is an error.
        """
        x = x.double()
        std = x.std(0)
        constant = torch.nonzero(std == 0).flatten().tolist()
        if constant:
            raise ValueError(
                f"column(s) {constant[:5]} of the training data are constant: a constant "
                "column has no density, drop it before training"
            )
        self.mean.copy_(x.mean(0))
        self.std.copy_(std)
        return self

    def forward(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Model space ``z`` (..., D) -> data space (..., D)."""
        log_det = torch.log(self.std).sum().expand(z.shape[:-1])
        return z * self.std + self.mean, log_det

    def inverse(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Data space ``x`` (..., D) -> model space (..., D)."""
        log_det = -torch.log(self.std).sum().expand(x.shape[:-1])
        return (x - self.mean) / self.std, log_det


class Logit(Bijector):
    """Maps data in ``[0, upper]`` to R (inverse) and back (forward), elementwise:

    inverse ``y = logit(alpha + (1 - 2 alpha) x / upper)`` (data -> model, as in Real NVP),
    forward ``x = upper (sigmoid(y) - alpha) / (1 - 2 alpha)``. The margin ``alpha`` keeps
    the logit finite at the ends of the data's range; forward maps R onto the slightly wider
    ``(-upper alpha, upper (1 - alpha)) / (1 - 2 alpha)``, where the data-space density
    lives. Fast both ways; acts on any D; no statistics.
    """

    def __init__(self, upper: float, alpha: float = 0.05):
        super().__init__()
        if not 0.0 < alpha < 0.5:
            raise ValueError(f"logit alpha must be in (0, 0.5), got {alpha}")
        if upper <= 0:
            raise ValueError(f"logit upper bound must be positive, got {upper}")
        self.upper = float(upper)
        self.alpha = float(alpha)
        # log of d(unit interval)/dx = (1 - 2 alpha) / upper, per dimension.
        self._log_slope = math.log1p(-2 * self.alpha) - math.log(self.upper)

    def forward(self, y: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Model space ``y`` (..., D) -> data space (..., D)."""
        x = (torch.sigmoid(y) - self.alpha) / (1 - 2 * self.alpha) * self.upper
        # d sigmoid / dy = sigmoid(y) sigmoid(-y) = exp(-softplus(-y) - softplus(y)).
        log_det = -(F.softplus(-y) + F.softplus(y)) - self._log_slope
        return x, log_det.sum(-1)

    def inverse(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Data space ``x`` (..., D) in ``[0, upper]`` -> model space (..., D)."""
        p = self.alpha + (1 - 2 * self.alpha) * x / self.upper
        log_p, log_1mp = torch.log(p), torch.log1p(-p)
        log_det = self._log_slope - log_p - log_1mp
        return log_p - log_1mp, log_det.sum(-1)


def build_preprocessing(
    features: int,
    logit_upper: float | None = None,
    logit_alpha: float = 0.05,
    data: Tensor | None = None,
) -> Chain:
    """The preprocessing bijector: ``Chain([Standardize(features)])``, or
    ``Chain([Standardize(features), Logit(logit_upper, logit_alpha)])`` for data in
    ``[0, logit_upper]`` (forward: model -> standardized logit space -> data).

    With ``data`` (N, D) in data space, the standardization is fitted to it (after the logit,
    if any). Without, it is the identity: the structure rebuilt from these plain values,
    ready for ``load_state_dict`` of a fitted one.
    """
    standardize = Standardize(features)
    bijectors: list[Bijector] = [standardize]
    if logit_upper is not None:
        bijectors.append(Logit(logit_upper, logit_alpha))
    if data is not None:
        rest = data.double()
        for bijector in reversed(bijectors[1:]):
            rest, _ = bijector.inverse(rest)
        standardize.fit_(rest)
    return Chain(bijectors)
