"""From a stage's config to a fitted module: loggers, callbacks and the Trainer, built from the
composed config (never edited), each placed in the stage's directory where the config leaves
its directory unset (``null``)."""

from __future__ import annotations

import logging
import math
import os
import signal
import sys
import threading
import time
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from lightning.pytorch.loggers import CSVLogger, Logger, TensorBoardLogger, WandbLogger
from lightning.pytorch.utilities.exceptions import SIGTERMException
from matplotlib.figure import Figure
from omegaconf import DictConfig, OmegaConf

from distill.checkpoint_io import AtomicCheckpointIO
from distill.plots import figure_to_array
from distill.spectral import read_wav
from distill.wandb_setup import finish_wandb, wandb_can_go_online

# Lightning 2.6 builds a torch LeafSpec for every dataloader, which torch 2.13 deprecates: a
# warning on every run that no argument avoids. Only that message is silenced.
warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated")
log = logging.getLogger(__name__)

# Lightning's start-up banner (accelerators, a product tip) is not the run's own output.
logging.getLogger("lightning.pytorch.utilities.rank_zero").setLevel(logging.WARNING)


def _placed(spec: DictConfig | Mapping, **defaults: Any) -> dict[str, Any]:
    """A plain copy of ``spec`` with each key of ``defaults`` filled in where the config leaves
    it unset (``null``); a value the user set is kept."""
    plain = (
        OmegaConf.to_container(spec, resolve=True) if isinstance(spec, DictConfig) else dict(spec)
    )
    for key, value in defaults.items():
        if plain.get(key) is None:
            plain[key] = value
    return plain


def run_overrides() -> list[str]:
    """The command-line overrides of the current Hydra job (empty outside a Hydra app)."""
    if not HydraConfig.initialized():
        return []
    return list(HydraConfig.get().overrides.task)


def requeued() -> bool:
    """Whether this process is a SLURM job started again after a requeue (preemption, time
    limit, ``scontrol requeue``): it then resumes its stages from their ``last.ckpt``."""
    return int(os.environ.get("SLURM_RESTART_COUNT", "0") or 0) > 0


def sweep_dir() -> Path | None:
    """The sweep directory of a Hydra multirun job, else None."""
    if not HydraConfig.initialized():
        return None
    hydra = HydraConfig.get()
    return Path(hydra.sweep.dir) if hydra.mode.name == "MULTIRUN" else None


def run_tags(cfg: DictConfig, stage: str) -> list[str]:
    """W&B tags of a stage: the data set, the stage's flow builder and transform, its loss
    terms (student): what tells the runs of a sweep apart at a glance."""
    node = cfg[stage]
    flow = node.flow
    tags = [
        f"data:{cfg.data.get('name', '?')}",
        f"flow:{flow.get('_target_', '?').rsplit('.', 1)[-1]}",
        f"transform:{flow.get('transform', 'affine')}",
    ]
    if stage == "student":
        tags += [f"loss:{term}" for term in node.loss.terms] + [f"init:{node.init}"]
    return tags


def build_loggers(cfg: DictConfig, stage: str, stage_dir: Path) -> list[Logger]:
    """The loggers of ``cfg.logger`` (name -> spec), writing into ``stage_dir``. W&B runs
    offline unless told otherwise, named after the stage and the run's overrides, grouped by
    sweep, with the stage as job type; if it cannot start, the run falls back to a CSV logger
    with a warning instead of crashing or hanging."""
    loggers: list[Logger] = []
    overrides = run_overrides()
    for name, spec in (cfg.get("logger") or {}).items():
        if spec is None:
            continue
        if "wandb" in spec.get("_target_", "").lower():
            resuming = cfg[stage].get("resume") is not None or requeued()
            loggers.append(
                _wandb_logger(
                    name, spec, stage, stage_dir, overrides, run_tags(cfg, stage), resuming
                )
            )
        else:
            logger = instantiate(_placed(spec, save_dir=str(stage_dir)))
            # Fix the version folder now: training processes forked or spawned later, and this
            # process after them (the final metrics), must all write into the same one.
            logger.version  # noqa: B018
            loggers.append(logger)
    return loggers


