"""The figures of a stage, drawn from its flows after training, on held-out data: what the
entry points save as PNGs, log to the loggers and put in the report. Modules draw nothing.

2-D data: ``samples`` (data | each flow's samples) and ``densities`` (each flow's density, one
colour scale), titled with the held-out NLL; for a student also ``taffy`` (its samples after
each layer). Image data (``image_shape``): a grid of samples per flow. Sequences (audio):
``spectrograms``, data | teacher | student (`sequence_figures`).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from matplotlib.figure import Figure
from torch import Tensor

from distill import plots, spectral
from distill.flows import Bijector, Chain, Flow, Permute


def _title(name: str, nll: float | None) -> str:
    return name if nll is None else f"{name} (held-out NLL {nll:.3f})"


@torch.no_grad()
def flow_figures(
    flows: Mapping[str, Flow],
    data: Tensor,
    test_nll: Mapping[str, float] | None = None,
    image_shape: tuple[int, int] | None = None,
    num_samples: int = 4000,
) -> dict[str, Figure]:
    """Samples and densities of the data-space ``flows`` (name -> flow, e.g. teacher and
    student) next to ``data`` ``(N, D)``; ``test_nll`` (name -> nats) titles the panels.
    Flows of other dimensions than 2 without an ``image_shape`` get no figure."""
    test_nll = test_nll or {}
    samples = {name: flow.sample((num_samples,)) for name, flow in flows.items()}
    if image_shape is not None:
        return {
            f"{name}_samples": plots.image_grid(
                points, image_shape, _title(name, test_nll.get(name))
            )
            for name, points in samples.items()
        }
    if data.shape[-1] != 2:
        return {}
    bounds = plots.plot_bounds(data)
    titled = {_title(name, test_nll.get(name)): points for name, points in samples.items()}
    reference = next(iter(samples.values()))
    return {
        "samples": plots.scatter_panels({"data": data, **titled}, bounds),
        "densities": plots.density_panels(
            {_title(name, test_nll.get(name)): flow.log_prob for name, flow in flows.items()},
            bounds,
            reference=reference,
        ),
    }


@torch.no_grad()
def taffy(flow: Flow, preprocessing: Bijector | None, num_samples: int = 2000) -> Figure:
    """A 2-D model-space ``flow``'s samples after each of its layers, noise -> data (steps that
    only permute the coordinates are skipped), the last one mapped to data space."""
    noise = flow.base.rsample((num_samples,))
    layers = list(flow.bijector.bijectors) if isinstance(flow.bijector, Chain) else [flow.bijector]
    steps = Chain(layers).forward_steps(noise)
    kept = [(0, steps[0])] + [
        (index, step)
        for index, (layer, step) in enumerate(zip(layers, steps[1:], strict=True), start=1)
        if not isinstance(layer, Permute)
    ]
    titles = ["noise"] + [f"layer {index}" for index, _ in kept[1:]]
    points = [step for _, step in kept]
    if preprocessing is not None:
        points.append(preprocessing(points[-1])[0])
        titles.append("data space")
    return plots.taffy_strip(points, titles)


def sequence_figures(
    samples: Mapping[str, Tensor],
    sample_rate: int,
    test_nll_per_step: Mapping[str, float] | None = None,
    rows: int = 4,
    n_fft: int = 512,
    hop_length: int = 64,
) -> dict[str, Figure]:
    """``spectrograms``: ``rows`` examples of each role's sequences ``(N, C, T)`` (the first
    channel), data | teacher | student, titled with the held-out NLL per step."""
    test_nll_per_step = test_nll_per_step or {}
    magnitudes = {
        role: spectral.stft_magnitude(x[:rows, 0], n_fft, hop_length) for role, x in samples.items()
    }
    titles = {
        role: role
        if role not in test_nll_per_step
        else f"{role} (NLL {test_nll_per_step[role]:.3f}/step)"
        for role in samples
    }
    return {"spectrograms": plots.spectrogram_grid(magnitudes, sample_rate, hop_length, titles)}
