"""`Flow`: a distribution over R^D defined by a base density and a bijector; `SequenceFlow`:
the same over sequences ``(..., C, T)`` of any length T."""

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

    #: Trailing dimensions of one sample: 1 for vectors ``(D,)``, 2 for sequences ``(C, T)``.
    event_dims = 1

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

    def noise(
        self,
        sample_shape: int | Sequence[int] = (),
        context: Tensor | None = None,
        length: int | None = None,
    ) -> Tensor:
        """Base draws u for ``sample_shape`` (an int N is ``(N,)``, as in ``torch.randn``) plus
        the context's batch shape: ``rsample`` is ``bijector.forward(noise(...))``."""
        if length is not None:
            raise ValueError("length is for sequence flows; this flow acts on vectors")
        shape = Size((sample_shape,) if isinstance(sample_shape, int) else sample_shape)
        if context is not None:
            shape = shape + context.shape[:-1]
        return self.base.rsample(shape)

    def rsample(
        self, sample_shape=(), context: Tensor | None = None, length: int | None = None
    ) -> Tensor:
        """Reparameterized samples ``sample_shape + context batch + event``, differentiable
        with respect to the parameters (and the context). ``length``: sequence flows only."""
        x, _ = self.bijector(self.noise(sample_shape, context, length), context)
        return x

    @torch.no_grad()
    def sample(
        self, sample_shape=(), context: Tensor | None = None, length: int | None = None
    ) -> Tensor:
        """Samples ``sample_shape + context batch + event``, without a graph."""
        return self.rsample(sample_shape, context, length)

    def sample_and_log_prob(
        self, sample_shape=(), context: Tensor | None = None, length: int | None = None
    ) -> tuple[Tensor, Tensor]:
        """Samples x and their log q(x | c) from forward passes only.

        Draws u, computes ``x, log|dx/du| = bijector.forward(u)`` and returns
        ``(x, log p(u) - log|dx/du|)``: the density of a flow's own samples comes from the
        cached noise, with no inverse pass (for an IAF, one parallel pass in all).
        Differentiable (reparameterized).
        """
        u = self.noise(sample_shape, context, length)
        x, log_det = self.bijector(u, context)
        return x, self.base.log_prob(u) - log_det


class SequenceNormal(nn.Module):
    """N(0, I) over sequences ``(..., C, T)`` of any length, on the module's device and dtype."""

    def __init__(self, channels: int):
        super().__init__()
        self.channels = channels
        self.register_buffer("_anchor", torch.zeros(()), persistent=False)

    def log_prob(self, z: Tensor) -> Tensor:
        """``(..., C, T) -> (...)``."""
        return -0.5 * z.square().sum((-2, -1)) - z.shape[-2:].numel() * _HALF_LOG_TWO_PI

    def rsample(self, shape: Size | tuple[int, ...]) -> Tensor:
        """Draws of the full ``shape`` (its last two dims ``(C, T)``)."""
        anchor = self._anchor
        return torch.randn(*shape, dtype=anchor.dtype, device=anchor.device)


class SequenceFlow(Flow):
    """A flow over sequences ``(..., C, T)`` whose bijector acts on any length T (a stack of
    WaveNet layers over time), optionally conditioned on a global context ``(..., G)`` or a
    local one ``(..., L, T // hop_length)``.

    Sampling draws ``length`` steps: by default ``length`` of the constructor (the training
    crops'), or, given a local context, its frames times ``hop_length``. ``log_prob`` of a
    sequence is the sum over its C * T values; divide by ``C * T`` for a per-step figure.
    """

    event_dims = 2

    def __init__(
        self,
        bijector: Bijector,
        channels: int,
        length: int,
        context_event_dims: int = 1,
        hop_length: int | None = None,
    ):
        super().__init__(bijector, base=SequenceNormal(channels))
        if length < 1:
            raise ValueError(f"length must be >= 1, got {length}")
        self.features = None
        self.channels = channels
        self.length = length
        self.context_event_dims = context_event_dims
        self.hop_length = hop_length

    @property
    def event_shape(self) -> tuple[int, int]:
        """``(C, T)`` of the default (training) length."""
        return (self.channels, self.length)

    def log_prob(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        """log q(x | context), ``(..., C, T) -> (...)``; one inverse (data -> noise) pass."""
        if x.dim() < 2 or x.shape[-2] != self.channels:
            raise ValueError(
                f"x has shape {tuple(x.shape)} but this flow acts on sequences of "
                f"{self.channels} channel(s): pass a tensor of shape (..., {self.channels}, T)"
            )
        return super().log_prob(x, context)

    def noise(
        self,
        sample_shape: int | Sequence[int] = (),
        context: Tensor | None = None,
        length: int | None = None,
    ) -> Tensor:
        shape = Size((sample_shape,) if isinstance(sample_shape, int) else sample_shape)
        if context is not None:
            shape = shape + context.shape[: -self.context_event_dims]
            if self.hop_length is not None:
                frames = context.shape[-1] * self.hop_length
                if length is not None and length != frames:
                    raise ValueError(
                        f"length={length} disagrees with the local context's "
                        f"{context.shape[-1]} frames of {self.hop_length} steps ({frames}): "
                        "leave length unset or pass a context of length // hop_length frames"
                    )
                length = frames
        length = self.length if length is None else length
        return self.base.rsample(shape + (self.channels, length))


def in_data_space(flow: Flow, preprocessing: Bijector | None) -> Flow:
    """The distribution of ``preprocessing.forward(x)``, ``x ~ flow``: a flow fitted in the
    preprocessed (model) space, seen in the data's own space (the preprocessing's log-det
    included in ``log_prob``; samples mapped to data space). Shares ``flow``'s modules; a
    `SequenceFlow` stays one."""
    if preprocessing is None:
        return flow
    bijector = Chain([flow.bijector, preprocessing])
    if isinstance(flow, SequenceFlow):
        data_flow = SequenceFlow(
            bijector, flow.channels, flow.length, flow.context_event_dims, flow.hop_length
        )
        data_flow.base = flow.base  # its noise on the flow's device, in its dtype
        return data_flow
    return Flow(bijector, base=flow.base)