WANDB_ID_FILE = "wandb_run_id"


def _wandb_logger(
    name: str,
    spec: DictConfig,
    stage: str,
    stage_dir: Path,
    overrides: list[str],
    tags: list[str],
    resuming: bool,
) -> Logger:
    """A W&B logger for the stage. Its run id is kept in ``stage_dir``: a resumed stage
    continues the same W&B run (``resume="allow"``) instead of splitting its curves."""
    stage_dir.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("WANDB_INIT_TIMEOUT", "60")
    os.environ.setdefault("WANDB_SILENT", "true")  # W&B's console chatter: WANDB_SILENT=false
    wants_online = not spec.get("offline") and os.environ.get("WANDB_MODE") not in (
        "offline",
        "disabled",
    )
    if wants_online:
        online, reason = wandb_can_go_online()
        if not online:
            warnings.warn(
                f"W&B logger `{name}` cannot go online ({reason}); logging offline instead. "
                "Set WANDB_API_KEY (or `wandb login`) to log online.",
                stacklevel=1,
            )
            spec = {**_placed(spec), "offline": True, "log_model": False}
            # W&B's global settings keep the mode of their first use (the check's: online)
            os.environ["WANDB_MODE"] = "offline"
            import wandb

            wandb.teardown()
    id_file = stage_dir / WANDB_ID_FILE
    run_id = id_file.read_text().strip() if resuming and id_file.is_file() else None
    placed = _placed(
        spec,
        save_dir=str(stage_dir),
        name=" ".join([stage, *overrides]),
        group=str(sweep_dir()) if sweep_dir() else None,
        job_type=stage,
        tags=tags,
        id=run_id,
        resume="allow" if run_id else None,
    )
    try:
        logger = instantiate(placed)
        id_file.write_text(logger.experiment.id + "\n")  # starts the run, where it can fail
    except Exception as error:
        warnings.warn(
            f"W&B logger `{name}` could not start ({error}); logging to CSV instead. "
            "Offline mode (logger.wandb.offline=true) needs no network or account.",
            stacklevel=1,
        )
        logger = CSVLogger(str(stage_dir), name="csv")
    return logger


class SaveOnTerminate(L.Callback):
    """On SIGTERM (a scheduler's stop, a preemption) Lightning ends ``fit`` after the current
    step; this writes that state as ``last.ckpt`` first, so the run resumes from it.

    A SLURM stop also ends W&B's service, with the rows it had not yet written: the checkpoint
    keeps the W&B logger's last rows, and the resumed run logs again those the stopped run's W&B
    file lacks, before its first step (``SafeWandbLogger``).

    The resumed run's curve continues at the step after the stop. Lightning numbers logged rows
    by its count of batches that stepped, and restores that count one ahead from a state saved
    after an epoch's validation (it takes it for a state saved during validation, before the
    count moves): the rows were numbered from one step too far, so the curve missed the stop's
    step and ended one past the last. The checkpoint keeps the step of the next row, the
    optimizer steps made (one per stepped batch: automatic optimization, one optimizer), and the
    resumed run logs its first batch there."""

    def __init__(self) -> None:
        self.next_row: int | None = None  # the step of the first row after a stop
        self.wandb_rows: list[dict[str, Any]] = []  # the W&B loggers' last rows at a stop

    def on_exception(self, trainer: L.Trainer, module: L.LightningModule, exception) -> None:
        callback = trainer.checkpoint_callback
        if isinstance(exception, SIGTERMException) and callback is not None and callback.dirpath:
            self.next_row = trainer.global_step
            self.wandb_rows = [
                rows
                for logger in trainer.loggers
                if hasattr(logger, "unwritten_rows") and (rows := logger.unwritten_rows())
            ]
            trainer.save_checkpoint(Path(callback.dirpath) / "last.ckpt", weights_only=False)

    def state_dict(self) -> dict[str, Any]:
        state = {} if self.next_row is None else {"next_row": self.next_row}
        return {**state, "wandb_rows": self.wandb_rows} if self.wandb_rows else state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.next_row = state_dict.get("next_row")
        self.wandb_rows = state_dict.get("wandb_rows", [])

    def on_train_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        for logger in trainer.loggers:
            for rows in self.wandb_rows if hasattr(logger, "log_lost_rows") else ():
                logger.log_lost_rows(rows)
        self.wandb_rows = []

    def on_train_batch_start(self, trainer: L.Trainer, module: L.LightningModule, *_) -> None:
        if self.next_row is not None and module.automatic_optimization:
            trainer.fit_loop.epoch_loop._batches_that_stepped = self.next_row
        self.next_row = None


