"""Offline comparison of runs (``distill-report``): gather every run under some folders, tabulate
the settings that tell them apart and their key metrics, plot, and write a static page.

    from distill.dashboard import build_report
    build_report(["multirun/teacher/2026-11-29_10-00-00"], out="report", sort="teacher/test_nll")
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path

from distill.dashboard.page import write_page
from distill.dashboard.runs import Run, find_runs, load_run, read_curves
from distill.dashboard.table import (
    METRICS,
    Metric,
    choose_sort,
    markdown_table,
    metric_value,
    present_metrics,
    settings_text,
    sort_runs,
    varying_settings,
    write_csv,
    write_markdown,
)

__all__ = [
    "METRICS",
    "Metric",
    "Run",
    "build_report",
    "choose_sort",
    "find_runs",
    "load_run",
    "markdown_table",
    "metric_value",
    "read_curves",
    "sort_runs",
]


def build_report(
    roots: Sequence[str | Path], out: str | Path, sort: str | None = None
) -> list[Run]:
    """Write ``runs.md``, ``runs.csv`` and ``index.html`` into ``out``, with the page's images
    in ``out/assets/`` (replaced on every call: the comparison plots and a copy of each run's
    figures), for every run under ``roots``, sorted best first by metric ``sort`` (default:
    the student's, else the teacher's, test NLL). Returns the runs in table order. Raises
    ValueError for an unknown ``sort`` metric or when there is no run."""
    out = Path(out).resolve()
    roots = [Path(root).resolve() for root in roots]
    runs = find_runs(roots, exclude=out)
    if not runs:
        folders = ", ".join(str(root) for root in roots)
        raise ValueError(f"no run (a folder with .hydra/) under {folders}")
    metric = choose_sort(runs, sort)
    runs = sort_runs(runs, metric)
    assets = out / "assets"
    shutil.rmtree(assets, ignore_errors=True)
    assets.mkdir(parents=True)
    # Imported here: matplotlib is slow to import, and the tables do not need it.
    from distill.dashboard.figures import plot_curves, plot_metrics_against, run_colours

    images: list[tuple[str, Path]] = []
    varying = varying_settings(runs)
    metrics = present_metrics(runs)
    for index, key in enumerate(varying):
        others = [k for k in varying if k != key]
        path = plot_metrics_against(runs, key, others, metrics, assets / f"vs-{index}.png")
        if path:
            images.append((f"Metrics vs {key}", path))
    curves, notes = read_curves(runs)
    colours = run_colours([run.name for run in runs])
    labels = {
        run.name: f"{run.name}: {settings_text(run, varying, keys_shown=False)}" for run in runs
    }
    for index, (stage, stage_curves) in enumerate(sorted(curves.items())):
        path = plot_curves(stage, stage_curves, colours, labels, assets / f"curves-{index}.png")
        images.append((f"Training curves: {stage}", path))
    write_markdown(out / "runs.md", runs, metric, notes)
    write_csv(out / "runs.csv", runs)
    write_page(out, runs, metric, roots, images, notes, colours)
    return runs
