"""`distill-student teacher.ckpt=PATH`: the student stage alone, from a trained teacher
(Hydra entry point; config: student.yaml)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig

from distill.cli.common import exit_on_user_error
from distill.report import write_run
from distill.stages import distill_student, load_teacher
from distill.training import run_overrides


def run(cfg: DictConfig) -> dict[str, Any] | None:
    """Distill ``cfg.teacher.ckpt`` into ``cfg.paths.output_dir``; the metrics (None off rank
    zero)."""
    run_dir = Path(cfg.paths.output_dir)
    student = distill_student(cfg, load_teacher(cfg.teacher.ckpt), run_dir)
    if not student.is_global_zero:
        return None
    write_run(run_dir, student.metrics, student.figures, run_overrides())
    return student.metrics


@hydra.main(version_base="1.3", config_path="pkg://distill.conf", config_name="student")
@exit_on_user_error
def main(cfg: DictConfig) -> float | None:
    metrics = run(cfg)
    if metrics is None:
        return None
    print(
        f"student KL {metrics['student/kl_trimmed_mean']:.4f} nats (1%-trimmed), test NLL "
        f"{metrics['student/test_nll']:.4f} vs teacher {metrics['teacher/test_nll']:.4f}, "
        f"sampling {metrics['sampling/speedup']:.1f}x faster; run dir {cfg.paths.output_dir}"
    )
    return metrics["student/kl_trimmed_mean"]