class DeferredRequeue:
    """submitit's time-limit (and preemption) signal, deferred to the end of a training step.

    submitit answers its signal (SIGUSR2 unless ``SUBMITIT_PREEMPT_SIGNAL`` says otherwise,
    sent ``signal_delay_s`` before the time limit) by requeueing the job and exiting from
    inside its handler, wherever training is: the stage lost its steps since the last
    epoch-end checkpoint, and a state caught half-way through an optimizer step could not be
    saved. While a stage trains, this context takes that signal instead and sends the process
    SIGTERM, which Lightning turns into a stop after the current step, where `SaveOnTerminate`
    writes ``last.ckpt``; `fit` then calls `requeue`, submitit's own handler, which requeues
    the job (rank 0) and exits. Outside submitit, or off the main thread, it does nothing."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self.handler: Any = None
        self.received = False

    def __enter__(self) -> DeferredRequeue:
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGUSR1, signal.SIGUSR2):
                handler = signal.getsignal(signum)
                if getattr(handler, "__name__", "") == "checkpoint_and_try_requeue":
                    self.signum, self.handler = signum, handler
                    signal.signal(signum, self._defer)
                    break
        return self

    def _defer(self, signum: int, frame: Any) -> None:
        log.warning(
            "received %s (a time limit or a preemption): stopping after this step",
            signal.Signals(signum).name,
        )
        self.received = True
        os.kill(os.getpid(), signal.SIGTERM)

    def __exit__(self, *exc_info: Any) -> None:
        if self.signum is not None:
            signal.signal(self.signum, self.handler)

    def requeue(self) -> None:
        """If the signal came: submitit's handler (requeue the job, then exit)."""
        if self.received:
            self.handler(self.signum, None)


class LogConfig(L.Callback):
    """Logs the resolved config as hyper-parameters from inside the training processes. Logged
    from the launching process before ``fit``, a logger's writer would exist before a
    ``ddp_fork`` fork: CSV then keeps only its header and TensorBoard deadlocks in its flush."""

    def __init__(self, config: dict[str, Any]):
        self.config = config

    def on_fit_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        for logger in trainer.loggers:
            logger.log_hyperparams(self.config)


class Terminated(SystemExit):
    """The run stopped on SIGTERM: exit status 143 (128 + 15), as a killed process reports."""

    code = 143

    def __init__(self) -> None:
        super().__init__(self.code)


def build_trainer(
    stage_cfg: DictConfig,
    loggers: list[Logger],
    stage_dir: Path,
    extra_callbacks: list[L.Callback] = (),
) -> L.Trainer:
    """The stage's Trainer and callbacks; checkpoints go to ``stage_dir/checkpoints`` unless the
    config names a directory, and progress bars show only on a terminal unless set."""
    callbacks = []
    for spec in (stage_cfg.get("callbacks") or {}).values():
        if spec is None:
            continue
        placed = _placed(spec)
        if placed.get("_target_", "").endswith("ModelCheckpoint"):
            placed = _placed(placed, dirpath=str(stage_dir / "checkpoints"))
        callbacks.append(instantiate(placed))
    callbacks += [SaveOnTerminate(), *extra_callbacks]
    trainer = _placed(
        stage_cfg.trainer,
        default_root_dir=str(stage_dir),
        enable_progress_bar=sys.stderr.isatty(),
    )
    return instantiate(
        trainer, logger=loggers or False, callbacks=callbacks, plugins=[AtomicCheckpointIO()]
    )


