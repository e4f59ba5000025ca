"""`distill-student teacher.ckpt=PATH`: the student stage alone, from a trained teacher
(Hydra entry point; config: student.yaml)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from distill.checks import validate
from distill.cli.common import entry_point
from distill.report import append_overrides_history, key_settings
from distill.stages import distill_student, load_teacher
from distill.training import run_overrides


def run(cfg: DictConfig) -> dict[str, Any] | None:
    """Distill ``cfg.teacher.ckpt`` into ``cfg.paths.output_dir``; the metrics (None off rank
    zero)."""
    validate(cfg, ("student",))
    run_dir = Path(cfg.paths.output_dir)
    append_overrides_history(run_dir, run_overrides())
    student = distill_student(cfg, load_teacher(cfg.teacher.ckpt), run_dir)
    if not student.is_global_zero:
        return None
    student.write(run_dir, run_overrides(), key_settings(cfg, ("student",)))
    return student.metrics


main = entry_point(
    "student",
    run,
    "student KL {student/kl_trimmed_mean:.4f} nats (1%-trimmed), test NLL {student/test_nll:.4f} "
    "vs teacher {teacher/test_nll:.4f}, sampling {sampling/speedup:.1f}x faster; run dir {run_dir}",
    "student KL {student/kl_per_step_trimmed_mean:.4f} nats per step (1%-trimmed), test NLL "
    "{student/test_nll_per_step:.4f} per step vs teacher {teacher/test_nll_per_step:.4f}, one "
    "second of audio sampled {sampling/b1_speedup:.1f}x faster; run dir {run_dir}",
)
