"""``index.html``: one static page (inline CSS, no script, no network) with the table, the
comparison plots and each run's own figures, which are copied next to it."""

from __future__ import annotations

import html
import re
import shutil
from collections.abc import Mapping, Sequence
from datetime import datetime
from pathlib import Path

from distill.dashboard.runs import Run
from distill.dashboard.table import (
    Metric,
    best_values,
    common_settings,
    format_metric,
    format_value,
    metric_value,
    present_metrics,
    settings_text,
    status,
    varying_settings,
)

STYLE = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 1.5em; color: #222; }
h1 { font-size: 1.5em; margin-bottom: 0.2em; }
h2 { font-size: 1.2em; margin-top: 1.8em; border-bottom: 1px solid #ccc; }
h3 { font-size: 1em; margin: 1.2em 0 0.3em; }
.meta { color: #555; }
.scroll { overflow-x: auto; }
table { border-collapse: collapse; font-size: 13px; }
th, td { border: 1px solid #ddd; padding: 3px 7px; white-space: nowrap; }
th { background: #f2f2f2; white-space: normal; vertical-align: bottom; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
td.best { font-weight: bold; background: #e6f4e6; }
th.setting, td.setting { background: #f7f7fb; }
tr.failed td { background: #fbeaea; color: #933; }
.row { display: flex; flex-wrap: wrap; gap: 12px; align-items: flex-start; }
.plot img { max-width: 100%; }
figure { margin: 0; min-width: 0; max-width: 100%; }
figure.run img { max-height: 220px; max-width: 100%; border: 1px solid #eee; }
.swatch { display: inline-block; width: 0.8em; height: 0.8em; margin-right: 0.35em;
          vertical-align: baseline; border-radius: 2px; }
summary { cursor: pointer; }
figcaption { font-size: 12px; color: #555; }
code { background: #f4f4f4; padding: 0 3px; }
"""


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_") or "run"


def copy_figures(runs: Sequence[Run], out: Path) -> dict[str, list[tuple[str, str]]]:
    """Copy each run's figures into ``out/assets/<run>/``; per run name, the list of
    ``(caption, path relative to out)``."""
    copied: dict[str, list[tuple[str, str]]] = {}
    for index, run in enumerate(runs):
        folder = out / "assets" / f"run-{index:03d}-{_slug(run.name)}"
        for source in run.figures:
            folder.mkdir(parents=True, exist_ok=True)
            caption = source.relative_to(run.path).as_posix()
            target = folder / _slug(caption)
            shutil.copyfile(source, target)
            copied.setdefault(run.name, []).append((caption, target.relative_to(out).as_posix()))
    return copied


def _swatch(colour: str | None) -> str:
    return f'<span class="swatch" style="background:{colour}"></span>' if colour else ""


def _table(runs: Sequence[Run], sort: Metric | None, colours: Mapping[str, str]) -> list[str]:
    settings, metrics = varying_settings(runs), present_metrics(runs)
    best = best_values(runs, metrics)
    head = ["<th>run</th>"]
    head += [f'<th class="setting">{html.escape(key)}</th>' for key in settings]
    for metric in metrics:
        arrow = "↓" if metric.better == "lower" else "↑"
        mark = " ◆" if sort is not None and metric.key == sort.key else ""
        head.append(
            f'<th title="{html.escape(metric.key)}, {metric.better} is better">'
            f"{html.escape(metric.label)} {arrow}{mark}</th>"
        )
    head.append("<th>status</th>")
    lines = ['<div class="scroll"><table>', "<tr>" + "".join(head) + "</tr>"]
    for run in runs:
        link = f'<a href="#{_slug(run.name)}">{html.escape(run.name)}</a>'
        cells = [f"<td>{_swatch(colours.get(run.name))}{link}</td>"]
        cells += [
            f'<td class="setting">{html.escape(format_value(run.value(key)))}</td>'
            for key in settings
        ]
        for metric in metrics:
            value = metric_value(run, metric.key)
            highlight = " best" if value is not None and best.get(metric.key) == value else ""
            cells.append(
                f'<td class="num{highlight}">{html.escape(format_metric(metric, value))}</td>'
            )
        cells.append(f"<td>{html.escape(status(run))}</td>")
        css = ' class="failed"' if run.failed else ""
        lines.append(f"<tr{css}>" + "".join(cells) + "</tr>")
    lines.append("</table></div>")
    return lines


def write_page(
    out: Path,
    runs: Sequence[Run],
    sort: Metric | None,
    roots: Sequence[Path],
    plots: Sequence[tuple[str, Path]],
    notes: Sequence[str],
    colours: Mapping[str, str],
) -> Path:
    """Write ``out/index.html`` for ``runs`` (already sorted); ``plots`` are ``(title, PNG
    inside out)``, ``notes`` what could not be shown, ``colours`` each run's colour in the
    plots (``#rrggbb``)."""
    figures = copy_figures(runs, out)
    order = f"sorted by <code>{sort.key}</code>, best first" if sort else "in path order"
    failed = sum(run.failed for run in runs)
    lines = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        "<title>distill runs</title>",
        f"<style>{STYLE}</style></head><body>",
        "<h1>distill runs</h1>",
        f'<p class="meta">{len(runs)} runs ({failed} failed), {order}; from '
        + ", ".join(f"<code>{html.escape(str(root))}</code>" for root in roots)
        + f"; generated {datetime.now():%Y-%m-%d %H:%M}. "
        'Also as <a href="runs.md">runs.md</a> and <a href="runs.csv">runs.csv</a>.</p>',
    ]
    common = common_settings(runs)
    if common:
        shared = ", ".join(f"<code>{html.escape(f'{k}={v}')}</code>" for k, v in common.items())
        lines.append(
            f'<details class="meta"><summary>{len(common)} settings shared by every run'
            f"</summary><p>{shared}</p></details>"
        )
    lines += _table(runs, sort, colours)
    if plots:
        lines.append('<h2>Plots</h2><div class="row">')
        for title, path in plots:
            relative = path.relative_to(out).as_posix()
            lines.append(
                f'<figure class="plot"><img src="{relative}" alt="{html.escape(title)}"></figure>'
            )
        lines.append("</div>")
    lines.append("<h2>Figures of each run</h2>")
    varying = varying_settings(runs)
    for run in runs:
        settings = settings_text(run, varying)
        lines.append(
            f'<h3 id="{_slug(run.name)}">{_swatch(colours.get(run.name))}{html.escape(run.name)}'
            f' <span class="meta">{html.escape(settings)}</span></h3>'
        )
        lines.append(f'<p class="meta"><code>{html.escape(str(run.path))}</code></p>')
        if run.failed:
            lines.append(f"<p>{html.escape(status(run))}</p>")
        entries = figures.get(run.name, [])
        if entries:
            lines.append('<div class="row">')
            lines += [
                f'<figure class="run"><img src="{src}" alt="{html.escape(caption)}">'
                f"<figcaption>{html.escape(caption)}</figcaption></figure>"
                for caption, src in entries
            ]
            lines.append("</div>")
        elif not run.failed:
            lines.append('<p class="meta">no figures</p>')
    if notes:
        lines.append("<h2>Notes</h2><ul>")
        lines += [f"<li>{html.escape(note)}</li>" for note in notes]
        lines.append("</ul>")
    lines.append("</body></html>")
    path = out / "index.html"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path
