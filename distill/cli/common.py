"""Shared plumbing of the entry points: build loggers, callbacks and the Trainer from
config, write metrics.json, and turn user errors into one-line messages."""

from __future__ import annotations

import functools
import json
import math
import os
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning as L
import torch
from hydra.utils import instantiate
from lightning.pytorch.loggers import CSVLogger, Logger, WandbLogger
from omegaconf import DictConfig, OmegaConf

from distill.models.base import NonFiniteTrainingError

USER_ERRORS = (ValueError, FileNotFoundError, NonFiniteTrainingError)


def exit_on_user_error(task: Callable[[DictConfig], Any]) -> Callable[[DictConfig], Any]:
    """Print a user error (bad config value, bad data, bad checkpoint, non-finite training)
    as one line and exit 1, instead of a traceback. DISTILL_TRACEBACK=1 shows the trace."""

    @functools.wraps(task)
    def wrapper(cfg: DictConfig) -> Any:
        try:
            return task(cfg)
        except USER_ERRORS as error:
            if os.environ.get("DISTILL_TRACEBACK"):
                raise
            print(f"error: {error}", file=sys.stderr)
            sys.exit(1)

    return wrapper


def build_loggers(cfg: DictConfig) -> list[Logger]:
    """The loggers of ``cfg.logger`` (name -> spec). W&B runs offline unless told otherwise;
    if W&B cannot start (no network in online mode, no login), fall back to a CSV logger
    with a warning instead of crashing or hanging."""
    loggers: list[Logger] = []
    for name, spec in (cfg.get("logger") or {}).items():
        if spec is None:
            continue
        if "wandb" in spec.get("_target_", "").lower():
            Path(spec.save_dir).mkdir(parents=True, exist_ok=True)
            os.environ.setdefault("WANDB_INIT_TIMEOUT", "60")
            try:
                logger = instantiate(spec)
                assert isinstance(logger, WandbLogger)
                logger.experiment  # noqa: B018  (starts the run now, where we can catch it)
            except Exception as error:
                warnings.warn(
                    f"W&B logger `{name}` could not start ({error}); logging to CSV instead. "
                    "Offline mode (logger.wandb.offline=true) needs no network or account.",
                    stacklevel=1,
                )
                logger = CSVLogger(spec.save_dir, name="csv")
        else:
            logger = instantiate(spec)
        loggers.append(logger)
    return loggers


def build_trainer(cfg: DictConfig, loggers: list[Logger]) -> L.Trainer:
    callbacks = [instantiate(spec) for spec in (cfg.get("callbacks") or {}).values() if spec]
    return instantiate(cfg.trainer, logger=loggers or False, callbacks=callbacks)


def log_config(loggers: list[Logger], cfg: DictConfig) -> None:
    config = OmegaConf.to_container(cfg, resolve=True)
    for logger in loggers:
        logger.log_hyperparams(config)


def finish_loggers(loggers: list[Logger], metrics: dict[str, float]) -> None:
    """Send the final metrics to every logger and close W&B runs cleanly. A logger that
    fails here only warns: the results are already in metrics.json."""
    numbers = {k: v for k, v in metrics.items() if isinstance(v, int | float) and math.isfinite(v)}
    for logger in loggers:
        try:
            logger.log_metrics(numbers)
            if isinstance(logger, WandbLogger):
                for key, value in numbers.items():
                    logger.experiment.summary[key] = value
            logger.finalize("success")
        except Exception as error:
            warnings.warn(
                f"logger {type(logger).__name__} could not record the final metrics ({error}); "
                "they are in metrics.json",
                stacklevel=1,
            )
    if any(isinstance(logger, WandbLogger) for logger in loggers):
        import wandb

        wandb.finish()


def write_metrics(path: str | Path, metrics: dict[str, Any]) -> Path:
    """Write (or update) the flat ``metrics.json`` of a run directory."""
    path = Path(path)
    existing = json.loads(path.read_text()) if path.exists() else {}
    existing.update(metrics)
    path.write_text(json.dumps(existing, indent=2, sort_keys=True) + "\n")
    return path


def fit(cfg: DictConfig, module: L.LightningModule, datamodule: L.LightningDataModule, prefix: str):
    """Build loggers and Trainer from ``cfg``, log the config, fit (resuming from
    ``cfg.ckpt_path`` if set) and reload the best checkpoint in eval mode.

    Returns ``(trainer, loggers, best module, metrics)`` with ``{prefix}/train_time_s`` and
    ``{prefix}/global_step`` in the metrics."""
    loggers = build_loggers(cfg)
    log_config(loggers, cfg)
    trainer = build_trainer(cfg, loggers)
    start = time.perf_counter()
    trainer.fit(module, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"))
    metrics = {
        f"{prefix}/train_time_s": time.perf_counter() - start,
        f"{prefix}/global_step": final_global_step(trainer),
    }
    callback = trainer.checkpoint_callback
    best = callback.best_model_path if callback is not None else ""
    if best:
        module = type(module).load_from_checkpoint(best, map_location=module.device)
    elif callback is not None and callback.dirpath:  # no validation ran: the final state
        best = str(Path(callback.dirpath) / "last.ckpt")
    metrics[f"{prefix}/checkpoint"] = best
    return trainer, loggers, module.eval(), metrics


def final_global_step(trainer: L.Trainer) -> int:
    """The global step training ended at. After ``ddp_spawn``/``ddp_fork`` the launching
    process's Trainer still says 0, so read it from the final ``last.ckpt`` then."""
    callback = trainer.checkpoint_callback
    if trainer.global_step or callback is None or not callback.dirpath:
        return trainer.global_step
    last = Path(callback.dirpath) / "last.ckpt"
    return torch.load(last, weights_only=True)["global_step"] if last.is_file() else 0
