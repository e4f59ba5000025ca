"""The comparison table: one row per run, the settings that tell runs apart, key metrics,
sorted best first; written as Markdown and CSV."""

from __future__ import annotations

import csv
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from distill.dashboard.runs import Run

LOWER, HIGHER = "lower", "higher"


@dataclass(frozen=True)
class Metric:
    """A column of the table: a ``metrics.json`` key, its label and which way is better."""

    key: str
    label: str
    better: str  # LOWER or HIGHER
    format: str = "{:.4g}"
    timing: bool = False  # a time: left out of the plots against settings (machine load)


WALL_TIME = "wall_time_s"  # not in metrics.json: from the run's files (Run.wall_time_s)

# The key metrics, in column order; which way is better is decided here, per key.
METRICS = (
    Metric("teacher/test_nll", "teacher NLL (nats)", LOWER),
    Metric("student/test_nll", "student NLL (nats)", LOWER),
    Metric("teacher/excess_nll", "teacher excess NLL", LOWER),
    Metric("student/excess_nll", "student excess NLL", LOWER),
    Metric("student/kl_trimmed_mean", "KL trimmed (nats)", LOWER),
    Metric("student/coverage_loss", "coverage loss", LOWER, "{:.2%}"),
    Metric("teacher/in_support", "teacher in support", HIGHER, "{:.2%}"),
    Metric("student/in_support", "student in support", HIGHER, "{:.2%}"),
    Metric("sampling/speedup", "sampling speedup", HIGHER, "{:.2f}x"),
    Metric("teacher/train_time_s", "teacher train s", LOWER, "{:.1f}", timing=True),
    Metric("student/train_time_s", "student train s", LOWER, "{:.1f}", timing=True),
    Metric(WALL_TIME, "wall s", LOWER, "{:.1f}", timing=True),
)
BY_KEY = {metric.key: metric for metric in METRICS}
DEFAULT_SORT = ("student/test_nll", "teacher/test_nll")
MISSING = "—"


def metric_value(run: Run, key: str) -> float | None:
    """The run's value of metric ``key`` as a float, None if it has none (or a non-number)."""
    value = run.wall_time_s if key == WALL_TIME else run.metrics.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def present_metrics(runs: Iterable[Run]) -> list[Metric]:
    """The table's metrics that at least one run has, in column order."""
    runs = list(runs)
    return [m for m in METRICS if any(metric_value(run, m.key) is not None for run in runs)]


def varying_settings(runs: Sequence[Run]) -> list[str]:
    """The setting keys whose values differ between runs (a run without the override takes
    its saved config value), in first-seen order: the columns that tell runs apart."""
    keys = list(dict.fromkeys(key for run in runs for key in run.settings))
    return [key for key in keys if len({format_value(run.value(key)) for run in runs}) > 1]


def common_settings(runs: Sequence[Run]) -> dict[str, str]:
    """The settings every run shares (overrides and group choices), as text."""
    if not runs:
        return {}
    varying = set(varying_settings(runs))
    keys = dict.fromkeys(key for run in runs for key in run.settings)
    return {
        key: format_value(runs[0].value(key))
        for key in keys
        if key not in varying and runs[0].value(key) is not None
    }


def format_value(value: object) -> str:
    """A setting as short text: floats in ``%g``, None as ``—``."""
    if value is None:
        return MISSING
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def settings_text(run: Run, keys: Sequence[str], keys_shown: bool = True) -> str:
    """The run's values of ``keys`` as one line: ``a=1, b=x`` (or ``1, x``)."""
    return ", ".join(
        f"{key}={format_value(run.value(key))}" if keys_shown else format_value(run.value(key))
        for key in keys
    )


def choose_sort(runs: Sequence[Run], requested: str | None) -> Metric | None:
    """The metric to sort by: ``requested``, or the first of DEFAULT_SORT the runs have.
    Raises ValueError naming the available metrics if ``requested`` is not one of them."""
    available = present_metrics(runs)
    if requested is None:
        keys = [m.key for m in available]
        return next((BY_KEY[key] for key in DEFAULT_SORT if key in keys), None)
    for metric in available:
        if requested == metric.key:
            return metric
    names = ", ".join(m.key for m in (available or METRICS))
    raise ValueError(f"unknown metric {requested!r} for --sort; available: {names}")


def sort_runs(runs: Sequence[Run], metric: Metric | None) -> list[Run]:
    """Best first by ``metric`` (its own direction); runs without it, then failed runs, last,
    each group in path order."""

    def order(run: Run) -> tuple:
        value = None if metric is None else metric_value(run, metric.key)
        if value is None or math.isnan(value):
            return (1 + run.failed, 0.0)
        return (0, value if metric.better == LOWER else -value)

    return sorted(runs, key=order)


def format_metric(metric: Metric, value: float | None) -> str:
    if value is None:
        return MISSING
    if not math.isfinite(value):
        return str(value)
    return metric.format.format(value)


def best_values(runs: Sequence[Run], metrics: Sequence[Metric]) -> dict[str, float]:
    """The best finite value of each metric among the runs (for highlighting)."""
    best: dict[str, float] = {}
    for metric in metrics:
        values = [metric_value(run, metric.key) for run in runs]
        finite = [v for v in values if v is not None and math.isfinite(v)]
        if finite:
            best[metric.key] = min(finite) if metric.better == LOWER else max(finite)
    return best


def status(run: Run) -> str:
    return f"failed: {run.error}" if run.failed else "ok"


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> list[str]:
    """A Markdown table, one line per row (``|`` in cells escaped)."""

    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(str(cell).replace("|", "\\|") for cell in cells) + " |"

    return [line(header), "|" + "---|" * len(header), *(line(row) for row in rows)]


def table_rows(
    runs: Sequence[Run], settings: Sequence[str], metrics: Sequence[Metric]
) -> list[list[str]]:
    """The displayed cells of each run: name, settings, metrics, status."""
    return [
        [
            run.name,
            *(format_value(run.value(key)) for key in settings),
            *(format_metric(m, metric_value(run, m.key)) for m in metrics),
            status(run),
        ]
        for run in runs
    ]


def write_markdown(
    path: Path, runs: Sequence[Run], metric: Metric | None, notes: Sequence[str] = ()
) -> Path:
    """``runs.md``: the table (runs already sorted), the shared settings and notes."""
    settings, metrics = varying_settings(runs), present_metrics(runs)
    order = f"sorted by `{metric.key}`, {metric.better} is better" if metric else "path order"
    lines = [f"# Runs ({len(runs)}, {order})", ""]
    header = ["run", *settings, *(m.label for m in metrics), "status"]
    lines += markdown_table(header, table_rows(runs, settings, metrics))
    common = common_settings(runs)
    if common:
        lines += ["", "Shared by every run: " + ", ".join(f"`{k}={v}`" for k, v in common.items())]
    if notes:
        lines += ["", "Notes:", "", *(f"- {note}" for note in notes)]
    path.write_text("\n".join(lines) + "\n")
    return path


def write_csv(path: Path, runs: Sequence[Run]) -> Path:
    """``runs.csv``: run, path, status, the varying settings, then every metric key of the
    table at full precision (empty where missing)."""
    settings, metrics = varying_settings(runs), present_metrics(runs)
    with open(path, "w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(["run", "path", "status", *settings, *(m.key for m in metrics)])
        for run in runs:
            values = [metric_value(run, m.key) for m in metrics]
            writer.writerow(
                [
                    run.name,
                    str(run.path),
                    status(run),
                    *(format_value(run.value(key)) for key in settings),
                    *("" if v is None else repr(v) for v in values),
                ]
            )
    return path
