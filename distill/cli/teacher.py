"""`distill-teacher`: the teacher stage alone (Hydra entry point; config: teacher.yaml)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from distill.checks import validate
from distill.cli.common import entry_point
from distill.report import append_overrides_history, key_settings
from distill.stages import train_teacher
from distill.training import run_overrides


def run(cfg: DictConfig) -> dict[str, Any] | None:
    """Train the teacher into ``cfg.paths.output_dir``; its metrics (None off rank zero)."""
    validate(cfg, ("teacher",))
    run_dir = Path(cfg.paths.output_dir)
    append_overrides_history(run_dir, run_overrides())
    teacher = train_teacher(cfg, run_dir)
    if not teacher.is_global_zero:
        return None
    teacher.write(run_dir, run_overrides(), key_settings(cfg, ("teacher",)))
    return teacher.metrics


main = entry_point(
    "teacher",
    run,
    "teacher test NLL {teacher/test_nll:.4f} nats; run dir {run_dir}",
)
