"""The comparison's plots (matplotlib, Agg, PNG): each metric against each swept setting, and
the training curves of all runs overlaid. A run keeps its colour in every plot."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.colors import to_hex  # noqa: E402

from distill.dashboard.runs import Curve, Run  # noqa: E402
from distill.dashboard.table import Metric, format_value, metric_value  # noqa: E402

PANEL_INCHES = (3.4, 2.6)
LEGEND_INCHES = 0.6
DPI = 80
MAX_COLUMNS = 4
MAX_LEGEND_ENTRIES = 12


def run_colours(names: Sequence[str]) -> dict[str, str]:
    """One colour (``#rrggbb``) per run name, in table order (tab10, tab20 beyond ten)."""
    palette = plt.get_cmap("tab10" if len(names) <= 10 else "tab20")
    return {name: to_hex(palette(index % palette.N)) for index, name in enumerate(names)}


def _grid(count: int, title: str) -> tuple[plt.Figure, list[plt.Axes]]:
    """A figure of ``count`` panels, at most MAX_COLUMNS a row, with room below for a legend.
    Fixed margins: an automatic layout engine costs more than the drawing."""
    columns = min(count, MAX_COLUMNS)
    rows = math.ceil(count / columns)
    width, height = PANEL_INCHES[0] * columns, PANEL_INCHES[1] * rows + LEGEND_INCHES
    figure, axes = plt.subplots(rows, columns, figsize=(width, height), squeeze=False)
    figure.subplots_adjust(
        left=0.6 / width,
        right=1 - 0.2 / width,
        bottom=(LEGEND_INCHES + 0.45) / height,
        top=1 - 0.55 / height,
        wspace=0.3,
        hspace=0.55 * 2.7 / PANEL_INCHES[1],
    )
    figure.suptitle(title, fontsize=10)
    flat = list(axes.flat)
    for unused in flat[count:]:
        unused.set_visible(False)
    return figure, flat[:count]


def _numbers(values: Sequence[object]) -> list[float] | None:
    if all(isinstance(v, int | float) and not isinstance(v, bool) for v in values):
        return [float(v) for v in values]
    return None


def plot_metrics_against(
    runs: Sequence[Run], key: str, others: Sequence[str], metrics: Sequence[Metric], path: Path
) -> Path | None:
    """Each metric other than times (one panel each) against setting ``key``, one line per
    combination of the ``others`` varying settings; a numeric ``key`` spanning a factor >= 10
    gets a log axis. Runs without the setting are left out. None (no file) if fewer than two
    values of ``key`` or no metric remain."""
    finished = [run for run in runs if not run.failed and run.value(key) is not None]
    metrics = [
        m
        for m in metrics
        if not m.timing and any(metric_value(r, m.key) is not None for r in finished)
    ]
    raw = [run.value(key) for run in finished]
    if not metrics or len({format_value(v) for v in raw}) < 2:
        return None
    numbers = _numbers(raw)
    if numbers is None:
        categories = sorted({format_value(v) for v in raw})
        positions = [float(categories.index(format_value(v))) for v in raw]
    else:
        positions = numbers
    groups: dict[str, list[int]] = {}
    for index, run in enumerate(finished):
        label = ", ".join(f"{k}={format_value(run.value(k))}" for k in others)
        groups.setdefault(label, []).append(index)
    figure, axes = _grid(len(metrics), f"metrics vs {key}")
    # Lines are groups of runs, not runs: a palette apart from the runs' own colours.
    palette = plt.get_cmap("Dark2")
    for axis, metric in zip(axes, metrics, strict=True):
        for number, (label, members) in enumerate(groups.items()):
            points = sorted(
                (positions[i], value)
                for i in members
                if (value := metric_value(finished[i], metric.key)) is not None
            )
            if points:
                xs, ys = zip(*points, strict=True)
                axis.plot(xs, ys, marker="o", label=label, color=palette(number % palette.N))
        axis.set_title(f"{metric.label} ({metric.better} is better)", fontsize=9)
        axis.set_xlabel(key, fontsize=8)
        axis.tick_params(labelsize=7)
        axis.grid(alpha=0.3)
        if numbers is None:
            axis.set_xticks(range(len(categories)), categories)
        elif min(numbers) > 0 and max(numbers) >= 10 * min(numbers):
            axis.set_xscale("log")
    if others and 1 < len(groups) <= MAX_LEGEND_ENTRIES:
        handles, labels = axes[0].get_legend_handles_labels()
        figure.legend(handles, labels, loc="lower center", fontsize=8, ncols=3, frameon=False)
    figure.savefig(path, dpi=DPI)
    plt.close(figure)
    return path


def _robust_limits(values: list[float]) -> tuple[float, float] | None:
    """y limits that keep a few huge outliers (a diverging first step) from flattening the
    rest of a plot; None when there are none."""
    ordered = sorted(values)
    low, high = ordered[0], ordered[-1]
    typical = ordered[int(0.95 * (len(ordered) - 1))]
    if high - low <= 10 * (typical - low) or typical == low:
        return None
    margin = 0.05 * (typical - low)
    return low - margin, typical + margin


def plot_curves(
    stage: str,
    curves: Mapping[str, Mapping[str, Curve]],
    colours: Mapping[str, str],
    labels: Mapping[str, str],
    path: Path,
) -> Path:
    """The ``stage``'s training curves (one panel per key, ``train/*`` then ``val/*``), every
    run overlaid in its colour, against the optimizer step; ``labels``: legend text per run."""
    keys = sorted(curves, key=lambda k: (not k.startswith("train/"), k))
    figure, axes = _grid(len(keys), f"{stage}: training curves")
    for axis, key in zip(axes, keys, strict=True):
        values = []
        for name, points in curves[key].items():
            xs, ys = zip(*points, strict=True)
            values += ys
            style = "-" if len(points) > 1 else "o"
            axis.plot(xs, ys, style, color=colours.get(name), lw=1.2, ms=4)
        limits = _robust_limits(values)
        if limits:
            axis.set_ylim(*limits)
        axis.set_title(key, fontsize=9)
        axis.set_xlabel("step", fontsize=8)
        axis.tick_params(labelsize=7)
        axis.grid(alpha=0.3)
    names = [name for name in colours if any(name in curves[key] for key in keys)]
    if len(names) <= MAX_LEGEND_ENTRIES * 2:
        handles = [plt.Line2D([], [], color=colours[name]) for name in names]
        texts = [labels.get(name, name) for name in names]
        figure.legend(handles, texts, loc="lower center", fontsize=8, ncols=4, frameon=False)
    figure.savefig(path, dpi=DPI)
    plt.close(figure)
    return path
