"""Figures (matplotlib, Agg): sample scatters, log-density heatmaps, image grids and the
"taffy" strip of a flow's layers. Each function returns a Figure; `save_figure` writes it and
`figure_to_array` renders it for loggers. Panels keep the data's aspect ratio: wide data (the
SIGGRAPH word) stacks its panels vertically instead of leaving white space around them."""

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

Bounds = tuple[float, float, float, float]  # (x_min, x_max, y_min, y_max)

PANEL_HEIGHT = 2.6  # inches, for a panel of aspect ratio 1
MAX_ROW_WIDTH = 15.0  # inches: wider rows are stacked as columns instead


def _numpy(points: Tensor) -> np.ndarray:
    return points.detach().float().cpu().numpy()


def plot_bounds(points: Tensor, margin: float = 0.05) -> Bounds:
    """The central 99.8% of 2-D ``points`` (N, 2), widened by ``margin`` of each side's
    extent: the window every panel of a figure shares."""
    array = _numpy(points)
    low, high = np.quantile(array, [0.001, 0.999], axis=0)
    pad = margin * (high - low)
    return low[0] - pad[0], high[0] + pad[0], low[1] - pad[1], high[1] + pad[1]


def _panels(count: int, bounds: Bounds, colorbar: bool = False) -> tuple[Figure, list]:
    """``count`` axes sized to the data's aspect ratio, in a row, or in a column when a row
    would be wider than `MAX_ROW_WIDTH`."""
    aspect = (bounds[1] - bounds[0]) / (bounds[3] - bounds[2])
    width = PANEL_HEIGHT * float(np.clip(aspect, 0.5, 8.0)) + (0.9 if colorbar else 0.3)
    height = PANEL_HEIGHT * (float(np.clip(1 / aspect, 0.5, 8.0)) if aspect < 1 else 1.0) + 0.4
    if count * width <= MAX_ROW_WIDTH:
        rows, columns = 1, count
    else:
        rows, columns = count, 1
    fig, axes = plt.subplots(
        rows,
        columns,
        figsize=(columns * width, rows * height),
        squeeze=False,
        layout="constrained",
    )
    return fig, list(axes.flat)


def scatter_panels(
    panels: Mapping[str, Tensor], bounds: Bounds | None = None, max_points: int = 5000
) -> Figure:
    """One scatter per named ``(N, 2)`` point set on shared axes (e.g. data | teacher samples
    | student samples); the names are the panels' titles."""
    bounds = bounds or plot_bounds(next(iter(panels.values())))
    fig, axes = _panels(len(panels), bounds)
    for index, (ax, (title, points)) in enumerate(zip(axes, panels.items(), strict=True)):
        array = _numpy(points[:max_points])
        ax.scatter(array[:, 0], array[:, 1], s=0.5, alpha=0.6, color=f"C{index}", rasterized=True)
        ax.set(title=title, xlim=bounds[:2], ylim=bounds[2:], aspect="equal")
        ax.tick_params(labelsize=7)
    return fig


@torch.no_grad()
def density_panels(
    log_probs: Mapping[str, Callable[[Tensor], Tensor]],
    bounds: Bounds,
    resolution: int = 200,
    reference: Tensor | None = None,
) -> Figure:
    """Heatmaps of each named density (from its log-density function, which takes ``(N, 2)``
    points) on a grid over ``bounds``, on one shared colour scale with a colorbar.
    ``reference`` provides device and dtype (default CPU float32)."""
    aspect = (bounds[1] - bounds[0]) / (bounds[3] - bounds[2])
    columns = max(int(resolution * min(aspect, 8.0)), 2)
    xs = torch.linspace(bounds[0], bounds[1], columns)
    ys = torch.linspace(bounds[2], bounds[3], resolution)
    grid = torch.stack(torch.meshgrid(xs, ys, indexing="xy"), dim=-1).reshape(-1, 2)
    if reference is not None:
        grid = grid.to(reference)
    images = {
        title: _numpy(torch.cat([log_prob(chunk) for chunk in grid.split(10_000)]).exp())
        for title, log_prob in log_probs.items()
    }
    top = max(float(np.nanmax(image)) for image in images.values())
    fig, axes = _panels(len(images), bounds, colorbar=True)
    for ax, (title, image) in zip(axes, images.items(), strict=True):
        shown = ax.imshow(
            image.reshape(resolution, columns),
            origin="lower",
            extent=bounds,
            cmap="magma",
            vmin=0.0,
            vmax=top,
            aspect="equal",
        )
        ax.set_title(title)
        ax.tick_params(labelsize=7)
        fig.colorbar(shown, ax=ax, shrink=0.8, label="density")
    return fig


