"""The teacher: a `Flow` trained by maximum likelihood."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import Tensor

from distill.data import DensityDataModule, to_bits_per_dim
from distill.flows import Flow, in_data_space
from distill.models.base import FlowModule
from distill.spec import build_from_spec, plain


class TeacherModule(FlowModule):
    """Maximum likelihood training of a flow, reported in the data's own space.

    Args:
        flow: spec of the flow over the preprocessed ("model") space, e.g.
            ``{"_target_": "distill.flows.build_maf", "features": 2, "num_layers": 5}``.
        preprocessing: spec of the fixed bijector from model space to data space (its
            fitted statistics are buffers, restored from the checkpoint), or None.
        optim: optimizer settings, see `distill.models.optim.build_optimizer`.
        data: plain facts about the training data (``spec``, ``name``, ``features``,
            ``entropy``), kept in the checkpoint so later stages can check their data.

    ``self.flow`` is the flow in model space; ``in_data_space(self.flow, self.preprocessing)``
    its view in data space, where every logged NLL is: ``train/nll``, ``{val,test}/nll`` in
    nats (also as ``{val,test}/loss``, what checkpoints select on), and for D > 2 ``bpd``.
    """

    stage = "teacher"

    def __init__(
        self,
        flow: Mapping[str, Any],
        preprocessing: Mapping[str, Any] | None = None,
        optim: Mapping[str, Any] | None = None,
        data: Mapping[str, Any] | None = None,
    ):
        super().__init__(preprocessing)
        self.save_hyperparameters(
            {
                "flow": plain(flow),
                "preprocessing": plain(preprocessing),
                "optim": plain(optim) or {},
                "data": plain(data) or {},
            },
            logger=False,  # the entry point logs the whole resolved config
        )
        self.flow: Flow = build_from_spec(self.hparams.flow, "teacher.flow")

    @classmethod
    def from_datamodule(
        cls,
        datamodule: DensityDataModule,
        flow: Mapping[str, Any],
        optim: Mapping[str, Any] | None = None,
    ) -> TeacherModule:
        """A teacher of ``datamodule``'s data (after its ``setup``): the flow gets the data's
        dimension, the preprocessing the fitted statistics, the checkpoint the data's facts."""
        teacher = cls(
            flow={**plain(flow), "features": datamodule.features},
            preprocessing={
                "_target_": "distill.flows.build_preprocessing",
                **datamodule.preprocessing_config,
            },
            optim=optim,
            data={
                "spec": datamodule.spec,
                "name": datamodule.name,
                "features": datamodule.features,
                "entropy": datamodule.entropy,
            },
        )
        teacher.preprocessing.load_state_dict(datamodule.preprocessing.state_dict())
        return teacher

    @property
    def features(self) -> int:
        return self.flow.features

    def forward(self, x: Tensor) -> Tensor:
        """log p(x), data space, ``(..., D) -> (...)``."""
        return in_data_space(self.flow, self.preprocessing).log_prob(x)

    def training_step(self, batch: Tensor, batch_idx: int) -> Tensor:
        loss = -self(batch).mean()
        self.log("train/nll", loss, prog_bar=True, on_step=True, on_epoch=False)
        return loss

    def evaluate(self, batch: Tensor, stage: str) -> None:
        nll = -self(batch).mean()
        self.log(f"{stage}/nll", nll, prog_bar=stage == "val", sync_dist=True)
        self.log(f"{stage}/loss", nll, sync_dist=True)  # the objective: what checkpoints select on
        if self.features > 2:
            self.log(f"{stage}/bpd", to_bits_per_dim(nll, self.features), sync_dist=True)
