"""`report.md`: the metrics table of a run, teacher and student side by side, with its plots."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

# (label, teacher key, student key): the rows shown side by side.
SIDE_BY_SIDE = [
    ("held-out NLL (nats), mean", "teacher/test_nll", "student/test_nll"),
    ("held-out NLL (nats), median", "teacher/test_nll_median", "student/test_nll_median"),
    ("held-out bits/dim", "teacher/test_bpd", "student/test_bpd"),
    ("sampling time (s)", "sampling/teacher_s", "sampling/student_s"),
]


def _format(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def write_report(
    run_dir: str | Path, metrics: Mapping[str, object], images: Mapping[str, str | Path]
) -> Path:
    """Write ``run_dir/report.md``: a teacher | student table, every metric, and the images
    (paths relative to the run directory)."""
    run_dir = Path(run_dir)
    lines = [
        "# distill report",
        "",
        "## Teacher vs student",
        "",
        "| | teacher | student |",
        "|---|---|---|",
    ]
    for label, teacher_key, student_key in SIDE_BY_SIDE:
        if teacher_key in metrics or student_key in metrics:
            lines.append(
                f"| {label} | {_format(metrics.get(teacher_key, '—'))} | "
                f"{_format(metrics.get(student_key, '—'))} |"
            )
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