def image_grid(
    images: Tensor,
    image_shape: Sequence[int],
    title: str = "",
    rows: int = 8,
    value_range: tuple[float, float] = (0, 17),
) -> Figure:
    """A ``rows x rows`` grid of flat ``(N, H*W)`` images, e.g. digits samples."""
    count = min(rows * rows, len(images))
    array = _numpy(images[:count]).reshape(count, *image_shape)
    fig, axes = plt.subplots(rows, rows, figsize=(rows * 0.8, rows * 0.8 + 0.3))
    for ax, index in zip(axes.flat, range(rows * rows), strict=True):
        ax.axis("off")
        if index < count:
            ax.imshow(array[index], cmap="gray_r", vmin=value_range[0], vmax=value_range[1])
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout(pad=0.1)
    return fig


def spectrogram_grid(
    magnitudes: Mapping[str, Tensor],
    sample_rate: int,
    hop_length: int,
    titles: Mapping[str, str] | None = None,
) -> Figure:
    """Log-magnitude spectrograms, one column per role (data | teacher | student), one row per
    example: ``magnitudes`` maps a role to ``(N, F, frames)`` STFT magnitudes (F = n_fft / 2 +
    1 bins up to Nyquist). One dB colour scale for all panels, so loudness compares too (a
    "whispering" student is darker)."""
    titles = titles or {}
    roles = list(magnitudes)
    rows = min(len(m) for m in magnitudes.values())
    decibels = {
        r: 20 * torch.log10(m[:rows].float().clamp_min(1e-5)) for r, m in magnitudes.items()
    }
    top = max(d.max().item() for d in decibels.values())
    fig, axes = plt.subplots(
        rows,
        len(roles),
        figsize=(3.0 * len(roles) + 0.8, 1.6 * rows + 0.6),
        squeeze=False,
        layout="constrained",
    )
    image = None
    for column, role in enumerate(roles):
        for row in range(rows):
            ax = axes[row][column]
            array = _numpy(decibels[role][row])
            duration = array.shape[-1] * hop_length / sample_rate
            image = ax.imshow(
                array,
                origin="lower",
                aspect="auto",
                cmap="magma",
                vmin=top - 80,
                vmax=top,
                extent=(0, duration, 0, sample_rate / 2000),
            )
            if row == 0:
                ax.set_title(titles.get(role, role), fontsize=9)
            if column == 0:
                ax.set_ylabel("kHz", fontsize=8)
            if row == rows - 1:
                ax.set_xlabel("s", fontsize=8)
            ax.tick_params(labelsize=7)
    fig.colorbar(image, ax=axes, shrink=0.6, label="dB")
    return fig


def taffy_strip(steps: Sequence[Tensor], titles: Sequence[str]) -> Figure:
    """The samples after each layer of a flow, noise -> data, as a row of scatters
    (the SIGGRAPH "taffy" figure of Jang's tutorial). ``steps``: list of ``(N, 2)``."""
    fig, axes = plt.subplots(
        1, len(steps), figsize=(2.2 * len(steps), 2.4), squeeze=False, layout="constrained"
    )
    for ax, points, title in zip(axes[0], steps, titles, strict=True):
        array = _numpy(points)
        bounds = plot_bounds(points)
        ax.scatter(array[:, 0], array[:, 1], s=0.3, alpha=0.5, color="C3", rasterized=True)
        ax.set(title=title, xlim=bounds[:2], ylim=bounds[2:])
        ax.set_xticks([])
        ax.set_yticks([])
    return fig


def figure_to_array(fig: Figure) -> np.ndarray:
    """The figure rendered as an ``(H, W, 3)`` uint8 RGB array (for loggers)."""
    fig.canvas.draw()
    return np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()


def save_figure(fig: Figure, path: str | Path) -> Path:
    """Write ``fig`` as a PNG (creating the folder) and close it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
