"""`distill-student teacher.ckpt=PATH`: distill a trained teacher into an IAF student."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import hydra
import lightning as L
import torch
from omegaconf import DictConfig

from distill.callbacks import log_images
from distill.cli.common import (
    exit_on_user_error,
    finish_loggers,
    fit,
    write_metrics,
)
from distill.evaluate import evaluate_distillation
from distill.models import StudentModule, TeacherModule
from distill.plots import save_figure
from distill.report import write_report
from distill.spec import build_from_spec, plain


def load_teacher(path: str | Path) -> TeacherModule:
    """A trained teacher from its checkpoint, with one-line errors for a missing, corrupt or
    foreign file."""
    path = Path(str(path))
    if not path.is_file():
        raise FileNotFoundError(
            f"teacher checkpoint {path} does not exist: pass teacher.ckpt=<path to a .ckpt "
            "written by distill-teacher> (e.g. <run dir>/checkpoints/best.ckpt)"
        )
    try:
        teacher = TeacherModule.load_from_checkpoint(path, map_location="cpu")
    except Exception as error:
        raise ValueError(
            f"cannot load teacher checkpoint {path}: it is corrupt or not written by "
            f"distill-teacher ({type(error).__name__}: {str(error).splitlines()[0][:200]})"
        ) from error
    return teacher.eval()


def build_student_datamodule(cfg: DictConfig, teacher: TeacherModule) -> L.LightningDataModule:
    """The data to validate and test on: ``cfg.data`` if given, else the teacher's own data
    config from its checkpoint; its dimension must match the teacher's."""
    spec = plain(cfg.get("data")) or teacher.hparams.data.get("spec")
    if not spec:
        raise ValueError("the teacher checkpoint records no data config: pass data=<name>")
    datamodule = build_from_spec(spec, "data")
    datamodule.setup("fit")
    if datamodule.features != teacher.features:
        raise ValueError(
            f"the teacher was trained on {teacher.features}-dimensional data "
            f"({teacher.hparams.data.get('name')}) but data `{datamodule.name}` is "
            f"{datamodule.features}-dimensional: use the teacher's data set or another teacher"
        )
    return datamodule


def distill_student(cfg: DictConfig, teacher_ckpt: str | Path | None = None) -> dict[str, Any]:
    """Distill, evaluate, plot, write ``metrics.json`` and ``report.md``; returns the metrics."""
    L.seed_everything(cfg.seed, workers=True)
    output_dir = Path(cfg.paths.output_dir)
    teacher = load_teacher(teacher_ckpt or cfg.teacher.ckpt)
    datamodule = build_student_datamodule(cfg, teacher)
    student_spec = {**plain(cfg.student), "features": teacher.features}
    module = StudentModule.from_teacher(
        teacher,
        student=student_spec,
        loss=cfg.loss,
        optim=cfg.optim,
        ema_decay=cfg.ema_decay,
        init=cfg.init,
        seed=cfg.seed,
    )
    trainer, loggers, module, metrics = fit(cfg, module, datamodule, "student")
    if trainer.is_global_zero:
        metrics.update(evaluate_test(cfg, module, datamodule, trainer, output_dir))
        metrics_path = write_metrics(output_dir / "metrics.json", metrics)
        images = {p.stem: p for p in sorted((output_dir / "plots").glob("*.png"))}
        write_report(output_dir, json.loads(metrics_path.read_text()), images)
    finish_loggers(loggers, metrics)
    return metrics


@torch.no_grad()
def evaluate_test(
    cfg: DictConfig,
    module: StudentModule,
    datamodule: L.LightningDataModule,
    trainer: L.Trainer,
    output_dir: Path,
) -> dict[str, Any]:
    """Final metrics on the test split and the final figures (PNG + logger images)."""
    metrics = evaluate_distillation(
        module.student_flow,
        module.teacher_flow,
        datamodule.test_data,
        module.preprocessing,
        num_kl_samples=cfg.evaluation.num_kl_samples,
        num_timing_samples=cfg.evaluation.num_timing_samples,
    )
    entropy = datamodule.entropy
    if entropy is not None:
        metrics["data/entropy"] = entropy
        metrics["teacher/excess_nll"] = metrics["teacher/test_nll"] - entropy
        metrics["student/excess_nll"] = metrics["student/test_nll"] - entropy
    figures = module.figures(datamodule.test_data, getattr(datamodule, "image_shape", None))
    paths = {
        name: save_figure(fig, output_dir / "plots" / f"{name}.png")
        for name, fig in figures.items()
    }
    log_images(trainer, paths)
    return metrics


@hydra.main(version_base="1.3", config_path="pkg://distill.conf", config_name="student")
@exit_on_user_error
def main(cfg: DictConfig) -> float:
    metrics = distill_student(cfg)
    print(
        f"student KL {metrics['student/kl_trimmed_mean']:.4f} nats (1%-trimmed), test NLL "
        f"{metrics['student/test_nll']:.4f} vs teacher {metrics['teacher/test_nll']:.4f}, "
        f"sampling {metrics['sampling/speedup']:.1f}x faster; run dir {cfg.paths.output_dir}"
    )
    return metrics["student/kl_trimmed_mean"]
