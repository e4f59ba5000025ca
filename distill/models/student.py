"""The IAF student: distilled from a frozen teacher by probability density distillation."""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from distill import plots
from distill.flows import Bijector, Chain, Flow, Permute, in_data_space
from distill.losses import DistillationObjective, reverse_kl
from distill.models.base import FlowModule, evaluating
from distill.models.teacher import TeacherModule
from distill.spec import build_from_spec, plain

INITS = ("identity", "teacher")


class StudentModule(FlowModule):
    """Trains ``student`` (an IAF in the teacher's preprocessed space) to match a frozen
    teacher, with the objective of `distill.losses.DistillationObjective`.

    Args:
        student: spec of the student flow (model space), e.g. ``build_iaf``.
        teacher: the teacher's hyper-parameters (flow and preprocessing specs, data facts):
            the student's checkpoint rebuilds its teacher too, weights included.
        loss: `DistillationObjective` arguments (``terms``, ``num_samples``, ``clip``, ...).
        optim: optimizer settings (`distill.models.optim.build_optimizer`).
        ema_decay: if > 0, evaluate and sample with an exponential moving average of the
            student's weights.
        init: "identity" (IAF layers start near the identity, on top of the teacher's
            preprocessing, i.e. at the data's scale) or "teacher" (copy the teacher's weights
            where the architectures match: the IAF layer then uses the teacher's MADE).
        seed: base seed of the student's noise; rank r of a DDP run uses ``seed + r``.

    The teacher stays in eval mode (BatchNorm uses running statistics) with
    ``requires_grad=False``, but on the autograd tape: d log p / dx reaches the student.
    """

    def __init__(
        self,
        student: Mapping[str, Any],
        teacher: Mapping[str, Any],
        loss: Mapping[str, Any],
        optim: Mapping[str, Any] | None = None,
        ema_decay: float = 0.0,
        init: str = "identity",
        seed: int = 0,
    ):
        super().__init__()
        if init not in INITS:
            raise ValueError(f"init must be one of {INITS}, got {init!r}")
        if not 0.0 <= ema_decay < 1.0:
            raise ValueError(f"ema_decay must be in [0, 1), got {ema_decay}")
        self.save_hyperparameters(
            {
                "student": plain(student),
                "teacher": plain(teacher),
                "loss": plain(loss),
                "optim": plain(optim) or {},
                "ema_decay": ema_decay,
                "init": init,
                "seed": seed,
            },
            logger=False,  # the entry point logs the whole resolved config
        )
        teacher = self.hparams.teacher
        self.teacher_flow: Flow = build_from_spec(teacher["flow"], "teacher flow")
        self.preprocessing: Bijector | None = (
            build_from_spec(teacher["preprocessing"], "preprocessing")
            if teacher.get("preprocessing")
            else None
        )
        self.model_flow: Flow = build_from_spec(self.hparams.student, "student")
        if self.model_flow.features != self.teacher_flow.features:
            raise ValueError(
                f"student acts on {self.model_flow.features} dimensions but the teacher on "
                f"{self.teacher_flow.features}: they must match (set student.features or use "
                "the teacher's data)"
            )
        self.objective = DistillationObjective(**self.hparams.loss)
        self.ema_flow = copy.deepcopy(self.model_flow) if ema_decay else None
        for frozen in (self.teacher_flow, self.preprocessing, self.ema_flow):
            if frozen is not None:
                frozen.requires_grad_(False)

    @classmethod
    def from_teacher(cls, teacher: TeacherModule, **kwargs: Any) -> StudentModule:
        """A student of the trained ``teacher`` (weights copied, then frozen)."""
        student = cls(teacher=dict(teacher.hparams), **kwargs)
        student.teacher_flow.load_state_dict(teacher.model_flow.state_dict())
        if student.preprocessing is not None:
            student.preprocessing.load_state_dict(teacher.preprocessing.state_dict())
        if student.hparams.init == "teacher":
            student._warm_start()
        return student

    def _warm_start(self) -> None:
        source, target = self.teacher_flow.state_dict(), self.model_flow.state_dict()
        shapes = {k: v.shape for k, v in source.items()}
        if shapes != {k: v.shape for k, v in target.items()}:
            raise ValueError(
                "init=teacher needs a student with the teacher's architecture (same layers, "
                "widths and permutations); use init=identity for a different student"
            )
        self.model_flow.load_state_dict(source)
        if self.ema_flow is not None:
            self.ema_flow.load_state_dict(source)

    def train(self, mode: bool = True) -> StudentModule:
        super().train(mode)
        for frozen in (self.teacher_flow, self.preprocessing, self.ema_flow):
            if frozen is not None:
                frozen.eval()
        return self

    @property
    def features(self) -> int:
        return self.model_flow.features

    @property
    def student_flow(self) -> Flow:
        """The student used for evaluation and sampling (EMA weights if enabled), model space."""
        return self.ema_flow if self.ema_flow is not None else self.model_flow

    @property
    def flow(self) -> Flow:
        """The student in data space."""
        return in_data_space(self.student_flow, self.preprocessing)

    @property
    def teacher(self) -> Flow:
        """The frozen teacher in data space."""
        return in_data_space(self.teacher_flow, self.preprocessing)

    def on_fit_start(self) -> None:
        # After seed_everything every rank draws the same noise: offset the stream by rank.
        torch.manual_seed(self.hparams.seed + self.global_rank)

    def _to_model_space(self, batch: Tensor) -> Tensor:
        return batch if self.preprocessing is None else self.preprocessing.inverse(batch)[0]

    def training_step(self, batch: Tensor, batch_idx: int) -> Tensor:
        data = self._to_model_space(batch) if "regression" in self.objective.terms else None
        loss, parts = self.objective(self.model_flow, self.teacher_flow, data)
        self.log("train/loss", loss, prog_bar=True, on_step=True, on_epoch=False)
        for name, value in parts.items():
            self.log(f"train/{name}", value, on_step=True, on_epoch=False)
        return loss

    def on_train_batch_end(self, outputs, batch, batch_idx: int) -> None:
        if self.ema_flow is None:
            return
        weight = 1.0 - self.hparams.ema_decay
        with torch.no_grad():
            for averaged, current in zip(
                self.ema_flow.parameters(), self.model_flow.parameters(), strict=True
            ):
                averaged.lerp_(current, weight)
            for averaged, current in zip(
                self.ema_flow.buffers(), self.model_flow.buffers(), strict=True
            ):
                averaged.copy_(current)

    def _evaluate(self, batch: Tensor, stage: str) -> None:
        """``{stage}/loss``: the training objective (what checkpoints select on), its terms,
        ``{stage}/kl`` (Monte Carlo KL(q || p)) and ``{stage}/nll`` (held-out, data space)."""
        data = self._to_model_space(batch) if "regression" in self.objective.terms else None
        loss, parts = self.objective(self.student_flow, self.teacher_flow, data)
        self.log(f"{stage}/loss", loss, sync_dist=True)
        for name, value in parts.items():
            self.log(f"{stage}/{name}", value, sync_dist=True)
        kl = parts.get("reverse_kl")
        if kl is None:
            kl = reverse_kl(self.student_flow, self.teacher_flow, self.objective.num_samples).mean()
        self.log(f"{stage}/kl", kl, prog_bar=stage == "val", sync_dist=True)
        nll = -self.flow.log_prob(batch).mean()
        self.log(f"{stage}/nll", nll, prog_bar=stage == "val", sync_dist=True)

    def validation_step(self, batch: Tensor, batch_idx: int) -> None:
        self._evaluate(batch, "val")

    def test_step(self, batch: Tensor, batch_idx: int) -> None:
        self._evaluate(batch, "test")

    @torch.no_grad()
    def sample(self, num_samples: int) -> Tensor:
        """``(num_samples, D)`` student samples in data space: one parallel pass per layer."""
        return self.flow.sample((num_samples,))

    @torch.no_grad()
    def taffy_steps(self, num_samples: int = 2000) -> tuple[list[Tensor], list[str]]:
        """The student's samples after each of its layers, noise -> data (permutations
        skipped; the last step is in data space)."""
        noise = self.student_flow.base.rsample((num_samples,))
        bijector = self.student_flow.bijector
        layers = list(bijector.bijectors) if isinstance(bijector, Chain) else [bijector]
        if self.preprocessing is not None:
            layers.append(self.preprocessing)
        steps, titles, h = [noise], ["noise"], noise
        for layer in layers:
            h, _ = layer(h)
            if not isinstance(layer, Permute):
                steps.append(h)
                titles.append(
                    "data space" if layer is self.preprocessing else f"layer {len(steps) - 1}"
                )
        return steps, titles

    def figures(self, data: Tensor, image_shape=None, num_samples: int = 4000) -> dict:
        """data | teacher | student samples, both densities and the taffy strip (2-D), or
        sample grids (images). ``data``: ``(N, D)`` reference points."""
        with evaluating(self):
            teacher_samples = self.teacher.sample((num_samples,))
            student_samples = self.sample(num_samples)
            if image_shape is not None:
                return {
                    "teacher_samples": plots.image_grid(teacher_samples, image_shape),
                    "student_samples": plots.image_grid(student_samples, image_shape),
                }
            if self.features != 2:
                return {}
            bounds = plots.plot_bounds(data)
            return {
                "samples": plots.scatter_panels(
                    {"data": data, "teacher": teacher_samples, "student": student_samples}, bounds
                ),
                "densities": plots.density_panels(
                    {"teacher": self.teacher.log_prob, "student": self.flow.log_prob},
                    bounds,
                    reference=student_samples,
                ),
                "taffy": plots.taffy_strip(*self.taffy_steps()),
            }
