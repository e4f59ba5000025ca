"""`distill`: the main job. Trains a teacher, distills a student, writes one report.

Layout of the run directory: ``teacher/`` and ``student/`` (each a complete stage run:
checkpoints, plots, W&B run) and, at the top, the merged ``metrics.json`` and ``report.md``.
"""

from __future__ import annotations

import json
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf, open_dict

from distill.cli.common import exit_on_user_error, write_metrics
from distill.cli.student import distill_student
from distill.cli.teacher import train_teacher
from distill.report import write_report


def stage_config(cfg: DictConfig, stage: str, output_dir: Path) -> DictConfig:
    """A copy of ``cfg`` for one stage: its own output folder, step count and learning rate."""
    stage_cfg = OmegaConf.create(OmegaConf.to_container(cfg, resolve=False))
    settings = cfg.stages[stage]
    with open_dict(stage_cfg):
        stage_cfg.paths.output_dir = str(output_dir / stage)
        stage_cfg.trainer.max_steps = settings.max_steps
        stage_cfg.optim.lr = settings.lr
        stage_cfg.task_name = stage
        stage_cfg.ckpt_path = None
    return stage_cfg


def run_pipeline(cfg: DictConfig) -> dict:
    output_dir = Path(cfg.paths.output_dir)
    teacher_metrics = train_teacher(stage_config(cfg, "teacher", output_dir))
    student_metrics = distill_student(
        stage_config(cfg, "student", output_dir), teacher_ckpt=teacher_metrics["teacher/checkpoint"]
    )
    student_dir = output_dir / "student"
    merged = {
        **json.loads((output_dir / "teacher" / "metrics.json").read_text()),
        **json.loads((student_dir / "metrics.json").read_text()),
    }
    write_metrics(output_dir / "metrics.json", merged)
    images = {
        f"{stage} {p.stem}": p
        for stage in ("teacher", "student")
        for p in sorted((output_dir / stage / "plots").glob("*.png"))
    }
    write_report(output_dir, merged, images)
    return {**merged, **student_metrics}


@hydra.main(version_base="1.3", config_path="pkg://distill.conf", config_name="distill")
@exit_on_user_error
def main(cfg: DictConfig) -> float:
    metrics = run_pipeline(cfg)
    report = Path(cfg.paths.output_dir) / "report.md"
    print(
        f"teacher test NLL {metrics['teacher/test_nll']:.4f}, "
        f"student {metrics['student/test_nll']:.4f}; "
        f"student KL {metrics['student/kl_trimmed_mean']:.4f} nats; "
        f"sampling {metrics['sampling/speedup']:.1f}x faster. Report: {report}"
    )
    return metrics["student/kl_trimmed_mean"]
