"""The MAF teacher: a `Flow` trained by maximum likelihood."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from distill import plots
from distill.flows import Bijector, Flow, in_data_space
from distill.models.base import FlowModule, evaluating
from distill.spec import build_from_spec, plain


class TeacherModule(FlowModule):
    """Maximum likelihood training of a flow, reported in the data's own space.

    Args:
        flow: spec of the flow over the preprocessed ("model") space, e.g.
            ``{"_target_": "distill.flows.build_maf", "features": 2, "num_layers": 5}``.
        preprocessing: spec of the fixed bijector from model space to data space (its
            fitted statistics are buffers, restored from the checkpoint), or None.
        optim: optimizer settings, see `distill.models.optim.build_optimizer`.
        data: plain facts about the training data (``name``, ``features``, ``entropy``),
            kept in the checkpoint so later stages can check they get matching data.

    ``self.flow`` is the teacher in data space: log_prob, samples and every logged NLL
    include the preprocessing's log-det. Logged: ``train/nll`` (progress bar),
    ``{val,test}/nll`` in nats (also as ``{val,test}/loss``, the objective that checkpoints
    select on), and for D > 2 ``nats_per_dim`` and ``bpd`` (bits/dim).
    """

    def __init__(
        self,
        flow: Mapping[str, Any],
        preprocessing: Mapping[str, Any] | None = None,
        optim: Mapping[str, Any] | None = None,
        data: Mapping[str, Any] | None = None,
    ):
        super().__init__()
        self.save_hyperparameters(
            {
                "flow": plain(flow),
                "preprocessing": plain(preprocessing),
                "optim": plain(optim) or {},
                "data": plain(data) or {},
            },
            logger=False,  # the entry point logs the whole resolved config
        )
        self.model_flow: Flow = build_from_spec(self.hparams.flow, "flow")
        self.preprocessing: Bijector | None = (
            build_from_spec(self.hparams.preprocessing, "preprocessing")
            if self.hparams.preprocessing
            else None
        )

    @property
    def features(self) -> int:
        return self.model_flow.features

    @property
    def flow(self) -> Flow:
        """The teacher in data space: the learned flow, then the fixed preprocessing."""
        return in_data_space(self.model_flow, self.preprocessing)

    def forward(self, x: Tensor) -> Tensor:
        """log p(x), data space, ``(..., D) -> (...)``."""
        return self.flow.log_prob(x)

    def training_step(self, batch: Tensor, batch_idx: int) -> Tensor:
        loss = -self.flow.log_prob(batch).mean()
        self.log("train/nll", loss, prog_bar=True, on_step=True, on_epoch=False)
        return loss

    def _evaluate(self, batch: Tensor, stage: str) -> None:
        nll = -self.flow.log_prob(batch).mean()
        self.log(f"{stage}/nll", nll, prog_bar=stage == "val", sync_dist=True)
        self.log(f"{stage}/loss", nll, sync_dist=True)  # the objective: what checkpoints select on
        if self.features > 2:
            per_dim = nll / self.features
            self.log(f"{stage}/nats_per_dim", per_dim, sync_dist=True)
            self.log(f"{stage}/bpd", per_dim / math.log(2.0), sync_dist=True)

    def validation_step(self, batch: Tensor, batch_idx: int) -> None:
        self._evaluate(batch, "val")

    def test_step(self, batch: Tensor, batch_idx: int) -> None:
        self._evaluate(batch, "test")

    @torch.no_grad()
    def sample(self, num_samples: int) -> Tensor:
        """``(num_samples, D)`` samples in data space (D sequential passes per MAF layer)."""
        return self.flow.sample((num_samples,))

    def figures(self, data: Tensor, image_shape=None, num_samples: int = 4000) -> dict:
        """Data vs teacher samples, and the teacher's log-density heatmap (2-D data), or a
        grid of samples (image data). ``data``: ``(N, D)`` reference points."""
        with evaluating(self):
            samples = self.sample(num_samples)
            if image_shape is not None:
                return {"teacher_samples": plots.image_grid(samples, image_shape)}
            if self.features != 2:
                return {}
            bounds = plots.plot_bounds(data)
            return {
                "teacher_samples": plots.scatter_panels({"data": data, "teacher": samples}, bounds),
                "teacher_density": plots.density_panels(
                    {"teacher": self.flow.log_prob}, bounds, reference=samples
                ),
            }
