"""Builders of standard flows: stacks of layers with permutations between them.

`build_flow` is the one builder of flows over vectors; `build_maf`, `build_iaf`,
`build_realnvp` and `build_nice` fix its ``layer`` and pass every other argument down.
`build_wavenet_flow` builds flows over sequences (`build_wavenet_maf`, `build_wavenet_iaf`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from distill.flows.autoregressive import (
    InverseAutoregressiveAffine,
    InverseAutoregressiveSpline,
    InverseAutoregressiveWaveNet,
    MaskedAutoregressiveAffine,
    MaskedAutoregressiveSpline,
    MaskedAutoregressiveWaveNet,
)
from distill.flows.base import Bijector, Chain
from distill.flows.coupling import AdditiveCoupling, AffineCoupling, SplineCoupling
from distill.flows.distribution import Flow, SequenceFlow
from distill.flows.normalization import BatchNorm
from distill.flows.permutation import RandomPermute, Reverse
from distill.flows.transforms import transform_settings, unread_transform_settings
from distill.flows.wavenet import WaveNet

PERMUTATIONS = ("reverse", "random", "none")
# layer -> transform -> class; the first transform of each layer is its default
LAYERS: dict[str, dict[str, type[Bijector]]] = {
    "maf": {"affine": MaskedAutoregressiveAffine, "spline": MaskedAutoregressiveSpline},
    "iaf": {"affine": InverseAutoregressiveAffine, "spline": InverseAutoregressiveSpline},
    "realnvp": {"affine": AffineCoupling, "spline": SplineCoupling},
    "nice": {"additive": AdditiveCoupling},
}


def _permutation(kind: str, features: int, index: int) -> Bijector | None:
    if kind == "reverse":
        return Reverse(features)
    if kind == "random":
        return RandomPermute(features, seed=index)
    return None


def build_flow(
    layer: str,
    features: int,
    num_layers: int = 5,
    hidden_features: Sequence[int] = (64, 64),
    batch_norm: bool = False,
    permutation: str = "reverse",
    context_features: int | None = None,
    transform: str | None = None,
    log_scale_bound: float | None = None,
    bins: int | None = None,
    tail_bound: float | None = None,
) -> Flow:
    """``num_layers`` layers of one kind, noise -> data, with an optional BatchNorm after each
    layer but the last and a permutation between consecutive layers.

    Args:
        layer: "maf", "iaf", "realnvp" or "nice" (`LAYERS`).
        features: D.
        num_layers: how many layers of that kind.
        hidden_features: hidden widths of each layer's conditioner (MADE or MLP).
        batch_norm: a flow BatchNorm between layers.
        permutation: "reverse", "random" (a fixed one per layer, seeded by its index) or
            "none" (all layers share one ordering, e.g. for the closed-form KL between AR
            flows).
        context_features: C, for a conditional flow q(x | c); None for an unconditional one.
        transform: the elementwise transform: "affine" (the default) or "spline" for MAF,
            IAF and Real NVP; NICE has "additive" only.
        log_scale_bound: the affine transform's bound on its log-scale (affine only; 3).
        bins, tail_bound: the spline's number of bins and the half-width of the interval it
            covers, identity outside (spline only; 8 and 5).

    A setting the transform does not read is refused (`transform_settings`), not dropped.
    """
    if layer not in LAYERS:
        raise ValueError(f"layer must be one of {tuple(LAYERS)}, got {layer!r}")
    transforms = LAYERS[layer]
    transform = next(iter(transforms)) if transform is None else transform
    if transform not in transforms:
        raise ValueError(
            f"transform must be one of {tuple(transforms)} for {layer}, got {transform!r}"
        )
    if permutation not in PERMUTATIONS:
        raise ValueError(f"permutation must be one of {PERMUTATIONS}, got {permutation!r}")
    if num_layers < 1:
        raise ValueError(f"num_layers must be >= 1, got {num_layers}")
    if features < 1:
        raise ValueError(f"features must be >= 1, got {features}")
    settings = transform_settings(transform, log_scale_bound, bins, tail_bound)
    bijectors: list[Bijector] = []
    for index in range(num_layers):
        if index > 0:
            if batch_norm:
                bijectors.append(BatchNorm(features))
            permute = _permutation(permutation, features, index)
            if permute is not None:
                bijectors.append(permute)
        bijectors.append(
            transforms[transform](
                features,
                hidden_features=hidden_features,
                context_features=context_features,
                **settings,
            )
        )
    return Flow(Chain(bijectors))


def build_maf(*args, **kwargs) -> Flow:
    """Masked autoregressive flow, ``build_flow("maf", ...)``: fast density (one pass per
    layer), sampling D sequential steps per layer; ``transform`` "affine" or "spline"."""
    return build_flow("maf", *args, **kwargs)


def build_iaf(*args, **kwargs) -> Flow:
    """Inverse autoregressive flow, ``build_flow("iaf", ...)``: fast sampling with
    log-density (one pass per layer), density of external data D sequential steps per layer;
    ``transform`` "affine" or "spline"."""
    return build_flow("iaf", *args, **kwargs)


def build_realnvp(*args, **kwargs) -> Flow:
    """Real NVP, ``build_flow("realnvp", ...)``: couplings, both directions one pass per layer;
    ``transform`` "affine" or "spline"."""
    return build_flow("realnvp", *args, **kwargs)


def build_nice(*args, **kwargs) -> Flow:
    """NICE, ``build_flow("nice", ...)``: additive couplings (volume preserving unless
    BatchNorm is added)."""
    return build_flow("nice", *args, **kwargs)


def build_wavenet_flow(
    layer: str,
    channels: int = 1,
    length: int = 2048,
    layers_per_flow: Sequence[int] = (10,),
    residual_channels: int = 32,
    skip_channels: int = 32,
    kernel_size: int = 2,
    dilation_cycle: int = 10,
    transform: str = "affine",
    log_scale_bound: float | None = None,
    bins: int | None = None,
    tail_bound: float | None = None,
    global_features: int | None = None,
    local_features: int | None = None,
    hop_length: int | None = None,
    context_hidden: int | None = None,
) -> SequenceFlow:
    """A stack of autoregressive flows over the time axis of ``(..., C, T)`` sequences, one
    `WaveNet` each, noise -> data.

    Args:
        layer: "maf" (a WaveNet teacher: parallel density, sequential sampling) or "iaf" (a
            Parallel WaveNet student: parallel sampling with its density).
        channels: C.
        length: T of the training crops, the default length of samples (any T works).
        layers_per_flow: one flow per entry, with that many dilated blocks (Parallel
            WaveNet's student: ``[10, 10, 10, 30]``).
        residual_channels, skip_channels, kernel_size, dilation_cycle: every WaveNet's shape.
        transform: "affine" (Gaussian steps) or "spline"; ``log_scale_bound`` (affine),
            ``bins`` and ``tail_bound`` (spline) as in `build_flow`.
        global_features: G of a global context ``(..., G)``, or
        local_features: L of a local context ``(..., L, T // hop_length)`` with ``hop_length``.
        context_hidden: width of each WaveNet's conditioning MLP (None: a linear map).

    All flows read the steps in time order: stacked affine flows keep Gaussian per-step
    conditionals, so the closed-form KL between a MAF teacher and an IAF student applies.
    """
    classes = {"maf": MaskedAutoregressiveWaveNet, "iaf": InverseAutoregressiveWaveNet}
    if layer not in classes:
        raise ValueError(f"layer must be one of {tuple(classes)}, got {layer!r}")
    if not layers_per_flow or any(n < 1 for n in layers_per_flow):
        raise ValueError(
            f"layers_per_flow must list at least one positive number of blocks, got "
            f"{list(layers_per_flow)}"
        )
    flows = [
        classes[layer](
            channels,
            transform=transform,
            log_scale_bound=log_scale_bound,
            bins=bins,
            tail_bound=tail_bound,
            num_layers=num_layers,
            residual_channels=residual_channels,
            skip_channels=skip_channels,
            kernel_size=kernel_size,
            dilation_cycle=dilation_cycle,
            global_features=global_features,
            local_features=local_features,
            hop_length=hop_length,
            context_hidden=context_hidden,
        )
        for num_layers in layers_per_flow
    ]
    return SequenceFlow(
        Chain(flows),
        channels,
        length,
        context_event_dims=2 if local_features else 1,
        hop_length=hop_length,
    )


def build_wavenet_maf(**kwargs) -> SequenceFlow:
    """WaveNet MAF over time, ``build_wavenet_flow("maf", ...)``: a sequence's density in one
    pass per flow, sampling T cached steps per flow."""
    return build_wavenet_flow("maf", **kwargs)


def build_wavenet_iaf(**kwargs) -> SequenceFlow:
    """WaveNet IAF over time, ``build_wavenet_flow("iaf", ...)``: a sequence and its density
    in one pass per flow."""
    return build_wavenet_flow("iaf", **kwargs)


def unread_settings(target: str, settings: Mapping[str, Any]) -> list[str]:
    """The keys of ``settings`` (the keyword arguments of the builder ``target``, e.g.
    ``"distill.flows.build_maf"``) that the built flow would not read: settings of another
    transform than its own, a WaveNet's ``context_hidden`` without a context and
    ``hop_length`` without a local one. The builders refuse them; checkpoints written before
    they did hold such keys, unread, and load without them (`distill.spec.without_unread`)."""
    name = target.rsplit(".build_", 1)[-1]
    layer = settings.get("layer") if name == "flow" else name.removeprefix("wavenet_")
    wavenet = name.startswith("wavenet_")
    if not wavenet and layer not in LAYERS:
        return []
    transform = settings.get("transform") or ("affine" if wavenet else next(iter(LAYERS[layer])))
    unread = unread_transform_settings(transform, settings)
    return unread + (WaveNet.unread_settings(settings) if wavenet else [])