def fit(
    cfg: DictConfig,
    stage: str,
    module: L.LightningModule,
    datamodule: L.LightningDataModule,
    stage_dir: Path,
) -> tuple[L.Trainer, list[Logger], L.LightningModule, dict[str, Any]]:
    """Fit ``module`` with the Trainer of ``cfg[stage]`` (resuming from ``cfg[stage].resume``
    if set), logging the resolved config, then reload the best checkpoint in eval mode.

    Returns ``(trainer, loggers, best module, metrics)`` with ``{stage}/train_time_s``,
    ``{stage}/global_step`` and ``{stage}/checkpoint`` in the metrics."""
    stage_cfg = cfg[stage]
    resume = stage_cfg.get("resume")
    if resume is None and requeued() and (stage_dir / "checkpoints" / "last.ckpt").is_file():
        resume = "last"
        log.info("requeued SLURM job: resuming the %s from its last.ckpt", stage)
    if resume == "last" and not (stage_dir / "checkpoints" / "last.ckpt").is_file():
        raise FileNotFoundError(
            f"{stage}.resume=last but {stage_dir / 'checkpoints'} holds no last.ckpt: pass "
            f"hydra.run.dir=<the run's directory>, or {stage}.resume=<path to a .ckpt>"
        )
    if resume is not None:
        check_resumable(
            Path(resume) if resume != "last" else stage_dir / "checkpoints" / "last.ckpt",
            module,
            stage,
        )
    loggers = build_loggers(cfg, stage, stage_dir)
    config = OmegaConf.to_container(cfg, resolve=True)
    trainer = build_trainer(stage_cfg, loggers, stage_dir, [LogConfig(config)])
    start = time.perf_counter()
    deferred = DeferredRequeue()
    try:
        with deferred, warnings.catch_warnings():
            if stage == "student":  # its frozen teacher (and EMA) are in eval mode by design
                warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode")
            trainer.fit(module, datamodule=datamodule, ckpt_path=resume, weights_only=True)
    except SIGTERMException:
        log.error(
            "stopped by SIGTERM at global step %d; resume with %s.resume=last and "
            "hydra.run.dir=<this run's directory>",
            trainer.global_step,
            stage,
        )
        for logger in loggers:  # the rows logged up to the stop, flushed
            logger.finalize("failed")
        if any(isinstance(logger, WandbLogger) for logger in loggers):
            finish_wandb(exit_code=Terminated.code)  # warns if W&B's service is gone
        if os.environ.get("SLURM_JOB_ID"):
            deferred.requeue()  # submitit's time limit: it requeues the job and exits
            # A SLURM stop (preemption, scontrol requeue) is followed by a requeue: leave no
            # result for submitit to collect, so its launcher waits for the requeued run.
            os._exit(Terminated.code)
        raise Terminated() from None
    metrics = {
        f"{stage}/train_time_s": time.perf_counter() - start,
        f"{stage}/global_step": final_global_step(trainer),
    }
    callback = trainer.checkpoint_callback
    best = callback.best_model_path if callback is not None else ""
    # Lightning's teardown leaves the module on the CPU: the evaluation runs where training did
    device = trainer.strategy.root_device
    if best:
        module = type(module).load_from_checkpoint(best, map_location=device)
    else:
        module = module.to(device)
        if callback is not None and callback.dirpath:  # no validation ran: the final state
            best = str(Path(callback.dirpath) / "last.ckpt")
    metrics[f"{stage}/checkpoint"] = best
    if metrics[f"{stage}/global_step"] == 0:
        raise ValueError(
            f"the {stage} trained 0 steps: no rank got a full batch (data.batch_size="
            f"{datamodule.batch_size}, {len(datamodule.train_data)} training rows over "
            f"{trainer.world_size} process(es)); lower data.batch_size or use more data"
        )
    if trainer.global_step != metrics[f"{stage}/global_step"]:
        # Trained in forked or spawned processes: this process's CSV writer would replace the
        # curves they wrote with its own rows; the final metrics are in metrics.json anyway.
        loggers = [logger for logger in loggers if not isinstance(logger, CSVLogger)]
    return trainer, loggers, module.eval(), metrics


