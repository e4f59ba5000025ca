"""Figures (matplotlib, Agg): sample scatters, log-density heatmaps, image grids and the
"taffy" strip of a flow's layers. Each function returns a Figure; `save_figure` writes it."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from torch import Tensor  # noqa: E402


def _numpy(points: Tensor) -> np.ndarray:
    return points.detach().float().cpu().numpy()


def plot_bounds(points: Tensor, margin: float = 0.1) -> tuple[float, float, float, float]:
    """A square-ish window around the central 99.8% of 2-D ``points`` (N, 2)."""
    array = _numpy(points)
    low, high = np.quantile(array, [0.001, 0.999], axis=0)
    pad = margin * (high - low).max()
    return low[0] - pad, high[0] + pad, low[1] - pad, high[1] + pad


def scatter_panels(
    panels: Mapping[str, Tensor], bounds: Sequence[float] | None = None, max_points: int = 5000
) -> Figure:
    """One scatter per named ``(N, 2)`` point set, side by side on shared axes
    (e.g. data | teacher samples | student samples)."""
    bounds = bounds or plot_bounds(next(iter(panels.values())))
    fig, axes = plt.subplots(1, len(panels), figsize=(3.6 * len(panels), 3.4), squeeze=False)
    for index, (ax, (title, points)) in enumerate(zip(axes[0], panels.items(), strict=False)):
        array = _numpy(points[:max_points])
        ax.scatter(array[:, 0], array[:, 1], s=0.5, alpha=0.6, color=f"C{index}", rasterized=True)
        ax.set(title=title, xlim=bounds[:2], ylim=bounds[2:], aspect="equal")
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    return fig


@torch.no_grad()
def density_panels(
    log_probs: Mapping[str, Callable[[Tensor], Tensor]],
    bounds: Sequence[float],
    resolution: int = 200,
    reference: Tensor | None = None,
) -> Figure:
    """Heatmaps of each named log-density function on a grid over ``bounds``. The functions
    take ``(N, 2)`` points; ``reference`` provides device and dtype (default CPU float32)."""
    xs = torch.linspace(bounds[0], bounds[1], resolution)
    ys = torch.linspace(bounds[2], bounds[3], resolution)
    grid = torch.stack(torch.meshgrid(xs, ys, indexing="xy"), dim=-1).reshape(-1, 2)
    if reference is not None:
        grid = grid.to(reference)
    fig, axes = plt.subplots(1, len(log_probs), figsize=(3.6 * len(log_probs), 3.4), squeeze=False)
    for ax, (title, log_prob) in zip(axes[0], log_probs.items(), strict=False):
        density = torch.cat([log_prob(chunk) for chunk in grid.split(10_000)]).exp()
        image = _numpy(density.reshape(resolution, resolution))
        ax.imshow(image, origin="lower", extent=tuple(bounds), cmap="magma", aspect="equal")
        ax.set_title(title)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    return fig


def image_grid(
    images: Tensor,
    image_shape: Sequence[int],
    rows: int = 8,
    value_range: tuple[float, float] = (0, 17),
) -> Figure:
    """A ``rows x rows`` grid of flat ``(N, H*W)`` images, e.g. digits samples."""
    count = min(rows * rows, len(images))
    array = _numpy(images[:count]).reshape(count, *image_shape)
    fig, axes = plt.subplots(rows, rows, figsize=(rows * 0.8, rows * 0.8))
    for ax, index in zip(axes.flat, range(rows * rows), strict=False):
        ax.axis("off")
        if index < count:
            ax.imshow(array[index], cmap="gray_r", vmin=value_range[0], vmax=value_range[1])
    fig.tight_layout(pad=0.1)
    return fig


def taffy_strip(steps: Sequence[Tensor], titles: Sequence[str] | None = None) -> Figure:
    """The samples after each layer of a flow, noise -> data, as a row of scatters
    (the SIGGRAPH "taffy" figure of Jang's tutorial). ``steps``: list of ``(N, 2)``."""
    titles = titles or [f"layer {i}" if i else "noise" for i in range(len(steps))]
    fig, axes = plt.subplots(1, len(steps), figsize=(2.2 * len(steps), 2.3), squeeze=False)
    for ax, points, title in zip(axes[0], steps, titles, strict=False):
        array = _numpy(points)
        ax.scatter(array[:, 0], array[:, 1], s=0.3, alpha=0.5, color="C3", rasterized=True)
        low, high = plot_bounds(points)[::2], plot_bounds(points)[1::2]
        ax.set(title=title, xlim=(low[0], high[0]), ylim=(low[1], high[1]))
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    return fig


def save_figure(fig: Figure, path: str | Path) -> Path:
    """Write ``fig`` as a PNG (creating the folder) and close it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
