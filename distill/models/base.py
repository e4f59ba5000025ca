"""What the teacher and the student modules share: optimizer set-up, gradient-norm logging,
and the guard that stops non-finite training with a usable checkpoint."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import lightning as L
import torch

from distill.models.optim import build_optimizer


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


class NonFiniteTrainingError(RuntimeError):
    """Training produced a non-finite loss or gradient; the last finite state was saved."""


class FlowModule(L.LightningModule):
    """Base of the distill modules. Subclasses set ``self.hparams.optim`` (plain values, see
    `build_optimizer`) and return their loss from ``training_step``."""

    def configure_optimizers(self):
        return build_optimizer(
            (p for p in self.parameters() if p.requires_grad),
            self.hparams.optim,
            self.trainer.estimated_stepping_batches,
        )

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        """Log the learning rate and gradient norm. Before a non-finite gradient reaches the
        weights, save the last finite state as ``last.ckpt`` and stop with a message that says
        what to do."""
        self.log("train/lr", optimizer.param_groups[0]["lr"], on_step=True, on_epoch=False)
        grads = [p.grad for p in self.parameters() if p.grad is not None]
        if not grads:
            return
        norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))
        self.log("train/grad_norm", norm, on_step=True, on_epoch=False)
        if not torch.isfinite(norm):
            path = self._save_rescue_checkpoint()
            raise NonFiniteTrainingError(
                f"training became non-finite at global step {self.global_step} (gradient norm "
                f"{norm.item()}). The last finite weights and optimizer state are in {path}. "
                "Lower optim.lr, tighten trainer.gradient_clip_val or the flow's "
                "log_scale_bound, then resume with ckpt_path=" + str(path)
            )

    def on_train_end(self) -> None:
        """Lightning writes ``last.ckpt`` at the last validation; make it the final state, so
        that resuming from it continues exactly where training stopped."""
        callback = self.trainer.checkpoint_callback
        if callback is not None and callback.save_last and callback.dirpath:
            self.trainer.save_checkpoint(Path(callback.dirpath) / "last.ckpt")

    def _save_rescue_checkpoint(self) -> Path:
        callback = self.trainer.checkpoint_callback
        directory = Path(
            callback.dirpath
            if callback is not None and callback.dirpath
            else self.trainer.default_root_dir
        )
        path = directory / "last.ckpt"
        self.trainer.save_checkpoint(path)
        return path
