"""Elementwise transforms: the strictly increasing maps of R that flow layers apply to each
dimension, with parameters computed by a conditioner (MADE, a coupling MLP).

One interface: ``forward(u, params) -> (x, log|dx/du|)`` (noise -> data) and
``inverse(x, params) -> (u, log|du/dx|)`` (data -> noise), elementwise. The input has shape
``S`` and ``params`` has shape ``S + (num_params,)``: ``(..., D)`` with ``(..., D, P)`` for a
layer, ``(...)`` with ``(..., P)`` for one dimension (the sequential solve). ``params``
carries the full batch shape (the input's broadcast with a context's), as a conditioner's
output does; outputs and elementwise log-dets have that shape, and the caller sums the
log-dets over dimensions. Zero parameters are the identity map, so a conditioner whose last
layer starts near zero starts its layer near the identity.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from distill.flows.base import soft_clamp


class ElementwiseTransform:
    """A strictly increasing map of R per dimension, with ``num_params`` parameters each."""

    num_params: int

    def forward(self, u: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:
        """Noise ``u`` (S) -> data ``x`` (S) and the elementwise log|dx/du| (S)."""
        raise NotImplementedError

    def inverse(self, x: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:
        """Data ``x`` (S) -> noise ``u`` (S) and the elementwise log|du/dx| (S)."""
        raise NotImplementedError


@dataclass(frozen=True)
class Shift(ElementwiseTransform):
    """``x = u + mu`` (NICE): volume preserving, log-dets exactly zero. ``params[..., 0] = mu``."""

    num_params = 1

    def forward(self, u: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:
        x = u + params[..., 0]
        return x, torch.zeros_like(x)

    def inverse(self, x: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:
        u = x - params[..., 0]
        return u, torch.zeros_like(u)


@dataclass(frozen=True)
class Affine(ElementwiseTransform):
    """``x = u * exp(alpha) + mu`` with ``params[..., 0] = mu`` and ``params[..., 1]`` the raw
    log-scale, soft-clamped to ``alpha`` in ``(-log_scale_bound, log_scale_bound)``
    (`soft_clamp`; the default 3 allows at most a factor e^3 ~ 20 per layer)."""

    log_scale_bound: float = 3.0
    num_params = 2

    def __post_init__(self):
        if self.log_scale_bound <= 0:
            raise ValueError(f"log_scale_bound must be positive, got {self.log_scale_bound}")

    def shift_and_log_scale(self, params: Tensor) -> tuple[Tensor, Tensor]:
        """``(mu, alpha)``, each of shape ``params.shape[:-1]``."""
        shift, raw_log_scale = params.unbind(-1)
        return shift, soft_clamp(raw_log_scale, self.log_scale_bound)

    def forward(self, u: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:
        shift, log_scale = self.shift_and_log_scale(params)
        return torch.addcmul(shift, u, log_scale.exp()), log_scale

    def inverse(self, x: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:
        shift, log_scale = self.shift_and_log_scale(params)
        return (x - shift) * torch.exp(-log_scale), -log_scale


class _Bin(NamedTuple):
    """The bin of each point of a spline, every field of the batch shape."""

    u_left: Tensor  # knot at the bin's left end, input side
    x_left: Tensor  # knot at the bin's left end, output side
    width: Tensor
    height: Tensor
    slope: Tensor  # height / width
    d_left: Tensor  # derivative dx/du at the left knot
    d_right: Tensor
    curvature: Tensor  # d_left + d_right - 2 slope


@dataclass(frozen=True)
class RationalQuadraticSpline(ElementwiseTransform):
    """Monotonic rational-quadratic spline (Durkan et al., 2019, "Neural Spline Flows").

    On ``[-B, B]`` (``B = tail_bound``), ``K = bins`` bins between knots ``(u_k, x_k)``; on
    bin k, with width ``w_k``, height ``h_k``, slope ``s_k = h_k / w_k``, derivatives ``d_k``,
    ``d_k+1`` at its knots and ``xi = (u - u_k) / w_k`` in [0, 1]:
    ``x = x_k + h_k (s_k xi^2 + d_k xi (1 - xi)) / (s_k + (d_k+1 + d_k - 2 s_k) xi (1 - xi))``.
    Outside ``[-B, B]`` the identity (linear tails); the derivatives at ``+-B`` are fixed to 1,
    so the spline joins its tails with a continuous slope.

    ``params`` (..., 3K - 1): K raw widths, K raw heights, K - 1 raw interior derivatives.
    Widths and heights are a softmax, each bin at least ``min_bin_size`` of ``2B``;
    derivatives are ``min_derivative + softplus(raw + c)`` with c such that raw 0 gives
    derivative 1. So zero parameters give equal bins of slope 1 with derivatives 1: the
    identity. Both directions are closed form (the inverse solves a quadratic on its bin).

    ``tail_bound`` 5 by default: the layers of a flow act on values of roughly unit scale
    (standardized data, Gaussian noise), and ``[-5, 5]`` holds all but 6e-7 of a standard
    normal's mass and the range of a logit with margin 0.01 (+-4.6), while 8 bins on it are
    still 1.25 wide; zuko's default too.
    """

    bins: int = 8
    tail_bound: float = 5.0
    min_bin_size: float = 1e-3
    min_derivative: float = 1e-3

    def __post_init__(self):
        if self.bins < 2:
            raise ValueError(
                f"bins must be >= 2 (one bin with unit end derivatives is the identity), "
                f"got {self.bins}"
            )
        if self.tail_bound <= 0:
            raise ValueError(f"tail_bound must be positive, got {self.tail_bound}")
        if not 0 <= self.min_bin_size * self.bins < 1:
            raise ValueError(
                f"min_bin_size must be in [0, 1 / bins) = [0, {1 / self.bins:.3g}), "
                f"got {self.min_bin_size}"
            )
        if not 0 <= self.min_derivative < 1:
            raise ValueError(f"min_derivative must be in [0, 1), got {self.min_derivative}")

    @property
    def num_params(self) -> int:
        return 3 * self.bins - 1

    def forward(self, u: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:
        inside, u_in, bin_ = self._locate(u, params, by_output=False)
        xi = (u_in - bin_.u_left) / bin_.width
        xi_rest = xi * (1 - xi)
        denominator = bin_.slope + bin_.curvature * xi_rest
        rise = (bin_.slope * xi.square() + bin_.d_left * xi_rest) / denominator
        x = bin_.x_left + bin_.height * rise
        log_det = self._log_derivative(bin_, xi, xi_rest, denominator)
        return torch.where(inside, x, u), torch.where(inside, log_det, 0.0)

    def inverse(self, x: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:
        inside, x_in, bin_ = self._locate(x, params, by_output=True)
        # xi is the root in [0, 1] of a xi^2 + b xi + c = 0, in the form Durkan et al. use,
        # which stays accurate as c -> 0 (points near the bin's left knot).
        above = x_in - bin_.x_left
        a = bin_.height * (bin_.slope - bin_.d_left) + above * bin_.curvature
        b = bin_.height * bin_.d_left - above * bin_.curvature
        c = -bin_.slope * above
        discriminant = (b.square() - 4 * a * c).clamp(min=0)
        xi = 2 * c / (-b - discriminant.sqrt())
        xi_rest = xi * (1 - xi)
        denominator = bin_.slope + bin_.curvature * xi_rest
        u = bin_.u_left + xi * bin_.width
        log_det = -self._log_derivative(bin_, xi, xi_rest, denominator)
        return torch.where(inside, u, x), torch.where(inside, log_det, 0.0)

    @staticmethod
    def _log_derivative(bin_: _Bin, xi: Tensor, xi_rest: Tensor, denominator: Tensor) -> Tensor:
        """log dx/du at position ``xi`` of the bin (``xi_rest = xi (1 - xi)``)."""
        numerator = (
            bin_.d_right * xi.square() + 2 * bin_.slope * xi_rest + bin_.d_left * (1 - xi).square()
        )
        return torch.log(bin_.slope.square() * numerator / denominator.square())

    def _locate(self, inputs: Tensor, params: Tensor, by_output: bool) -> tuple:
        """``(inside, clamped, bin)``: which inputs lie in ``[-B, B]``, the inputs clamped
        there (so the unused spline branch of the tails stays finite, gradients included) and
        the `_Bin` of each input, found among the knots' x (``by_output``) or u."""
        bound, last = self.tail_bound, self.bins - 1
        knots, derivatives = self._interior(params)
        shape = torch.broadcast_shapes(inputs.shape, params.shape[:-1])
        inside = (inputs >= -bound) & (inputs <= bound)
        clamped = inputs.clamp(-bound, bound).expand(shape)
        # The bin is the number of interior knots at or below the point (right=True: a point
        # on a knot belongs to the bin that starts there); +B belongs to the last bin.
        search_knots = knots[int(by_output)].movedim(0, -1).contiguous()
        index = torch.searchsorted(search_knots, clamped.contiguous()[..., None], right=True)
        index = index[..., 0]
        # the bin's two ends among the interior knots; the first and last bins end at +-B
        ends = torch.stack([index - 1, index]).clamp(0, last - 1)
        first, final = index == 0, index == last
        (u_left, u_right), (x_left, x_right) = knots.gather(1, ends.expand(2, *ends.shape))
        u_left, x_left = (torch.where(first, -bound, left) for left in (u_left, x_left))
        u_right, x_right = (torch.where(final, bound, right) for right in (u_right, x_right))
        d_left, d_right = derivatives.gather(0, ends)
        d_left, d_right = torch.where(first, 1.0, d_left), torch.where(final, 1.0, d_right)
        width, height = u_right - u_left, x_right - x_left
        slope = height / width
        curvature = d_left + d_right - 2 * slope
        return (
            inside,
            clamped,
            _Bin(u_left, x_left, width, height, slope, d_left, d_right, curvature),
        )

    def knots(self, params: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """The spline's knots from its parameters ``(..., 3K - 1)``: their u-coordinates, their
        x-coordinates (both from exactly -B to exactly B) and the derivatives dx/du there (1
        at both ends), each ``(..., K + 1)``."""
        knots, derivatives = self._interior(params)
        u_knots, x_knots = F.pad(knots.movedim(1, -1), (1, 0), value=-self.tail_bound)
        ends = (F.pad(t, (0, 1), value=self.tail_bound) for t in (u_knots, x_knots))
        return *ends, F.pad(derivatives.movedim(0, -1), (1, 1), value=1.0)

    def _interior(self, params: Tensor) -> tuple[Tensor, Tensor]:
        """The K - 1 interior knots ``(2, K - 1, ...)`` (u then x) and their derivatives
        ``(K - 1, ...)`` from the parameters ``(..., 3K - 1)``. The knot axis is put in front:
        softmax, cumsum and gather then run along long contiguous rows (the batch and the
        dimensions), where PyTorch's CPU kernels along a last axis of K = 8 are many times
        slower. The ends, +-B with derivative 1, are not stored: `_locate` sets them."""
        bins, bound, minimum = self.bins, self.tail_bound, self.min_bin_size
        raw_sizes, raw_derivatives = params.movedim(-1, 0).split([2 * bins, bins - 1])
        raw_sizes = raw_sizes.unflatten(0, (2, bins))  # widths, heights
        fractions = torch.softmax(raw_sizes, dim=1)[:, :-1]
        # knot j (1 to K - 1) = -B + 2B (j min + (1 - K min) (fraction_1 + ... + fraction_j))
        shape = (bins - 1,) + (1,) * (fractions.dim() - 2)
        steps = torch.arange(1, bins, dtype=fractions.dtype, device=fractions.device).view(shape)
        offsets = 2 * bound * minimum * steps - bound
        scale = 2 * bound * (1 - minimum * bins)
        knots = torch.add(offsets, torch.cumsum(fractions, dim=1), alpha=scale)
        offset = math.log(math.expm1(1 - self.min_derivative))  # softplus(offset) + min = 1
        derivatives = self.min_derivative + F.softplus(raw_derivatives + offset)
        return knots, derivatives


def _defaults(transform: type, names: tuple[str, ...]) -> dict[str, float | int]:
    return {field.name: field.default for field in fields(transform) if field.name in names}


#: The settings each named transform takes from a builder, with the transform's defaults.
TRANSFORM_SETTINGS: dict[str, dict[str, float | int]] = {
    "affine": _defaults(Affine, ("log_scale_bound",)),
    "spline": _defaults(RationalQuadraticSpline, ("bins", "tail_bound")),
    "additive": {},
}


def unread_transform_settings(name: str, settings: Mapping[str, Any]) -> list[str]:
    """The transform settings among ``settings`` (``log_scale_bound``, ``bins``,
    ``tail_bound``; None counts as unset) that the transform called ``name`` does not read."""
    read = TRANSFORM_SETTINGS.get(name, {})
    return [
        key
        for key in ("log_scale_bound", "bins", "tail_bound")
        if settings.get(key) is not None and key not in read
    ]


def transform_settings(
    name: str,
    log_scale_bound: float | None = None,
    bins: int | None = None,
    tail_bound: float | None = None,
) -> dict[str, float | int]:
    """The settings of the transform called ``name`` (`TRANSFORM_SETTINGS`): each given value,
    the default for each one left None. A value the transform does not read is refused by
    name, never dropped (``log_scale_bound`` with a spline, ``bins`` with an affine)."""
    if name not in TRANSFORM_SETTINGS:
        raise ValueError(f"transform must be one of {tuple(TRANSFORM_SETTINGS)}, got {name!r}")
    read = TRANSFORM_SETTINGS[name]
    given = {"log_scale_bound": log_scale_bound, "bins": bins, "tail_bound": tail_bound}
    if unread := unread_transform_settings(name, given):
        takes = ", ".join(read) or "no settings"
        settings = ", ".join(f"{key}={given[key]}" for key in unread)
        nulls = " ".join(f"{key}=null" for key in unread)
        raise ValueError(
            f"{settings} is not read by the {name} transform (it takes {takes}): remove it (in "
            f"a config: {nulls} under the flow) or choose the transform that reads it"
        )
    return {key: default if given[key] is None else given[key] for key, default in read.items()}


def elementwise_transform(name: str, **settings: float | int | None) -> ElementwiseTransform:
    """The elementwise transform called ``name``: "affine" (`Affine`, bounded by
    ``log_scale_bound``) or "spline" (`RationalQuadraticSpline` of ``bins`` bins on
    ``[-tail_bound, tail_bound]``), with `transform_settings`' defaults and refusals."""
    classes = {"affine": Affine, "spline": RationalQuadraticSpline}
    if name not in classes:
        raise ValueError(f"transform must be 'affine' or 'spline', got {name!r}")
    return classes[name](**transform_settings(name, **settings))
