"""Fixed preprocessing bijectors: the map from a flow's model space to the data's own space.

Direction, as for every bijector here: ``forward`` maps model space -> data space,
``inverse`` maps data -> model space. A flow composed as ``in_data_space(flow, preprocessing)``
has its ``log_prob`` and its samples in the data's own space: the preprocessing log-det is part
of every reported likelihood.

Nothing here is trained: fitted statistics are buffers (saved in a state_dict), the structure is
rebuilt from plain values by `build_preprocessing`, and `distill.data` fits the statistics.
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
    forward. ``mean`` and ``std`` are ``(D,)`` buffers: the identity until fitted
    (`distill.data.fit_preprocessing`)."""

    def __init__(self, features: int):
        super().__init__()
        self.features = features
        self.register_buffer("mean", torch.zeros(features))
        self.register_buffer("std", torch.ones(features))

    def forward(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Model space ``z`` (..., D) -> data space (..., D)."""
        log_det = torch.log(self.std).sum().expand(z.shape[:-1])
        return z * self.std + self.mean, log_det

    def inverse(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Data space ``x`` (..., D) -> model space (..., D)."""
        log_det = -torch.log(self.std).sum().expand(x.shape[:-1])
        return (x - self.mean) / self.std, log_det


class StandardizeSequence(Bijector):
    """Per-channel affine ``x = z * std + mean`` over sequences ``(..., C, T)`` (forward, model
    -> data): one ``mean`` and ``std`` per channel, ``(C, 1)`` buffers shared by every step, the
    identity until fitted (`distill.data.fit_preprocessing`). Log-det forward
    ``T * sum(log std)`` for T steps."""

    def __init__(self, channels: int):
        super().__init__()
        self.channels = channels
        self.register_buffer("mean", torch.zeros(channels, 1))
        self.register_buffer("std", torch.ones(channels, 1))

    def forward(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Model space ``z`` (..., C, T) -> data space (..., C, T)."""
        log_det = (torch.log(self.std).sum() * z.shape[-1]).expand(z.shape[:-2])
        return z * self.std + self.mean, log_det

    def inverse(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Data space ``x`` (..., C, T) -> model space (..., C, T)."""
        log_det = (-torch.log(self.std).sum() * x.shape[-1]).expand(x.shape[:-2])
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
    features: int | None = None,
    logit_upper: float | None = None,
    logit_alpha: float = 0.05,
    channels: int | None = None,
) -> Chain:
    """The structure of a preprocessing bijector, from plain values (statistics unfitted):
    ``Chain([Standardize(features)])``, or ``Chain([Standardize(features), Logit(logit_upper,
    logit_alpha)])`` for data in ``[0, logit_upper]`` (forward: model -> standardized logit
    space -> data); for sequences of ``channels`` channels (instead of ``features``),
    ``Chain([StandardizeSequence(channels)])``. ``load_state_dict`` of a fitted one restores
    its statistics."""
    if (features is None) == (channels is None):
        raise ValueError(
            "build_preprocessing needs features (vectors) or channels (sequences), not both"
        )
    if channels is not None:
        if logit_upper is not None:
            raise ValueError("sequences have no logit preprocessing: remove logit_upper")
        return Chain([StandardizeSequence(channels)])
    bijectors: list[Bijector] = [Standardize(features)]
    if logit_upper is not None:
        bijectors.append(Logit(logit_upper, logit_alpha))
    return Chain(bijectors)
