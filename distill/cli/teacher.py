"""`distill-teacher`: train a MAF teacher by maximum likelihood (Hydra entry point)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import hydra
import lightning as L
from omegaconf import DictConfig

from distill.cli.common import (
    exit_on_user_error,
    finish_loggers,
    fit,
    write_metrics,
)
from distill.evaluate import test_nll
from distill.models import TeacherModule
from distill.spec import build_from_spec, plain


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
            "_target_": "distill.flows.build_preprocessing",
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
    trainer, loggers, module, fit_metrics = fit(cfg, module, datamodule, "teacher")
    metrics: dict[str, Any] = test_nll(module.flow, datamodule.test_data, "teacher")[0]
    metrics.update(fit_metrics)
    if datamodule.entropy is not None:
        metrics["data/entropy"] = datamodule.entropy
        metrics["teacher/excess_nll"] = metrics["teacher/test_nll"] - datamodule.entropy
    if trainer.is_global_zero:
        write_metrics(output_dir / "metrics.json", metrics)
    finish_loggers(loggers, metrics)
    return metrics


@hydra.main(version_base="1.3", config_path="pkg://distill.conf", config_name="teacher")
@exit_on_user_error
def main(cfg: DictConfig) -> float:
    metrics = train_teacher(cfg)
    print(
        f"teacher test NLL {metrics['teacher/test_nll']:.4f} nats; run dir {cfg.paths.output_dir}"
    )
    return metrics["teacher/test_nll"]
