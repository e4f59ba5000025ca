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
from torch import Tensor

from distill.plots import save_figure
from distill.spectral import write_wav

# (label, teacher key, student key): the rows shown side by side.
SIDE_BY_SIDE = [
    ("held-out NLL (nats), mean", "teacher/test_nll", "student/test_nll"),
    ("held-out NLL per step (nats)", "teacher/test_nll_per_step", "student/test_nll_per_step"),
    (
        "average spectrum vs the data's (dB, RMS)",
        "teacher/log_spectral_distance",
        "student/log_spectral_distance",
    ),
    (
        "samples' power over the data's (dB)",
        "teacher/relative_power_db",
        "student/relative_power_db",
    ),
    (
        "notes within a semitone of the asked pitch",
        "teacher/pitch_within_semitone",
        "student/pitch_within_semitone",
    ),
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
        shape = (
            f"flows of {list(flow['layers_per_flow'])} WaveNet blocks, "
            f"{flow.get('residual_channels')} channels"
            if "layers_per_flow" in flow
            else f"{flow.get('num_layers')} layers of {list(flow.get('hidden_features', []))}"
        )
        settings[f"{stage}.flow"] = (
            f"{flow['_target_'].rsplit('.', 1)[-1]} ({flow.get('transform', 'affine')}, {shape})"
        )
        settings[f"{stage}.optim"] = f"{node['optim']['name']} lr {node['optim']['lr']}"
        settings[f"{stage}.trainer.max_steps"] = node["trainer"]["max_steps"]
    if "student" in stages:
        settings["student.loss.terms"] = dict(cfg["student"]["loss"]["terms"])
        settings["student.init"] = cfg["student"]["init"]
    return settings


def write_audio(
    directory: str | Path, audio: Mapping[str, Tensor], sample_rate: int
) -> dict[str, list[Path]]:
    """``directory/audio/<role>_<i>.wav`` (16-bit PCM) for each role's sequences ``(N, C, T)``;
    the paths by role."""
    directory = Path(directory)
    paths: dict[str, list[Path]] = {}
    for role, sequences in audio.items():
        paths[role] = []
        for index, sequence in enumerate(sequences):
            path = directory / "audio" / f"{role}_{index}.wav"
            path.parent.mkdir(parents=True, exist_ok=True)
            write_wav(path, sequence.detach().cpu(), sample_rate)
            paths[role].append(path)
    return paths


def write_run(
    run_dir: str | Path,
    metrics: Mapping[str, Any],
    figures: Mapping[str, Figure],
    overrides: Sequence[str] = (),
    settings: Mapping[str, Any] | None = None,
    sounds: Mapping[str, Sequence[Path]] | None = None,
) -> Path:
    """Write ``run_dir/metrics.json`` (afresh), ``run_dir/plots/<name>.png`` and
    ``run_dir/report.md`` (``settings``: the config's key values, see `key_settings`;
    ``sounds``: a sequence run's WAV files by role, `write_audio`, linked from the report);
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
    return write_report(run_dir, metrics, images, overrides, settings, sounds)


def write_report(
    run_dir: Path,
    metrics: Mapping[str, Any],
    images: Mapping[str, Path],
    overrides: Sequence[str] = (),
    settings: Mapping[str, Any] | None = None,
    sounds: Mapping[str, Sequence[Path]] | None = None,
) -> Path:
    """``run_dir/report.md``: the overrides of the run and its key settings, a teacher |
    student table, every metric, the images and the audio files (linked relative to the run
    directory)."""
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
    for batch in (1, 16):
        if f"sampling/b{batch}_speedup" in metrics:
            key = f"sampling/b{batch}"
            lines += [
                "",
                f"At batch {batch}, the student samples {metrics['sampling/seconds_of_audio']:g} s "
                f"of audio {_format(metrics[key + '_speedup'])}x faster than the cached teacher "
                f"({_format(metrics[key + '_student_s'])} s vs "
                f"{_format(metrics[key + '_teacher_s'])} s; median of "
                f"{metrics.get(key + '_rounds', '?')} paired rounds, interquartile range "
                f"{_format(metrics.get(key + '_speedup_q25'))}–"
                f"{_format(metrics.get(key + '_speedup_q75'))}; "
                f"{metrics.get(key + '_cpu_threads', '?')} CPU thread(s) for both).",
            ]
    if "sampling/speedup" in metrics:
        lines += [
            "",
            f"The student samples {_format(metrics['sampling/speedup'])}x faster than the teacher "
            f"(median of {metrics.get('sampling/rounds', '?')} paired rounds, interquartile range "
            f"{_format(metrics.get('sampling/speedup_q25'))}–"
            f"{_format(metrics.get('sampling/speedup_q75'))}; "
            f"{metrics.get('sampling/cpu_threads', '?')} CPU thread(s) for both).",
        ]
    lines += ["", "## All metrics", "", "| metric | value |", "|---|---|"]
    lines += [f"| `{key}` | {_format(value)} |" for key, value in sorted(metrics.items())]
    if images:
        lines += ["", "## Figures", ""]
        for name, path in images.items():
            relative = Path(path).resolve().relative_to(run_dir.resolve())
            lines += [f"### {name}", "", f"![{name}]({relative.as_posix()})", ""]
    if sounds:
        lines += ["", "## Audio", ""]
        for role, paths in sounds.items():
            links = ", ".join(
                f"[{p.stem}]({p.resolve().relative_to(run_dir.resolve()).as_posix()})"
                for p in paths
            )
            lines.append(f"- {role}: {links}")
    path = run_dir / "report.md"
    path.write_text("\n".join(lines) + "\n")
    return path
