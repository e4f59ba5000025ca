"""`distill-teacher`: train a MAF teacher by maximum likelihood (Hydra entry point)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import hydra
import lightning as L
from omegaconf import DictConfig

from distill.cli.common import (
    build_loggers,
    build_trainer,
    exit_on_user_error,
    final_global_step,
    finish_loggers,
    log_config,
    write_metrics,
)
from distill.evaluate import test_nll
from distill.models import TeacherModule
from distill.models.spec import build_from_spec, plain


def build_datamodule(cfg: DictConfig) -> L.LightningDataModule:
    """Instantiate ``cfg.data`` and fit its preprocessing (``setup``)."""
    datamodule = build_from_spec(plain(cfg.data), "data")
    datamodule.setup("fit")
    return datamodule


def train_teacher(cfg: DictConfig) -> dict[str, Any]:
    """Fit, evaluate the best checkpoint on the test split, write ``metrics.json``; returns
    the metrics and (under ``"teacher/checkpoint"``) the best checkpoint's path."""
    L.seed_everything(cfg.seed, workers=True)
    output_dir = Path(cfg.paths.output_dir)
    datamodule = build_datamodule(cfg)
    module = TeacherModule(
        flow={**plain(cfg.flow), "features": datamodule.features},
        preprocessing={
            "_target_": "distill.data.build_preprocessing",
            **datamodule.preprocessing_config,
        },
        optim=cfg.optim,
        data={
            "spec": plain(cfg.data),
            "name": datamodule.name,
            "features": datamodule.features,
            "entropy": datamodule.entropy,
        },
    )
    module.preprocessing.load_state_dict(datamodule.preprocessing.state_dict())
    loggers = build_loggers(cfg)
    log_config(loggers, cfg)
    trainer = build_trainer(cfg, loggers)

    start = time.perf_counter()
    trainer.fit(module, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"))
    train_time = time.perf_counter() - start
    best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
    if best:
        module = TeacherModule.load_from_checkpoint(best, map_location=module.device)
    metrics: dict[str, Any] = test_nll(module.eval().flow, datamodule.test_data, "teacher")[0]
    metrics["teacher/train_time_s"] = train_time
    metrics["teacher/global_step"] = final_global_step(trainer)
    if datamodule.entropy is not None:
        metrics["data/entropy"] = datamodule.entropy
        metrics["teacher/excess_nll"] = metrics["teacher/test_nll"] - datamodule.entropy
    if trainer.is_global_zero:
        write_metrics(output_dir / "metrics.json", metrics)
    finish_loggers(loggers, metrics)
    return {**metrics, "teacher/checkpoint": best}


@hydra.main(version_base="1.3", config_path="pkg://distill.conf", config_name="teacher")
@exit_on_user_error
def main(cfg: DictConfig) -> float:
    metrics = train_teacher(cfg)
    print(
        f"teacher test NLL {metrics['teacher/test_nll']:.4f} nats; run dir {cfg.paths.output_dir}"
    )
    return metrics["teacher/test_nll"]
