"""Builders of standard flows: stacks of layers with permutations between them."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from distill.flows.autoregressive import InverseAutoregressiveAffine, MaskedAutoregressiveAffine
from distill.flows.base import Bijector, Chain
from distill.flows.coupling import AdditiveCoupling, AffineCoupling
from distill.flows.distribution import Flow
from distill.flows.normalization import BatchNorm
from distill.flows.permutation import RandomPermute, Reverse

PERMUTATIONS = ("reverse", "random", "none")


def _permutation(kind: str, features: int, index: int) -> Bijector | None:
    if kind == "reverse":
        return Reverse(features)
    if kind == "random":
        return RandomPermute(features, seed=index)
    return None


def build_flow(
    make_layer: Callable[[int], Bijector],
    features: int,
    num_layers: int = 5,
    batch_norm: bool = False,
    permutation: str = "reverse",
) -> Flow:
    """``num_layers`` layers from ``make_layer(i)``, noise -> data, with an optional
    BatchNorm after each layer but the last and a permutation between consecutive layers.

    ``permutation``: "reverse", "random" (a fixed one per layer, seeded by its index) or
    "none" (all layers share one ordering, e.g. for the closed-form KL between AR flows).
    """
    if permutation not in PERMUTATIONS:
        raise ValueError(f"permutation must be one of {PERMUTATIONS}, got {permutation!r}")
    if num_layers < 1:
        raise ValueError(f"num_layers must be >= 1, got {num_layers}")
    if features < 1:
        raise ValueError(f"features must be >= 1, got {features}")
    bijectors: list[Bijector] = []
    for index in range(num_layers):
        if index > 0:
            if batch_norm:
                bijectors.append(BatchNorm(features))
            permute = _permutation(permutation, features, index)
            if permute is not None:
                bijectors.append(permute)
        bijectors.append(make_layer(index))
    return Flow(Chain(bijectors))


def build_maf(
    features: int,
    num_layers: int = 5,
    hidden_features: Sequence[int] = (64, 64),
    batch_norm: bool = False,
    permutation: str = "reverse",
    context_features: int | None = None,
    log_scale_bound: float = 3.0,
) -> Flow:
    """Masked autoregressive flow: fast density (one pass per layer), sampling D passes."""
    return build_flow(
        lambda _: MaskedAutoregressiveAffine(
            features,
            hidden_features,
            context_features=context_features,
            log_scale_bound=log_scale_bound,
        ),
        features,
        num_layers,
        batch_norm,
        permutation,
    )


def build_iaf(
    features: int,
    num_layers: int = 5,
    hidden_features: Sequence[int] = (64, 64),
    batch_norm: bool = False,
    permutation: str = "reverse",
    context_features: int | None = None,
    log_scale_bound: float = 3.0,
) -> Flow:
    """Inverse autoregressive flow: fast sampling with log-density (one pass per layer),
    density of external data D passes per layer."""
    return build_flow(
        lambda _: InverseAutoregressiveAffine(
            features,
            hidden_features,
            context_features=context_features,
            log_scale_bound=log_scale_bound,
        ),
        features,
        num_layers,
        batch_norm,
        permutation,
    )


def build_realnvp(
    features: int,
    num_layers: int = 5,
    hidden_features: Sequence[int] = (64, 64),
    batch_norm: bool = False,
    permutation: str = "reverse",
    context_features: int | None = None,
    log_scale_bound: float = 3.0,
) -> Flow:
    """Real NVP: affine couplings; both directions one pass per layer."""
    return build_flow(
        lambda _: AffineCoupling(
            features,
            hidden_features=hidden_features,
            context_features=context_features,
            log_scale_bound=log_scale_bound,
        ),
        features,
        num_layers,
        batch_norm,
        permutation,
    )


def build_nice(
    features: int,
    num_layers: int = 5,
    hidden_features: Sequence[int] = (64, 64),
    batch_norm: bool = False,
    permutation: str = "reverse",
    context_features: int | None = None,
) -> Flow:
    """NICE: additive couplings (volume preserving unless BatchNorm is added)."""
    return build_flow(
        lambda _: AdditiveCoupling(
            features, hidden_features=hidden_features, context_features=context_features
        ),
        features,
        num_layers,
        batch_norm,
        permutation,
    )
