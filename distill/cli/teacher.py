"""`distill-teacher`: the teacher stage alone (Hydra entry point; config: teacher.yaml)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig

from distill.checks import validate
from distill.cli.common import exit_on_user_error, optimized_metric
from distill.report import append_overrides_history, key_settings, write_run
from distill.stages import train_teacher
from distill.training import run_overrides

log = logging.getLogger(__name__)


def run(cfg: DictConfig) -> dict[str, Any] | None:
    """Train the teacher into ``cfg.paths.output_dir``; its metrics (None off rank zero)."""
    validate(cfg, ("teacher",))
    run_dir = Path(cfg.paths.output_dir)
    append_overrides_history(run_dir, run_overrides())
    teacher = train_teacher(cfg, run_dir)
    if not teacher.is_global_zero:
        return None
    write_run(
        run_dir, teacher.metrics, teacher.figures, run_overrides(), key_settings(cfg, ("teacher",))
    )
    return teacher.metrics


@hydra.main(version_base="1.3", config_path="pkg://distill.conf", config_name="teacher")
@exit_on_user_error
def main(cfg: DictConfig) -> float | None:
    metrics = run(cfg)
    if metrics is None:
        return None
    log.info(
        "teacher test NLL %.4f nats; run dir %s", metrics["teacher/test_nll"], cfg.paths.output_dir
    )
    return optimized_metric(cfg, metrics)
