"""Affine autoregressive bijectors: MAF and IAF layers, one piece of math used two ways.

Both compute ``x_i = u_i * exp(alpha_i) + mu_i`` (noise u -> data x). They differ only in
what the MADE conditioner reads: MAF reads the data, ``(mu, alpha)_i = f(x_<i)``, so
``inverse`` is one parallel pass and ``forward`` is sequential; IAF reads the noise,
``(mu, alpha)_i = f(u_<i)``, so ``forward`` is one parallel pass and ``inverse`` is
sequential. An IAF layer is the ``Invert`` of a MAF layer up to the sign convention of its
outputs (the tutorial's "MAF and IAF are the same bijector class").
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from distill.flows.base import Bijector, soft_clamp
from distill.flows.made import MADE


class AutoregressiveAffine(Bijector):
    """``x = u * exp(alpha) + mu``, ``(mu, alpha) = MADE(y)`` with ``y`` the data (MAF) or
    the noise (IAF); use `MaskedAutoregressiveAffine` or `InverseAutoregressiveAffine`.

    The log-scale is soft-clamped, ``alpha = bound * tanh(raw / bound)`` with
    ``bound = log_scale_bound`` (default 3: at most a factor e^3 ~ 20 per layer), and the
    MADE's last layer starts near zero, so a new layer is close to the identity.
    """

    conditioner_reads_data: bool

    def __init__(
        self,
        features: int,
        hidden_features: Sequence[int] = (64, 64),
        order: Sequence[int] | Tensor | None = None,
        context_features: int | None = None,
        log_scale_bound: float = 3.0,
        activation: type[nn.Module] = nn.ReLU,
    ):
        super().__init__()
        if log_scale_bound <= 0:
            raise ValueError(f"log_scale_bound must be positive, got {log_scale_bound}")
        self.features = features
        self.log_scale_bound = log_scale_bound
        self.conditioner = MADE(
            features,
            hidden_features,
            out_multiplier=2,
            order=order,
            context_features=context_features,
            activation=activation,
        )

    def affine_params(self, conditioner_input: Tensor, context: Tensor | None = None):
        """``(mu, alpha)``, each ``(..., D)``, from the conditioner's input (x for MAF, u for
        IAF): the per-dimension shift and log-scale of ``x = u * exp(alpha) + mu``."""
        shift, raw_log_scale = (
            self.conditioner(conditioner_input, context)
            .unflatten(-1, (2, self.features))
            .unbind(-2)
        )
        return shift, soft_clamp(raw_log_scale, self.log_scale_bound)

    def forward(self, u: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Noise ``u`` (..., D) -> data ``x`` (..., D) and log|dx/du| (...)."""
        if self.conditioner_reads_data:
            x, log_scale = self._solve(u, context, _to_data)
        else:
            shift, log_scale = self.affine_params(u, context)
            x = _to_data(u, shift, log_scale)
        return x, log_scale.sum(-1)

    def inverse(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Data ``x`` (..., D) -> noise ``u`` (..., D) and log|du/dx| (...)."""
        if self.conditioner_reads_data:
            shift, log_scale = self.affine_params(x, context)
            u = _to_noise(x, shift, log_scale)
        else:
            u, log_scale = self._solve(x, context, _to_noise)
        return u, -log_scale.sum(-1)

    def _solve(self, given: Tensor, context: Tensor | None, transform) -> tuple[Tensor, Tensor]:
        """The sequential direction: ``y`` with ``y = transform(given, *params(y))``, solved one
        dimension at a time in rank order (`MADE.solve`); the log-scale at the solution."""

        def step(given_i: Tensor, params_i: Tensor) -> Tensor:
            shift, raw_log_scale = params_i.unbind(-1)
            return transform(given_i, shift, soft_clamp(raw_log_scale, self.log_scale_bound))

        solution, params = self.conditioner.solve(given, step, context)
        return solution, soft_clamp(params[..., 1, :], self.log_scale_bound)


def _to_data(u: Tensor, shift: Tensor, log_scale: Tensor) -> Tensor:
    return torch.addcmul(shift, u, log_scale.exp())


def _to_noise(x: Tensor, shift: Tensor, log_scale: Tensor) -> Tensor:
    return (x - shift) * torch.exp(-log_scale)


class MaskedAutoregressiveAffine(AutoregressiveAffine):
    """MAF layer (Papamakarios et al., 2017): ``x_i = u_i * exp(alpha_i(x_<i)) + mu_i(x_<i)``.

    Fast direction: ``inverse`` (data -> noise, density evaluation), one MADE pass.
    Slow direction: ``forward`` (sampling), D sequential MADE passes.
    """

    conditioner_reads_data = True


class InverseAutoregressiveAffine(AutoregressiveAffine):
    """IAF layer (Kingma et al., 2016): ``x_i = u_i * exp(alpha_i(u_<i)) + mu_i(u_<i)``.

    Fast direction: ``forward`` (noise -> data, sampling with its log-det), one MADE pass.
    Slow direction: ``inverse`` (density of external data), D sequential MADE passes.
    """

    conditioner_reads_data = False
