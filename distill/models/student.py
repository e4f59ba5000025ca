"""The student: a flow distilled from a frozen teacher by probability density distillation."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from distill.flows import Flow, SequenceFlow, in_data_space
from distill.losses import DistillationObjective
from distill.models.base import FlowModule, split_batch
from distill.models.teacher import TeacherModule
from distill.spec import build_from_spec, plain

INITS = ("identity", "teacher")


def _event(flow: Flow) -> str:
    """What a flow acts on, for error messages and the student/teacher match."""
    if isinstance(flow, SequenceFlow):
        conditioning = flow.bijector.bijectors[0].conditioner
        context = conditioning.global_features or conditioning.local_features
        return f"sequences of {flow.channels} channel(s) with context of {context} feature(s)"
    return f"{flow.features} dimensions"


class StudentModule(FlowModule):
    """Trains a student flow (an IAF in the teacher's preprocessed space) to match a frozen
    teacher, with the objective of `distill.losses.DistillationObjective`.

    Args:
        student: spec of the student flow (model space), e.g. ``build_iaf``.
        teacher: the teacher's hyper-parameters (flow and preprocessing specs, data facts):
            the student's checkpoint rebuilds its teacher too, weights included.
        loss: `DistillationObjective` arguments (``terms``, ``num_samples``, ``clip``,
            ``schedule``); the training step passes the fraction of its steps done.
        optim: optimizer settings (`distill.models.optim.build_optimizer`).
        ema_decay: if > 0, evaluate and sample with an exponential moving average of the
            student's weights (``self.student_ema``).
        init: "identity" (layers start near the identity, on top of the teacher's
            preprocessing, i.e. at the data's scale) or "teacher" (a warm start: the teacher's
            weights copied into a student of the same architecture; the copied MADEs then read
            the noise instead of the data, so the student is close to, but neither, the teacher
            nor its inverse).
        seed: base seed of the student's noise; rank r of a DDP run uses ``seed + r``.

    Flows, all in model space: ``self.student`` (trained), ``self.teacher`` (frozen: eval
    mode, ``requires_grad=False``, but on the autograd tape, so d log p / dx reaches the
    student) and ``self.inference_student`` (the EMA if enabled, else ``self.student``). Data
    space views come from ``in_data_space(flow, self.preprocessing)``.
    """

    stage = "student"

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
        if init not in INITS:
            raise ValueError(f"student.init must be one of {INITS}, got {init!r}")
        if not 0.0 <= ema_decay < 1.0:
            raise ValueError(f"student.ema_decay must be in [0, 1), got {ema_decay}")
        super().__init__(teacher.get("preprocessing"))
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
        self.teacher: Flow = build_from_spec(self.hparams.teacher["flow"], "teacher.flow")
        self.student: Flow = build_from_spec(self.hparams.student, "student.flow")
        if _event(self.student) != _event(self.teacher):
            raise ValueError(
                f"the student acts on {_event(self.student)} but the teacher on "
                f"{_event(self.teacher)}: they must match (build the student with the "
                "teacher's flow_shape)"
            )
        self.objective = DistillationObjective(**self.hparams.loss)
        self.student_ema: AveragedModel | None = (
            AveragedModel(self.student, multi_avg_fn=get_ema_multi_avg_fn(ema_decay))
            if ema_decay
            else None
        )
        for frozen in (self.teacher, self.preprocessing, self.student_ema):
            if frozen is not None:
                # eval from the start: Lightning restores each submodule's own mode after its
                # sanity validation, bypassing `train` below, so a frozen part built in train
                # mode would stay there (a BatchNorm teacher then moves its statistics)
                frozen.requires_grad_(False).eval()

    @classmethod
    def from_teacher(cls, teacher: TeacherModule, **kwargs: Any) -> StudentModule:
        """A student of the trained ``teacher`` (its flow and preprocessing copied and frozen;
        with ``init="teacher"`` its weights also start the student)."""
        student = cls(teacher=dict(teacher.hparams), **kwargs)
        student.teacher.load_state_dict(teacher.flow.state_dict())
        if student.preprocessing is not None:
            student.preprocessing.load_state_dict(teacher.preprocessing.state_dict())
        if student.hparams.init == "teacher":
            student._warm_start()
        return student

    def _warm_start(self) -> None:
        """Copy the teacher's weights into the student. Orders, masks and permutations are
        structure kept out of state_dicts, so they are compared too: the same weights on
        reordered inputs would be another model."""
        source, target = self.teacher.state_dict(), self.student.state_dict()

        def structure(flow: Flow) -> dict[str, Tensor]:  # the buffers no state_dict holds
            learned = flow.state_dict().keys()
            return {name: b for name, b in flow.named_buffers() if name not in learned}

        same_shapes = {k: v.shape for k, v in source.items()} == {
            k: v.shape for k, v in target.items()
        }
        teacher_structure, student_structure = structure(self.teacher), structure(self.student)
        same_structure = teacher_structure.keys() == student_structure.keys() and all(
            torch.equal(teacher_structure[k], student_structure[k]) for k in teacher_structure
        )
        if not (same_shapes and same_structure):
            raise ValueError(
                "student.init=teacher needs a student with the teacher's architecture (same "
                "layers, widths, orders and permutations); use student.init=identity for a "
                "student of another shape"
            )
        self.student.load_state_dict(source)
        if self.student_ema is not None:
            self.student_ema.module.load_state_dict(source)

    def train(self, mode: bool = True) -> StudentModule:
        super().train(mode)
        for frozen in (self.teacher, self.preprocessing, self.student_ema):
            if frozen is not None:
                frozen.eval()
        return self

    @property
    def features(self) -> int:
        return self.student.features

    @property
    def inference_student(self) -> Flow:
        """The student used for evaluation, sampling and export (model space): the EMA of its
        weights if ``ema_decay > 0``, else the trained weights."""
        return self.student_ema.module if self.student_ema is not None else self.student

    def forward(self, num_samples: int, context: Tensor | None = None) -> Tensor:
        """``num_samples`` student samples in data space, ``(num_samples, D)`` or ``(num_samples,
        C, T)`` (given a context ``(B, ...)``: ``(num_samples, B, ...)``), one parallel pass
        per layer."""
        flow = in_data_space(self.inference_student, self.preprocessing)
        return flow.sample((num_samples,), context)

    def on_fit_start(self) -> None:
        # After seed_everything every rank draws the same noise: offset the stream by rank.
        torch.manual_seed(self.hparams.seed + self.global_rank)

    def _objective(
        self, student: Flow, batch, progress: float | None = None
    ) -> tuple[Tensor, dict[str, Tensor]]:
        x, context = split_batch(batch)
        data = self.to_model_space(x) if self.objective.needs_data else None
        return self.objective(student, self.teacher, data, progress, context)

    @property
    def progress(self) -> float:
        """The fraction of the training steps done, for the loss schedule (0 without a
        Trainer or a finite ``max_steps``)."""
        trainer = self._trainer
        max_steps = trainer.max_steps if trainer is not None else -1
        return min(self.global_step / max_steps, 1.0) if max_steps and max_steps > 0 else 0.0

    def training_step(self, batch, batch_idx: int) -> Tensor:
        progress = self.progress
        loss, parts = self._objective(self.student, batch, progress)
        self.log("train/loss", loss, prog_bar=True, on_step=True, on_epoch=False)
        for name, value in parts.items():
            self.log(f"train/{name}", value, on_step=True, on_epoch=False)
        if self.objective.schedule:
            for name, weight in self.objective.weights(progress).items():
                self.log(f"train/weight_{name}", weight, on_step=True, on_epoch=False)
        return loss

    def on_train_batch_end(self, outputs, batch, batch_idx: int) -> None:
        if self.student_ema is not None:
            self.student_ema.update_parameters(self.student)

    def evaluate(self, batch, stage: str) -> None:
        """``{stage}/loss``: the training objective with its final weights (what checkpoints
        select on, comparable across the steps of a loss schedule), its terms,
        ``{stage}/kl`` (Monte Carlo KL(q || p)) and ``{stage}/nll`` (held-out, data space).
        Sequence students log ``{stage}/kl_per_step`` instead of the NLL, which would take
        their sequential inverse (T steps per flow): the stage reports it once, on test data."""
        student = self.inference_student
        loss, parts = self._objective(student, batch)
        self.log(f"{stage}/loss", loss, sync_dist=True)
        for name, value in parts.items():
            self.log(f"{stage}/{name}", value, sync_dist=True)
        x, context = split_batch(batch)
        kl = parts.get("reverse_kl")
        if kl is None:
            kl = self.objective.evaluate("reverse_kl", student, self.teacher, context).mean()
        if isinstance(student, SequenceFlow):  # the objective's terms are per step
            self.log(f"{stage}/kl_per_step", kl, prog_bar=stage == "val", sync_dist=True)
            return
        self.log(f"{stage}/kl", kl, prog_bar=stage == "val", sync_dist=True)
        nll = -in_data_space(student, self.preprocessing).log_prob(x, context).mean()
        self.log(f"{stage}/nll", nll, prog_bar=stage == "val", sync_dist=True)
