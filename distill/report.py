"""A run on disk, written once at its end: ``metrics.json``, ``plots/*.png`` and ``report.md``
(the command, the teacher and student side by side, every metric, the figures)."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

from distill.plots import save_figure

# (label, teacher key, student key): the rows shown side by side.
SIDE_BY_SIDE = [
    ("held-out NLL (nats), mean", "teacher/test_nll", "student/test_nll"),
    ("held-out NLL (nats), median", "teacher/test_nll_median", "student/test_nll_median"),
    ("excess NLL over the true entropy (nats)", "teacher/excess_nll", "student/excess_nll"),
    ("held-out bits/dim", "teacher/test_bpd", "student/test_bpd"),
    ("fraction of samples inside the support", "teacher/in_support", "student/in_support"),
    ("parameters", "teacher/parameters", "student/parameters"),
    ("sampling time (s, median)", "sampling/teacher_s", "sampling/student_s"),
    ("training steps", "teacher/global_step", "student/global_step"),
    ("training time (s)", "teacher/train_time_s", "student/train_time_s"),
]


def _format(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}" if math.isfinite(value) else str(value)
    return str(value)


def append_overrides_history(run_dir: str | Path, overrides: Sequence[str]) -> Path:
    """Append this launch's overrides, with the time, to ``run_dir/overrides_history.jsonl``:
    Hydra rewrites ``.hydra/overrides.yaml`` on every launch into the same directory (a
    resume), this file keeps every launch."""
    path = Path(run_dir) / "overrides_history.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    launch = {
        "time": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "overrides": list(overrides),
    }
    with open(path, "a") as history:
        history.write(json.dumps(launch) + "\n")
    return path


def key_settings(cfg: Mapping[str, Any], stages: Sequence[str]) -> dict[str, Any]:
    """The resolved config's values a reader of a report asks for first: the data, each
    stage's flow (builder, transform, layers, widths), optimizer and steps, the student's loss
    terms and start."""
    settings: dict[str, Any] = {"data": cfg["data"].get("name")}
    for stage in stages:
        node = cfg[stage]
        flow = node["flow"]
        settings[f"{stage}.flow"] = (
            f"{flow['_target_'].rsplit('.', 1)[-1]} ({flow.get('transform', 'affine')}, "
            f"{flow.get('num_layers')} layers of {list(flow.get('hidden_features', []))})"
        )
        settings[f"{stage}.optim"] = f"{node['optim']['name']} lr {node['optim']['lr']}"
        settings[f"{stage}.trainer.max_steps"] = node["trainer"]["max_steps"]
    if "student" in stages:
        settings["student.loss.terms"] = dict(cfg["student"]["loss"]["terms"])
        settings["student.init"] = cfg["student"]["init"]
    return settings


def write_run(
    run_dir: str | Path,
    metrics: Mapping[str, Any],
    figures: Mapping[str, Figure],
    overrides: Sequence[str] = (),
    settings: Mapping[str, Any] | None = None,
) -> Path:
    """Write ``run_dir/metrics.json`` (afresh), ``run_dir/plots/<name>.png`` and
    ``run_dir/report.md`` (``settings``: the config's key values, see `key_settings`);
    returns the report's path."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "metrics.json").write_text(
        json.dumps(dict(metrics), indent=2, sort_keys=True) + "\n"
    )
    images = {
        name: save_figure(figure, run_dir / "plots" / f"{name}.png")
        for name, figure in figures.items()
    }
    return write_report(run_dir, metrics, images, overrides, settings)


def write_report(
    run_dir: Path,
    metrics: Mapping[str, Any],
    images: Mapping[str, Path],
    overrides: Sequence[str] = (),
    settings: Mapping[str, Any] | None = None,
) -> Path:
    """``run_dir/report.md``: the overrides of the run and its key settings, a teacher |
    student table, every metric, and the images (linked relative to the run directory)."""
    command = " ".join(overrides) if overrides else "(defaults)"
    lines = ["# distill report", "", f"Overrides: `{command}`", ""]
    if settings:
        lines += [f"- `{key}`: {value}" for key, value in settings.items()] + [""]
    if "student/init" in metrics:
        start = (
            "a warm start from the teacher's weights"
            if metrics["student/init"] == "teacher"
            else "the identity (distilled from scratch)"
        )
        lines += [f"The student started from {start}.", ""]
    lines += ["## Teacher vs student", "", "| | teacher | student |", "|---|---|---|"]
    for label, teacher_key, student_key in SIDE_BY_SIDE:
        if teacher_key in metrics or student_key in metrics:
            lines.append(
                f"| {label} | {_format(metrics.get(teacher_key, '—'))} | "
                f"{_format(metrics.get(student_key, '—'))} |"
            )
    if "sampling/speedup" in metrics:
        lines += [
            "",
            f"The student samples {_format(metrics['sampling/speedup'])}x faster than the teacher "
            f"(median of {metrics.get('sampling/rounds', '?')} paired rounds, interquartile range "
            f"{_format(metrics.get('sampling/speedup_q25'))}–"
            f"{_format(metrics.get('sampling/speedup_q75'))}).",
        ]
    lines += ["", "## All metrics", "", "| metric | value |", "|---|---|"]
    lines += [f"| `{key}` | {_format(value)} |" for key, value in sorted(metrics.items())]
    if images:
        lines += ["", "## Figures", ""]
        for name, path in images.items():
            relative = Path(path).resolve().relative_to(run_dir.resolve())
            lines += [f"### {name}", "", f"![{name}]({relative.as_posix()})", ""]
    path = run_dir / "report.md"
    path.write_text("\n".join(lines) + "\n")
    return path