def check_resumable(path: Path, module: L.LightningModule, stage: str) -> None:
    """A one-line error unless ``path`` is a full checkpoint of ``module``'s architecture (a
    truncated file, random bytes, another stage's or another flow's checkpoint)."""
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
        saved = checkpoint["state_dict"]
        optimizer_states = checkpoint["optimizer_states"]
    except Exception as error:
        reason = str(error).splitlines()[0][:160] if str(error) else type(error).__name__
        raise ValueError(
            f"cannot resume {stage} from {path}: it is not a complete training checkpoint "
            f"({type(error).__name__}: {reason}); resume from another checkpoint of this stage "
            "(best.ckpt keeps its weights), or start afresh"
        ) from None
    expected = {k: tuple(v.shape) for k, v in module.state_dict().items()}
    found = {k: tuple(v.shape) for k, v in saved.items()}
    if expected != found or not optimizer_states:
        differ = sorted(set(expected.items()) ^ set(found.items()))[:3]
        raise ValueError(
            f"cannot resume {stage} from {path}: it holds another model than this config builds "
            f"(first differences: {differ}); resume with the overrides the run was started with"
        )


def final_global_step(trainer: L.Trainer) -> int:
    """The global step training ended at. After ``ddp_spawn``/``ddp_fork`` the launching
    process's Trainer still says 0, so read it from the final ``last.ckpt`` then."""
    callback = trainer.checkpoint_callback
    if trainer.global_step or callback is None or not callback.dirpath:
        return trainer.global_step
    last = Path(callback.dirpath) / "last.ckpt"
    return torch.load(last, weights_only=True)["global_step"] if last.is_file() else 0


def finish_loggers(
    loggers: list[Logger],
    metrics: Mapping[str, Any],
    figures: Mapping[str, Figure],
    step: int,
    main_metric: str,
    audio: Mapping[str, Sequence[Path]] | None = None,
) -> None:
    """Send the final metrics (to W&B's run summary too; TensorBoard's ``hp_metric`` is the
    stage's ``main_metric``), the figures and, for sequences, the ``audio`` examples (role ->
    WAV files; to W&B and TensorBoard) to every logger, and close the runs. A logger that
    fails here only warns: the results are written to the run directory anyway."""
    numbers = {k: v for k, v in metrics.items() if isinstance(v, int | float) and math.isfinite(v)}
    images = {name: figure_to_array(figure) for name, figure in figures.items()}
    for logger in loggers:
        try:
            logger.log_metrics(numbers, step=step)
            if isinstance(logger, WandbLogger):
                for name, image in images.items():
                    logger.log_image(key=f"plots/{name}", images=[image], step=step)
                if audio:  # one key per file: a list of wandb.Audio needs the soundfile codec
                    import wandb

                    clips = {
                        f"audio/{path.stem}": wandb.Audio(str(path))
                        for paths in audio.values()
                        for path in paths
                    }
                    logger.log_metrics(clips, step=step)
                logger.experiment.summary.update(numbers)
            elif isinstance(logger, TensorBoardLogger):
                for name, image in images.items():
                    logger.experiment.add_image(f"plots/{name}", image, step, dataformats="HWC")
                for paths in (audio or {}).values():
                    for path in paths:
                        wave, sample_rate = read_wav(path)
                        logger.experiment.add_audio(
                            f"audio/{path.stem}", wave[0], step, sample_rate
                        )
                if main_metric in numbers:
                    logger.log_metrics({"hp_metric": numbers[main_metric]}, step=step)
            logger.finalize("success")
        except Exception as error:
            warnings.warn(
                f"logger {type(logger).__name__} could not record the final results ({error}); "
                "they are in the run directory",
                stacklevel=1,
            )
    if any(isinstance(logger, WandbLogger) for logger in loggers):
        finish_wandb()
