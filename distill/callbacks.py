"""Lightning callbacks: periodic figures (PNG files + logger images)."""

from __future__ import annotations

from pathlib import Path

import lightning as L
from lightning.pytorch.loggers import TensorBoardLogger, WandbLogger
from lightning.pytorch.utilities import rank_zero_only

from distill.plots import save_figure


def log_images(trainer: L.Trainer, paths: dict[str, Path]) -> None:
    """Send saved PNGs to every logger that takes images (W&B, TensorBoard)."""
    for logger in trainer.loggers:
        if isinstance(logger, WandbLogger):
            for name, path in paths.items():
                logger.log_image(key=f"plots/{name}", images=[str(path)], step=trainer.global_step)
        elif isinstance(logger, TensorBoardLogger):
            import matplotlib.image

            for name, path in paths.items():
                image = matplotlib.image.imread(path)[..., :3]
                logger.experiment.add_image(
                    f"plots/{name}", image, trainer.global_step, dataformats="HWC"
                )


class FigureCallback(L.Callback):
    """Every ``every_n_epochs`` validation epochs and after training, on rank 0: asks the
    module for ``figures(data)`` (name -> Figure), writes ``<dirpath>/<name>.png`` and logs
    the images. ``data`` is the datamodule's validation data."""

    def __init__(self, dirpath: str | Path, every_n_epochs: int = 5):
        super().__init__()
        self.dirpath = Path(dirpath)
        self.every_n_epochs = every_n_epochs

    @rank_zero_only
    def _draw(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        datamodule = trainer.datamodule
        figures = module.figures(datamodule.val_data, getattr(datamodule, "image_shape", None))
        paths = {
            name: save_figure(fig, self.dirpath / f"{name}.png") for name, fig in figures.items()
        }
        log_images(trainer, paths)

    def on_validation_epoch_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        if trainer.sanity_checking or self.every_n_epochs <= 0:
            return
        if (trainer.current_epoch + 1) % self.every_n_epochs == 0:
            self._draw(trainer, module)

    def on_train_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        self._draw(trainer, module)
