"""The bijector interface and its two combinators, `Chain` and `Invert`.

Direction convention (TFP's, and the reference texts'): ``forward`` maps noise -> data
(sampling), ``inverse`` maps data -> noise (density evaluation). Both return the
transformed tensor together with log|det J| of *that* direction, per sample.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor, nn


class Bijector(nn.Module):
    """An invertible map of R^D with a tractable log-determinant.

    Subclasses implement ``forward(z, context=None) -> (x, log_det)`` (noise -> data) and
    ``inverse(x, context=None) -> (z, log_det)`` (data -> noise). Inputs have shape
    ``(..., D)`` with any number of leading batch dims; ``log_det`` is
    log|det d(out)/d(in)| with the batch shape ``(...)``. ``context`` is an optional
    ``(..., C)`` tensor for conditional bijectors; unconditional ones ignore it.
    """

    #: Dimension D of the space the bijector acts on, or None if it works for any D.
    features: int | None = None

    def forward(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        raise NotImplementedError

    def inverse(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        raise NotImplementedError


class Chain(Bijector):
    """Composition: ``forward`` applies ``bijectors`` in the given order (the first acts on
    the noise), ``inverse`` applies their inverses in reverse order; log-dets add up."""

    def __init__(self, bijectors: Iterable[Bijector]):
        super().__init__()
        self.bijectors = nn.ModuleList(bijectors)
        if len(self.bijectors) == 0:
            raise ValueError("Chain needs at least one bijector")
        self.features = next((b.features for b in self.bijectors if b.features is not None), None)

    def forward(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        total = 0.0  # a tensor of the batch shape after the first bijector (there is one)
        for bijector in self.bijectors:
            z, log_det = bijector(z, context)
            total = total + log_det
        return z, total

    def inverse(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        total = 0.0  # a tensor of the batch shape after the first bijector (there is one)
        for bijector in reversed(self.bijectors):
            x, log_det = bijector.inverse(x, context)
            total = total + log_det
        return x, total

    def forward_steps(self, z: Tensor, context: Tensor | None = None) -> list[Tensor]:
        """The noise and its image after each bijector: ``[z, b1(z), b2(b1(z)), ...]``,
        noise -> data (the "taffy" strip of a flow)."""
        steps = [z]
        for bijector in self.bijectors:
            z, _ = bijector(z, context)
            steps.append(z)
        return steps


class Invert(Bijector):
    """Swaps the directions of ``bijector``: forward is its inverse and vice versa (with the
    matching log-dets). ``Invert(maf_layer)`` is an IAF layer."""

    def __init__(self, bijector: Bijector):
        super().__init__()
        self.bijector = bijector
        self.features = bijector.features

    def forward(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return self.bijector.inverse(z, context)

    def inverse(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return self.bijector.forward(x, context)


def check_features(tensor: Tensor, features: int | None, name: str = "input") -> None:
    """Raise a clear error if the last dimension of ``tensor`` is not ``features``."""
    if features is not None and (tensor.dim() == 0 or tensor.shape[-1] != features):
        raise ValueError(
            f"{name} has shape {tuple(tensor.shape)} but this flow acts on {features}-dimensional "
            f"vectors: pass a tensor of shape (..., {features})"
        )


def check_context(context: Tensor | None, context_features: int | None) -> None:
    """Raise a clear error if a conditional network gets no context or one of the wrong width."""
    if not context_features:
        return
    if context is None or context.dim() == 0 or context.shape[-1] != context_features:
        got = "none" if context is None else f"shape {tuple(context.shape)}"
        raise ValueError(
            f"this flow was built with context_features={context_features} but got {got}: "
            f"pass context=<tensor of shape (..., {context_features})>"
        )


def soft_clamp(log_scale: Tensor, bound: float) -> Tensor:
    """Smoothly bound a log-scale to (-bound, bound): ``bound * tanh(log_scale / bound)``.

    Identity near zero (slope 1), so layers initialized at zero stay the identity, while a
    scale can never exceed exp(bound) per layer: this keeps a flow evaluated far from its data
    (a student's first samples) from returning log-densities of -1e6. Computed as
    ``bound * (2 sigmoid(2 x / bound) - 1)``, the same function, which is several times
    faster than ``tanh`` on CPU.
    """
    return bound * (2.0 * torch.sigmoid(log_scale * (2.0 / bound)) - 1.0)
