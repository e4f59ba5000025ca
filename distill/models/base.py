"""What the teacher and the student modules share: the preprocessing that maps their model space
to the data's, optimizer set-up, gradient-norm logging, the guard that stops non-finite training
with a usable checkpoint, and loading for inference."""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import lightning as L
import torch

from distill.flows import Bijector
from distill.models.optim import build_optimizer
from distill.spec import build_from_spec, without_unread


def _hyper_parameters(source) -> dict[str, Any]:
    """The hyper-parameters stored in the checkpoint at ``source`` (a path or a file object,
    left where it was), read under ``weights_only``."""
    if hasattr(source, "seek"):
        position = source.tell()
        checkpoint = torch.load(source, map_location="cpu", weights_only=True)
        source.seek(position)
    else:
        checkpoint = torch.load(source, map_location="cpu", weights_only=True, mmap=True)
    return dict(checkpoint.get("hyper_parameters") or {})


@contextmanager
def evaluating(module: torch.nn.Module) -> Iterator[None]:
    """Eval mode and no gradients for the block; the previous mode is restored after."""
    was_training = module.training
    module.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        module.train(was_training)


def split_batch(batch: torch.Tensor | tuple | list) -> tuple[torch.Tensor, torch.Tensor | None]:
    """A data batch as ``(x, context)``: data modules yield ``x`` alone, or ``(x, context)``
    for conditional data (a context per row)."""
    if isinstance(batch, tuple | list):
        x, context = batch
        return x, context
    return batch, None


def resumed_seed(seed: int, step: int) -> int:
    """The seed of a run resumed at ``step`` from one seeded ``seed`` (rank offset included):
    distinct for every step, rank and seed below 2^32, within torch's 64-bit seeds."""
    return seed + (step << 32)


class NonFiniteTrainingError(RuntimeError):
    """Training produced a non-finite loss or gradient; the last finite state was saved."""


