"""Coupling bijectors: Real NVP (affine), NICE (additive) and spline couplings, one mechanism
generic in its elementwise transform.

A boolean ``mask`` splits the dimensions: masked ones (``mask[i] = True``) pass through
unchanged and condition an MLP that gives the parameters of an `ElementwiseTransform` of the
others. Both directions take one network pass, because the conditioning half is the same on
both sides.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from distill.flows.base import Bijector, check_context
from distill.flows.transforms import Affine, ElementwiseTransform, RationalQuadraticSpline, Shift


class ConditionerMLP(nn.Module):
    """Plain MLP ``(..., in) [+ (..., C) context] -> (..., out)``; last layer starts small."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        hidden_features: Sequence[int] = (64, 64),
        context_features: int | None = None,
        activation: type[nn.Module] = nn.ReLU,
    ):
        super().__init__()
        if not hidden_features or any(h < 1 for h in hidden_features):
            raise ValueError(f"hidden_features must be positive widths, got {hidden_features}")
        self.context_features = context_features
        widths = [in_features + (context_features or 0), *hidden_features]
        layers: list[nn.Module] = []
        for w_in, w_out in zip(widths[:-1], widths[1:], strict=True):
            layers += [nn.Linear(w_in, w_out), activation()]
        last = nn.Linear(widths[-1], out_features)
        with torch.no_grad():
            last.weight.mul_(1e-2)
            last.bias.zero_()
        self.net = nn.Sequential(*layers, last)

    def forward(self, inputs: Tensor, context: Tensor | None = None) -> Tensor:
        if self.context_features:
            check_context(context, self.context_features)
            batch_shape = torch.broadcast_shapes(inputs.shape[:-1], context.shape[:-1])
            inputs = inputs.expand(*batch_shape, inputs.shape[-1])
            context = context.expand(*batch_shape, context.shape[-1])
            inputs = torch.cat([inputs, context], dim=-1)
        return self.net(inputs)


class Coupling(Bijector):
    """Coupling layer, noise -> data: ``x_A = u_A``, ``x_B = f(u_B; theta(u_A))`` with
    A = ``mask``, B = ``~mask``, f an `ElementwiseTransform` and theta an MLP of the
    passed-through half (and the context). Both directions are one parallel pass.

    ``mask`` defaults to the first ``D // 2`` dimensions. The MLP's last layer starts near
    zero, and zero parameters are the identity of every transform, so a new layer is close to
    the identity.
    """

    def __init__(
        self,
        transform: ElementwiseTransform,
        features: int,
        mask: Sequence[bool] | Tensor | None = None,
        hidden_features: Sequence[int] = (64, 64),
        context_features: int | None = None,
        activation: type[nn.Module] = nn.ReLU,
    ):
        super().__init__()
        if features < 2:
            raise ValueError(f"a coupling layer needs features >= 2, got {features}")
        mask = torch.arange(features) < features // 2 if mask is None else torch.as_tensor(mask)
        mask = mask.bool()
        if mask.shape != (features,) or mask.all() or not mask.any():
            raise ValueError(
                f"mask must be {features} booleans with at least one True (passed through) and "
                f"one False (transformed), got {mask.tolist()}"
            )
        self.features = features
        self.transform = transform
        # Structure, rebuilt from the arguments: kept out of the state_dict.
        identity_index, transform_index = mask.nonzero().squeeze(-1), (~mask).nonzero().squeeze(-1)
        merge_index = torch.cat([identity_index, transform_index]).argsort()
        self.register_buffer("identity_index", identity_index, persistent=False)
        self.register_buffer("transform_index", transform_index, persistent=False)
        self.register_buffer("merge_index", merge_index, persistent=False)
        self.conditioner = ConditionerMLP(
            len(identity_index),
            transform.num_params * len(transform_index),
            hidden_features,
            context_features,
            activation,
        )

    def extra_repr(self) -> str:
        return f"transform={self.transform}"

    def params(self, passthrough: Tensor, context: Tensor | None = None) -> Tensor:
        """The transform's parameters ``(..., |B|, P)`` from the passed-through half
        ``(..., |A|)``; the MLP's outputs are laid out as P blocks of |B|."""
        outputs = self.conditioner(passthrough, context)
        return outputs.unflatten(-1, (self.transform.num_params, -1)).transpose(-1, -2)

    def _split(self, inputs: Tensor) -> tuple[Tensor, Tensor]:
        return inputs[..., self.identity_index], inputs[..., self.transform_index]

    def _merge(self, passthrough: Tensor, transformed: Tensor) -> Tensor:
        passthrough = passthrough.expand(*transformed.shape[:-1], passthrough.shape[-1])
        return torch.cat([passthrough, transformed], dim=-1)[..., self.merge_index]

    def forward(self, u: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Noise ``u`` (..., D) -> data ``x`` (..., D) and log|dx/du| (...)."""
        u_a, u_b = self._split(u)
        x_b, log_det = self.transform.forward(u_b, self.params(u_a, context))
        return self._merge(u_a, x_b), log_det.sum(-1)

    def inverse(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Data ``x`` (..., D) -> noise ``u`` (..., D) and log|du/dx| (...)."""
        x_a, x_b = self._split(x)
        u_b, log_det = self.transform.inverse(x_b, self.params(x_a, context))
        return self._merge(x_a, u_b), log_det.sum(-1)


class AffineCoupling(Coupling):
    """Real NVP coupling (Dinh et al., 2017): ``x_B = u_B * exp(s(u_A)) + t(u_A)`` (`Affine`),
    the log-scale s soft-clamped to ``(-log_scale_bound, log_scale_bound)``."""

    def __init__(
        self,
        features: int,
        mask: Sequence[bool] | Tensor | None = None,
        hidden_features: Sequence[int] = (64, 64),
        context_features: int | None = None,
        log_scale_bound: float = 3.0,
        activation: type[nn.Module] = nn.ReLU,
    ):
        transform = Affine(log_scale_bound)
        super().__init__(transform, features, mask, hidden_features, context_features, activation)


class AdditiveCoupling(Coupling):
    """NICE coupling (Dinh et al., 2015): ``x_B = u_B + t(u_A)`` (`Shift`); volume preserving,
    so the log-det is exactly zero in both directions."""

    def __init__(
        self,
        features: int,
        mask: Sequence[bool] | Tensor | None = None,
        hidden_features: Sequence[int] = (64, 64),
        context_features: int | None = None,
        activation: type[nn.Module] = nn.ReLU,
    ):
        super().__init__(Shift(), features, mask, hidden_features, context_features, activation)


class SplineCoupling(Coupling):
    """Rational-quadratic spline coupling (Durkan et al., 2019): ``x_B = spline(u_B; theta(u_A))``
    (`RationalQuadraticSpline`: ``bins`` bins on ``[-tail_bound, tail_bound]``, identity
    outside)."""

    def __init__(
        self,
        features: int,
        mask: Sequence[bool] | Tensor | None = None,
        hidden_features: Sequence[int] = (64, 64),
        context_features: int | None = None,
        bins: int = 8,
        tail_bound: float = 5.0,
        activation: type[nn.Module] = nn.ReLU,
    ):
        transform = RationalQuadraticSpline(bins, tail_bound)
        super().__init__(transform, features, mask, hidden_features, context_features, activation)
