"""MADE: a masked MLP whose outputs for dimension i see only inputs that come before i."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from distill.flows.base import check_context


class MaskedLinear(nn.Linear):
    """``nn.Linear`` whose weight is multiplied by a fixed 0/1 ``mask`` (out, in) buffer.

    The mask is structure, rebuilt from the constructor's arguments, so it is kept out of the
    state_dict: a checkpoint holds only learned values."""

    def __init__(self, mask: Tensor, bias: bool = True):
        out_features, in_features = mask.shape
        super().__init__(in_features, out_features, bias=bias)
        self.register_buffer("mask", mask.to(self.weight.dtype), persistent=False)

    def forward(self, inputs: Tensor) -> Tensor:
        return F.linear(inputs, self.weight * self.mask, self.bias)


class MADE(nn.Module):
    """Masked autoencoder for distribution estimation (Germain et al., 2015).

    Maps ``(..., D)`` inputs (and an optional ``(..., C)`` context) to ``(..., m * D)``
    outputs laid out as ``m`` blocks of ``D``: ``out.unflatten(-1, (m, D))[..., k, i]`` is the
    k-th parameter of dimension i, and depends only on the inputs j with
    ``order[j] < order[i]``, and on the whole context (which every hidden unit sees).

    Args:
        features: D.
        hidden_features: widths of the hidden layers.
        out_multiplier: m, the number of outputs per input dimension.
        order: ``order[i]`` is the rank of input i in the autoregressive ordering
            (a permutation of ``range(D)``); default ``arange(D)``.
        context_features: C, or None for an unconditional network.
        activation: hidden nonlinearity (a module class).

    The masks are built once, as buffers. The last layer starts at a small scale, so a
    flow built on MADE starts near the identity.
    """

    def __init__(
        self,
        features: int,
        hidden_features: Sequence[int] = (64, 64),
        out_multiplier: int = 2,
        order: Sequence[int] | Tensor | None = None,
        context_features: int | None = None,
        activation: type[nn.Module] = nn.ReLU,
    ):
        super().__init__()
        if features < 1:
            raise ValueError(f"MADE needs features >= 1, got {features}")
        if not hidden_features or any(h < 1 for h in hidden_features):
            raise ValueError(f"hidden_features must be positive widths, got {hidden_features}")
        order = torch.arange(features) if order is None else torch.as_tensor(order).long()
        if sorted(order.tolist()) != list(range(features)):
            raise ValueError(
                f"order must be a permutation of range({features}), got {order.tolist()}"
            )
        self.features = features
        self.out_multiplier = out_multiplier
        self.context_features = context_features
        self.register_buffer("order", order, persistent=False)

        # Hidden degrees cycle through 0..D-2: a unit of degree k may see inputs of rank <= k.
        # With a context they start at -1: units that see the context but no input, without
        # which the outputs of rank 0 (which see no unit of degree >= 0) would ignore it.
        lowest = -1 if context_features else 0
        num_degrees = max(features - 1 - lowest, 1)
        # Units are sorted by degree, so the units that matter for the outputs of rank k (those
        # of degree < k, in every layer) are a prefix of each layer: see `solve`.
        degrees = [order]
        for width in hidden_features:
            degrees.append((torch.arange(width) % num_degrees + lowest).sort().values)
        # units_below[l][k]: how many units of hidden layer l have degree < k.
        self.units_below = [
            torch.searchsorted(d, torch.arange(features)).tolist() for d in degrees[1:]
        ]
        self.register_buffer("rank_to_dim", order.argsort(), persistent=False)
        layers: list[nn.Module] = []
        for d_in, d_out in zip(degrees[:-1], degrees[1:], strict=True):
            layers += [MaskedLinear(d_out[:, None] >= d_in[None, :]), activation()]
        output_degrees = order.repeat(out_multiplier)
        self.output_layer = MaskedLinear(output_degrees[:, None] > degrees[-1][None, :])
        self.hidden = nn.Sequential(*layers)
        self.context_layer = (
            nn.Linear(context_features, hidden_features[0], bias=False)
            if context_features
            else None
        )
        with torch.no_grad():
            self.output_layer.weight.mul_(1e-2)
            self.output_layer.bias.zero_()

    def forward(self, inputs: Tensor, context: Tensor | None = None) -> Tensor:
        """``(..., D)`` inputs [+ ``(..., C)`` context] -> ``(..., m * D)`` parameters."""
        first, *rest = self.hidden
        hidden = first(inputs)
        if self.context_layer is not None:
            check_context(context, self.context_features)
            hidden = hidden + self.context_layer(context)
        for layer in rest:
            hidden = layer(hidden)
        return self.output_layer(hidden)

    def solve(
        self,
        given: Tensor,
        step: Callable[[Tensor, Tensor], Tensor],
        context: Tensor | None = None,
    ) -> tuple[Tensor, Tensor]:
        """The sequential direction of an autoregressive map built on this network.

        Finds ``y`` (..., D) with ``y_i = step(given_i, params_i(y))`` for every dimension i,
        where ``params_i`` (..., m) are the outputs of dimension i (which read only the
        ``y_j`` of lower rank). Dimensions are solved in rank order, one pass per dimension,
        and pass k evaluates only what the outputs of rank k depend on: the units of degree
        < k (a prefix of each layer, as units are sorted by degree), the inputs of rank < k,
        and the m output rows of that dimension. That is about a third of the work of D full
        passes for wide layers. Returns ``y`` and the exact parameters ``(..., m, D)`` at ``y``.
        Differentiable.
        """
        features, multiplier = self.features, self.out_multiplier
        linears = self.hidden[0::2]
        activations = self.hidden[1::2]
        weights = [layer.weight * layer.mask for layer in linears]
        weights[0] = weights[0][:, self.rank_to_dim]  # input columns in rank order
        last = self.output_layer
        # (rank, m, units) and (rank, m): the output rows of the dimension of each rank
        out_weight = (last.weight * last.mask).view(multiplier, features, -1)[:, self.rank_to_dim]
        out_weight = out_weight.transpose(0, 1)
        out_bias = last.bias.view(multiplier, features)[:, self.rank_to_dim].T
        context_term = None
        if self.context_layer is not None:
            check_context(context, self.context_features)
            context_term = self.context_layer(context)

        given_by_rank = given[..., self.rank_to_dim]
        solved: list[Tensor] = []
        params: list[Tensor] = []
        for rank in range(features):
            hidden = (
                torch.stack(solved, dim=-1) if solved else given.new_zeros(*given.shape[:-1], 0)
            )
            for index, (linear, weight, activation) in enumerate(
                zip(linears, weights, activations, strict=True)
            ):
                units = self.units_below[index][rank]
                inputs = hidden.shape[-1]
                hidden = F.linear(hidden, weight[:units, :inputs], linear.bias[:units])
                if index == 0 and context_term is not None:
                    hidden = hidden + context_term[..., :units]
                hidden = activation(hidden)
            param = F.linear(hidden, out_weight[rank, :, : hidden.shape[-1]], out_bias[rank])
            solved.append(step(given_by_rank[..., rank], param))
            params.append(param)
        dims = self.order  # rank of each dimension: undo the rank ordering
        return torch.stack(solved, dim=-1)[..., dims], torch.stack(params, dim=-1)[..., dims]
