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

    #: The conditioner interface: inputs are ``(..., D)``, one trailing event dimension.
    event_dims = 1

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

    def params(self, inputs: Tensor, context: Tensor | None = None) -> Tensor:
        """The conditioner interface: ``(..., D)`` inputs [+ context] -> ``(..., D, m)``, the
        m parameters of each dimension (`forward`'s blocks, transposed)."""
        outputs = self(inputs, context)
        return outputs.unflatten(-1, (self.out_multiplier, self.features)).transpose(-1, -2)

    def solve(
        self,
        given: Tensor,
        step: Callable[[Tensor, Tensor], Tensor],
        context: Tensor | None = None,
    ) -> Tensor:
        """The sequential direction of an autoregressive map built on this network.

        Finds ``y`` (..., D) with ``y_i = step(given_i, params_i(y))`` for every dimension i,
        where ``params_i`` (..., m) are the outputs of dimension i (which read only the
        ``y_j`` of lower rank), and returns it. ``step`` is called once per dimension, in rank
        order, with ``given_i`` (...) and ``params_i``; whatever else the caller needs from a
        step (a log-det) it keeps itself.

        Dimensions are solved in rank order, and every hidden unit is computed exactly once:
        a unit of degree d reads only inputs of rank <= d, so it is final as soon as the
        dimension of rank d is solved. Step k computes the units of degree k - 1 of each layer
        (a contiguous block, as units are sorted by degree) and the m output rows of the
        dimension of rank k. In all: one MADE pass plus D small output products, instead of
        D full passes. Differentiable.
        """
        linears = self.hidden[0::2]
        activations = self.hidden[1::2]
        weights = [layer.weight * layer.mask for layer in linears]
        weights[0] = weights[0][:, self.rank_to_dim]  # input columns in rank order
        last = self.output_layer
        # (rank, m, units) and (rank, m): the output rows of the dimension of each rank
        out_weight = last.weight * last.mask
        out_weight = out_weight.view(self.out_multiplier, self.features, -1)[:, self.rank_to_dim]
        out_weight = out_weight.transpose(0, 1)
        out_bias = last.bias.view(self.out_multiplier, self.features)[:, self.rank_to_dim].T
        context_term = None
        if self.context_layer is not None:
            check_context(context, self.context_features)
            context_term = self.context_layer(context)

        batch_shape = given.shape[:-1]
        if context_term is not None:
            batch_shape = torch.broadcast_shapes(batch_shape, context_term.shape[:-1])
        in_place = not (
            torch.is_grad_enabled()
            and (
                given.requires_grad
                or (context is not None and context.requires_grad)
                or any(p.requires_grad for p in self.parameters())
            )
        )
        given_by_rank = given.index_select(-1, self.rank_to_dim)
        # the solved dimensions (in rank order), then the final units of each layer
        inputs = _Columns(batch_shape, self.features, given, in_place)
        units = [_Columns(batch_shape, w.shape[0], given, in_place) for w in weights]
        for rank in range(self.features):
            source = inputs.filled
            for index, (linear, weight, activation) in enumerate(
                zip(linears, weights, activations, strict=True)
            ):
                start = self.units_below[index][rank - 1] if rank else 0
                end = self.units_below[index][rank]
                if end > start:
                    block = F.linear(
                        source, weight[start:end, : source.shape[-1]], linear.bias[start:end]
                    )
                    if index == 0 and context_term is not None:
                        block = block + context_term[..., start:end]
                    units[index].append(activation(block))
                source = units[index].filled
            param = F.linear(source, out_weight[rank, :, : source.shape[-1]], out_bias[rank])
            inputs.append(step(given_by_rank[..., rank], param)[..., None])
        # self.order is the rank of each dimension: back to the dimensions' order
        return inputs.filled.index_select(-1, self.order)


class _Columns:
    """A ``batch_shape + (width,)`` tensor filled block by block, left to right.

    Without autograd the blocks are written in place into one buffer; with autograd each
    block is concatenated instead (an in-place write would invalidate the tensors that earlier
    products saved for the backward pass)."""

    def __init__(self, batch_shape: torch.Size, width: int, like: Tensor, in_place: bool):
        self.in_place = in_place
        self.batch_shape = batch_shape
        self.buffer = like.new_empty(*batch_shape, width if in_place else 0)
        self.size = 0

    def append(self, block: Tensor) -> None:
        block = block.expand(*self.batch_shape, block.shape[-1])
        if self.in_place:
            self.buffer[..., self.size : self.size + block.shape[-1]] = block
        else:
            self.buffer = torch.cat([self.buffer, block], dim=-1)
        self.size += block.shape[-1]

    @property
    def filled(self) -> Tensor:
        """The columns filled so far, ``batch_shape + (size,)``."""
        return self.buffer[..., : self.size]
