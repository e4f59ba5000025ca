"""The comparison's plots (matplotlib, Agg, PNG): each metric against each swept setting, and
the training curves of all runs overlaid. A run keeps its colour in every plot."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from distill.dashboard.runs import Curve, Run  # noqa: E402
from distill.dashboard.table import Metric, format_value, metric_value  # noqa: E402

PANEL_INCHES = (3.6, 2.7)
DPI = 90
MAX_COLUMNS = 4
MAX_LEGEND_ENTRIES = 12


def run_colours(names: Sequence[str]) -> dict[str, tuple]:
    """One colour per run name, in table order (tab10, tab20 beyond ten runs)."""
    palette = plt.get_cmap("tab10" if len(names) <= 10 else "tab20")
    return {name: palette(index % palette.N) for index, name in enumerate(names)}


def _grid(count: int) -> tuple[plt.Figure, list[plt.Axes]]:
    columns = min(count, MAX_COLUMNS)
    rows = math.ceil(count / columns)
    figure, axes = plt.subplots(
        rows,
        columns,
        figsize=(PANEL_INCHES[0] * columns, PANEL_INCHES[1] * rows),
        squeeze=False,
        layout="constrained",
    )
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
    """Each metric (one panel each) against setting ``key``, one line per combination of the
    ``others`` varying settings; a numeric ``key`` spanning a factor >= 10 gets a log axis.
    None if no finished run has any of ``metrics``."""
    finished = [run for run in runs if not run.failed]
    metrics = [m for m in metrics if any(metric_value(r, m.key) is not None for r in finished)]
    if not metrics:
        return None
    raw = [run.value(key) for run in finished]
    numbers = _numbers(raw)
    if numbers is None:
        categories = sorted({format_value(v) for v in raw})
        positions = [categories.index(format_value(v)) for v in raw]
    else:
        positions = numbers
    groups: dict[str, list[int]] = {}
    for index, run in enumerate(finished):
        label = ", ".join(f"{k}={format_value(run.value(k))}" for k in others)
        groups.setdefault(label, []).append(index)
    figure, axes = _grid(len(metrics))
    for axis, metric in zip(axes, metrics, strict=True):
        for label, members in groups.items():
            points = sorted(
                (positions[i], value)
                for i in members
                if (value := metric_value(finished[i], metric.key)) is not None
            )
            if points:
                xs, ys = zip(*points, strict=True)
                axis.plot(xs, ys, marker="o", label=label or None)
        axis.set_title(f"{metric.label} ({metric.better} is better)", fontsize=9)
        axis.set_xlabel(key, fontsize=8)
        axis.tick_params(labelsize=7)
        axis.grid(alpha=0.3)
        if numbers is None:
            axis.set_xticks(range(len(categories)), categories, rotation=20)
        elif min(numbers) > 0 and max(numbers) >= 10 * min(numbers):
            axis.set_xscale("log")
    if others and 1 < len(groups) <= MAX_LEGEND_ENTRIES:
        handles, labels = axes[0].get_legend_handles_labels()
        figure.legend(handles, labels, loc="outside lower center", fontsize=8, ncols=3)
    figure.suptitle(f"metrics vs {key}", fontsize=10)
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
    stage: str, curves: Mapping[str, Mapping[str, Curve]], colours: Mapping[str, tuple], path: Path
) -> Path:
    """The ``stage``'s training curves (one panel per key, ``train/*`` then ``val/*``), every
    run overlaid in its colour, against the optimizer step."""
    keys = sorted(curves, key=lambda k: (not k.startswith("train/"), k))
    figure, axes = _grid(len(keys))
    for axis, key in zip(axes, keys, strict=True):
        values = []
        for name, points in curves[key].items():
            xs, ys = zip(*points, strict=True)
            values += ys
            style = "-" if len(points) > 1 else "o"
            axis.plot(xs, ys, style, color=colours.get(name), label=name, lw=1.2, ms=4)
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
        figure.legend(handles, names, loc="outside lower center", fontsize=8, ncols=6)
    figure.suptitle(f"{stage}: training curves", fontsize=10)
    figure.savefig(path, dpi=DPI)
    plt.close(figure)
    return path
