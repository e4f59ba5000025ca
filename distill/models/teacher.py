"""The teacher: a `Flow` trained by maximum likelihood."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import Tensor

from distill.data import DensityDataModule, to_bits_per_dim
from distill.flows import Flow, SequenceFlow, in_data_space
from distill.models.base import FlowModule, split_batch
from distill.spec import build_from_spec, plain


def flow_shape(datamodule: DensityDataModule) -> dict[str, Any]:
    """The arguments that fit a flow builder to ``datamodule``'s data: ``{"features": D}`` for
    vectors; for sequences (``event_shape = (C, T)``) ``channels`` and ``length``, and the
    context's ``global_features`` or ``local_features`` with ``hop_length``."""
    event_shape = getattr(datamodule, "event_shape", None)
    if event_shape is None:
        return {"features": datamodule.features}
    channels, length = event_shape
    shape: dict[str, Any] = {"channels": channels, "length": length}
    context_shape = getattr(datamodule, "context_shape", None)
    if context_shape is not None and len(context_shape) == 1:
        shape["global_features"] = context_shape[0]
    elif context_shape is not None:
        shape["local_features"] = context_shape[0]
        shape["hop_length"] = datamodule.hop_length
    return shape


class TeacherModule(FlowModule):
    """Maximum likelihood training of a flow, reported in the data's own space.

    Args:
        flow: spec of the flow over the preprocessed ("model") space, e.g.
            ``{"_target_": "distill.flows.build_maf", "features": 2, "num_layers": 5}``.
        preprocessing: spec of the fixed bijector from model space to data space (its
            fitted statistics are buffers, restored from the checkpoint), or None.
        optim: optimizer settings, see `distill.models.optim.build_optimizer`.
        data: plain facts about the training data (``spec``, ``name``, ``features``,
            ``entropy``, ``flow_shape``), kept in the checkpoint so later stages can check
            their data and build a student of the same shape.

    ``self.flow`` is the flow in model space; ``in_data_space(self.flow, self.preprocessing)``
    its view in data space, where every logged NLL is: ``train/nll``, ``{val,test}/nll`` in
    nats (also as ``{val,test}/loss``, what checkpoints select on), and for D > 2 ``bpd``.
    Sequence flows also log ``nll_per_step`` (nats per value of a ``(C, T)`` sequence), which
    is then their loss (so learning rates do not depend on the crop length). Batches are
    ``x`` or ``(x, context)``.
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
        shape = flow_shape(datamodule)
        preprocessing = datamodule.preprocessing_config
        teacher = cls(
            flow={**plain(flow), **shape},
            preprocessing=(
                {"_target_": "distill.flows.build_preprocessing", **preprocessing}
                if preprocessing is not None
                else None
            ),
            optim=optim,
            data={
                "spec": datamodule.spec,
                "name": datamodule.name,
                "features": datamodule.features,
                "entropy": datamodule.entropy,
                "flow_shape": shape,
            },
        )
        if teacher.preprocessing is not None:
            teacher.preprocessing.load_state_dict(datamodule.preprocessing.state_dict())
        return teacher

    @property
    def flow_shape(self) -> dict[str, Any]:
        """The arguments that fit a flow builder to the teacher's data (`flow_shape`)."""
        return dict(self.hparams.data.get("flow_shape") or {"features": self.features})

    @property
    def features(self) -> int:
        return self.flow.features

    def forward(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        """log p(x | context), data space: ``(..., D) -> (...)`` or ``(..., C, T) -> (...)``."""
        return in_data_space(self.flow, self.preprocessing).log_prob(x, context)

    def _nll(self, batch, stage: str, on_step: bool) -> Tensor:
        """Log the batch's mean NLL (and per step for sequences); return the loss."""
        x, context = split_batch(batch)
        nll = -self(x, context).mean()
        log = {"on_step": True, "on_epoch": False} if on_step else {"sync_dist": True}
        sequence = isinstance(self.flow, SequenceFlow)
        self.log(f"{stage}/nll", nll, prog_bar=stage != "test" and not sequence, **log)
        if not sequence:
            return nll
        per_step = nll / x.shape[-2:].numel()
        self.log(f"{stage}/nll_per_step", per_step, prog_bar=stage != "test", **log)
        return per_step

    def training_step(self, batch, batch_idx: int) -> Tensor:
        return self._nll(batch, "train", on_step=True)

    def evaluate(self, batch, stage: str) -> None:
        loss = self._nll(batch, stage, on_step=False)
        self.log(f"{stage}/loss", loss, sync_dist=True)  # the objective: what checkpoints select on
        if self.features is not None and self.features > 2:  # loss is the NLL per vector
            self.log(f"{stage}/bpd", to_bits_per_dim(loss, self.features), sync_dist=True)
