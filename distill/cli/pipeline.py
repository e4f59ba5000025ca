"""`distill`: the main job. Trains a teacher (or takes ``teacher.ckpt``), distills a student,
writes one report (Hydra entry point; config: distill.yaml).

The run directory holds ``teacher/`` and ``student/`` (each stage's checkpoints and logger
output) and, at the top, ``metrics.json``, ``plots/`` and ``report.md``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig

from distill.cli.common import exit_on_user_error
from distill.report import write_run
from distill.stages import distill_student, load_teacher, train_teacher
from distill.training import run_overrides


def run(cfg: DictConfig) -> dict[str, Any] | None:
    """Both stages into ``cfg.paths.output_dir``; the merged metrics (None off rank zero)."""
    run_dir = Path(cfg.paths.output_dir)
    if cfg.teacher.ckpt is None:
        trained = train_teacher(cfg, run_dir / "teacher")
        teacher, metrics = trained.module, trained.metrics
    else:
        teacher, metrics = load_teacher(cfg.teacher.ckpt), {"teacher/checkpoint": cfg.teacher.ckpt}
    student = distill_student(cfg, teacher, run_dir / "student")
    if not student.is_global_zero:
        return None
    metrics = {**metrics, **student.metrics}
    write_run(run_dir, metrics, student.figures, run_overrides())
    return metrics


@hydra.main(version_base="1.3", config_path="pkg://distill.conf", config_name="distill")
@exit_on_user_error
def main(cfg: DictConfig) -> float | None:
    metrics = run(cfg)
    if metrics is None:
        return None
    print(
        f"teacher test NLL {metrics['teacher/test_nll']:.4f}, "
        f"student {metrics['student/test_nll']:.4f}; "
        f"student KL {metrics['student/kl_trimmed_mean']:.4f} nats; "
        f"sampling {metrics['sampling/speedup']:.1f}x faster. "
        f"Report: {Path(cfg.paths.output_dir) / 'report.md'}"
    )
    return metrics["student/kl_trimmed_mean"]
