"""`distill-student teacher.ckpt=PATH`: the student stage alone, from a trained teacher
(Hydra entry point; config: student.yaml)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig

from distill.checks import validate
from distill.cli.common import exit_on_user_error, optimized_metric
from distill.report import append_overrides_history, key_settings, write_run
from distill.stages import distill_student, load_teacher
from distill.training import run_overrides

log = logging.getLogger(__name__)


def run(cfg: DictConfig) -> dict[str, Any] | None:
    """Distill ``cfg.teacher.ckpt`` into ``cfg.paths.output_dir``; the metrics (None off rank
    zero)."""
    validate(cfg, ("student",))
    run_dir = Path(cfg.paths.output_dir)
    append_overrides_history(run_dir, run_overrides())
    student = distill_student(cfg, load_teacher(cfg.teacher.ckpt), run_dir)
    if not student.is_global_zero:
        return None
    write_run(
        run_dir, student.metrics, student.figures, run_overrides(), key_settings(cfg, ("student",))
    )
    return student.metrics


@hydra.main(version_base="1.3", config_path="pkg://distill.conf", config_name="student")
@exit_on_user_error
def main(cfg: DictConfig) -> float | None:
    metrics = run(cfg)
    if metrics is None:
        return None
    log.info(
        "student KL %.4f nats (1%%-trimmed), test NLL %.4f vs teacher %.4f, sampling %.1fx "
        "faster; run dir %s",
        metrics["student/kl_trimmed_mean"],
        metrics["student/test_nll"],
        metrics["teacher/test_nll"],
        metrics["sampling/speedup"],
        cfg.paths.output_dir,
    )
    return optimized_metric(cfg, metrics)