class FlowModule(L.LightningModule):
    """Base of the distill modules: flows in a model space, mapped to the data's own space by a
    fixed ``preprocessing`` bijector (forward: model -> data; None for the identity).

    Subclasses save ``optim`` (plain values, see `build_optimizer`) among their hyper-parameters,
    return their loss from ``training_step`` and log ``{stage}/loss`` in ``evaluate(batch,
    stage)``, the objective that checkpoints select on.
    """

    def __init__(self, preprocessing: Mapping[str, Any] | None):
        super().__init__()
        self.preprocessing: Bijector | None = (
            build_from_spec(preprocessing, "preprocessing") if preprocessing else None
        )

    @classmethod
    def load_from_checkpoint(cls, checkpoint_path, *args, **kwargs):
        """Lightning's loader, returning the module in eval mode, ready for inference (in
        training mode a BatchNorm bijector would use batch statistics and update its running
        ones on every call). Resuming training goes through the Trainer, which sets train mode."""
        kwargs.setdefault("weights_only", True)
        stored = _hyper_parameters(checkpoint_path)
        cleaned, dropped = without_unread(stored)
        if dropped:
            warnings.warn(
                f"{checkpoint_path}: dropped settings that its flows never read (written "
                f"before the builders refused them): {', '.join(dropped)}",
                stacklevel=2,
            )
            changed = {key: cleaned[key] for key in stored if cleaned[key] != stored[key]}
            kwargs = {**changed, **kwargs}
        return super().load_from_checkpoint(checkpoint_path, *args, **kwargs).eval()

    def to_model_space(self, x: torch.Tensor) -> torch.Tensor:
        """Data -> model space, same shape (the preprocessing's inverse)."""
        return x if self.preprocessing is None else self.preprocessing.inverse(x)[0]

    def evaluate(self, batch: torch.Tensor, stage: str) -> None:
        raise NotImplementedError

    def validation_step(self, batch, batch_idx: int) -> None:
        self.evaluate(batch, "val")

    def test_step(self, batch, batch_idx: int) -> None:
        self.evaluate(batch, "test")

    def configure_optimizers(self):
        return build_optimizer(
            (p for p in self.parameters() if p.requires_grad),
            self.hparams.optim,
            self.trainer.estimated_stepping_batches,
        )

    def on_fit_start(self) -> None:
        # After seed_everything every rank draws the same random numbers (a teacher's
        # dequantization noise, a student's samples): offset each rank's stream by its rank.
        torch.manual_seed(torch.initial_seed() + self.global_rank)

    def on_train_start(self) -> None:
        """Apply the configured learning rate, also when training resumes: a checkpoint restores
        the optimizer's learning rate and the schedule's base rates of the run it came from,
        which would silently override a new ``optim.lr``.

        A resumed run also moves to a random stream of its own (`resumed_seed`): seeded as at
        the start, it would draw the noise, samples and crops of steps 0, 1, ... again."""
        if self.trainer.ckpt_path is not None:
            torch.manual_seed(resumed_seed(torch.initial_seed(), self.global_step))
        lr = float(self.hparams.optim.get("lr", 1e-3))
        for config in self.trainer.lr_scheduler_configs:
            scheduler = config.scheduler
            scheduler.base_lrs = [lr] * len(scheduler.base_lrs)
            factors = [f(scheduler.last_epoch) for f in getattr(scheduler, "lr_lambdas", [])]
            for group, factor in zip(scheduler.optimizer.param_groups, factors, strict=False):
                group["initial_lr"], group["lr"] = lr, lr * factor

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        """Log the learning rate and gradient norm. Remember the weights whose gradient is
        finite; when a gradient is not, write them to ``rescue.ckpt`` (``last.ckpt`` is kept)
        and stop with a message that says what to do."""
        self.log("train/lr", optimizer.param_groups[0]["lr"], on_step=True, on_epoch=False)
        parameters = [p for p in self.parameters() if p.grad is not None]
        if not parameters:
            return
        norm = torch.linalg.vector_norm(
            torch.stack([torch.linalg.vector_norm(p.grad) for p in parameters])
        )
        self.log("train/grad_norm", norm, on_step=True, on_epoch=False)
        if not torch.isfinite(norm):
            path = self._save_rescue_checkpoint(parameters)
            stage = self.stage
            raise NonFiniteTrainingError(
                f"training became non-finite at global step {self.global_step} (gradient norm "
                f"{norm.item()}). The last weights with a finite gradient are in {path} "
                f"(last.ckpt is unchanged). Lower {stage}.optim.lr, tighten "
                f"{stage}.trainer.gradient_clip_val or the flow's log_scale_bound, then resume "
                f"with {stage}.resume={path}"
            )
        with torch.no_grad():
            if self._finite_weights is None:
                self._finite_weights = [p.detach().clone() for p in parameters]
            else:
                for kept, parameter in zip(self._finite_weights, parameters, strict=True):
                    kept.copy_(parameter)

    _finite_weights: list[torch.Tensor] | None = None
    stage: str  # the config node of the module's stage: "teacher" or "student"

    def on_train_end(self) -> None:
        """Lightning writes ``last.ckpt`` at the last validation; make it the final state, so
        that resuming from it continues exactly where training stopped."""
        callback = self.trainer.checkpoint_callback
        if callback is not None and callback.save_last and callback.dirpath:
            self.trainer.save_checkpoint(Path(callback.dirpath) / "last.ckpt", weights_only=False)

    def _save_rescue_checkpoint(self, parameters: list[torch.nn.Parameter]) -> Path:
        """``rescue.ckpt`` beside the checkpoints: the optimizer's state, with the weights of
        the last step whose gradient was finite (the current ones on a first step)."""
        callback = self.trainer.checkpoint_callback
        directory = Path(
            callback.dirpath
            if callback is not None and callback.dirpath
            else self.trainer.default_root_dir
        )
        if self._finite_weights is not None:
            with torch.no_grad():
                for parameter, kept in zip(parameters, self._finite_weights, strict=True):
                    parameter.copy_(kept)
        path = directory / "rescue.ckpt"
        self.trainer.save_checkpoint(path, weights_only=False)
        return path
