"""The two stages of a run, from the composed config to results: train a teacher, distill a
student. Each returns its module, metrics and figures; the entry points write them to disk once
(`distill.report.write_run`)."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning as L
import torch
from matplotlib.figure import Figure
from omegaconf import DictConfig
from torch import Tensor

from distill.data import DensityDataModule
from distill.evaluate import evaluate_distillation, in_support_fraction, test_nll
from distill.evaluate_sequences import evaluate_sequence_distillation, evaluate_sequence_teacher
from distill.figures import flow_figures, sequence_figures, taffy
from distill.flows import SequenceFlow, in_data_space
from distill.models import StudentModule, TeacherModule
from distill.models.teacher import flow_shape
from distill.report import write_audio, write_run
from distill.spec import build_from_spec, plain
from distill.threads import cpu_threads
from distill.training import finish_loggers, fit

log = logging.getLogger(__name__)


@dataclass
class StageResult:
    """What a stage leaves: the trained module (best checkpoint, eval mode), its metrics and
    figures. Only the global-zero process of a distributed run evaluates: elsewhere the
    metrics hold the training facts alone and there are no figures."""

    module: TeacherModule | StudentModule
    metrics: dict[str, Any]
    figures: dict[str, Figure] = field(default_factory=dict)
    is_global_zero: bool = True
    #: sequences: WAV files of a few samples per role (data, teacher, student), in the stage's
    #: ``audio/`` folder
    audio: dict[str, list[Path]] = field(default_factory=dict)

    def write(self, run_dir: Path, overrides, settings) -> Path:
        """`write_run` of this result into ``run_dir``."""
        return write_run(run_dir, self.metrics, self.figures, overrides, settings, self.audio)


#: Sequence runs keep this many samples per role as WAV files (and W&B audio).
AUDIO_EXAMPLES = 4


def build_datamodule(spec: dict[str, Any]) -> DensityDataModule:
    """The data module of a plain ``data`` spec, set up (splits made, preprocessing fitted)."""
    datamodule = build_from_spec(spec, "data")
    datamodule.setup("fit")
    return datamodule


def _data_metrics(datamodule: DensityDataModule, metrics: dict[str, Any]) -> dict[str, Any]:
    """``data/entropy`` and each model's ``excess_nll`` (test NLL - entropy) where it is known."""
    if datamodule.entropy is None:
        return {}
    extra: dict[str, Any] = {"data/entropy": datamodule.entropy}
    for role in ("teacher", "student"):
        if f"{role}/test_nll" in metrics:
            extra[f"{role}/excess_nll"] = metrics[f"{role}/test_nll"] - datamodule.entropy
    return extra


def _support_metrics(datamodule: DensityDataModule, flows: dict[str, Any]) -> dict[str, float]:
    """``{role}/in_support``: the fraction of 10k samples of each data-space flow inside the
    data's known support (SIGGRAPH's glyphs, checkerboard's squares); nothing where unknown."""
    if datamodule.in_support(datamodule.test_data[:1]) is None:
        return {}  # unknown support: no sampling
    return {
        f"{role}/in_support": in_support_fraction(flow, datamodule.in_support)
        for role, flow in flows.items()
    }


def parameter_count(module) -> int:
    """The number of trainable values of a flow (its learned weights; no buffers)."""
    return sum(p.numel() for p in module.parameters())


def train_teacher(
    cfg: DictConfig, stage_dir: Path, student_flow: DictConfig | None = None
) -> StageResult:
    """The ``teacher`` stage: maximum likelihood on ``cfg.data``; metrics on the test split.

    ``student_flow``: the spec of a student to distill next (`distill`), built once against
    the data before the teacher trains, so that a setting its builder refuses (such as
    ``context_hidden`` on unconditional data) fails in seconds, not after the teacher."""
    L.seed_everything(cfg.seed, workers=True)
    datamodule = build_datamodule(plain(cfg.data))
    if student_flow is not None:
        with torch.random.fork_rng(devices=[]):  # the teacher's initialization stays as seeded
            build_from_spec(student_flow, "student.flow", **flow_shape(datamodule))
    module = TeacherModule.from_datamodule(datamodule, cfg.teacher.flow, cfg.teacher.optim)
    log.info(
        "teacher stage: %s on %s (%d parameters), %d steps, into %s",
        cfg.teacher.flow._target_,
        datamodule.name,
        parameter_count(module.flow),
        cfg.teacher.trainer.max_steps,
        stage_dir,
    )
    trainer, loggers, module, metrics = fit(cfg, "teacher", module, datamodule, stage_dir)
    result = StageResult(module, metrics, is_global_zero=trainer.is_global_zero)
    if trainer.is_global_zero and isinstance(module.flow, SequenceFlow):
        teacher = in_data_space(module.flow, module.preprocessing)
        sequence_metrics, samples = evaluate_sequence_teacher(teacher, datamodule)
        metrics.update(sequence_metrics)
        metrics["teacher/parameters"] = parameter_count(module.flow)
        _sequence_outputs(result, samples, datamodule.sample_rate, metrics, stage_dir)
    elif trainer.is_global_zero:
        teacher = in_data_space(module.flow, module.preprocessing)
        metrics.update(test_nll(teacher, datamodule.test_data, "teacher")[0])
        metrics.update(_data_metrics(datamodule, metrics))
        metrics.update(_support_metrics(datamodule, {"teacher": teacher}))
        metrics["teacher/parameters"] = parameter_count(module.flow)
        result.figures = flow_figures(
            {"teacher": teacher},
            datamodule.test_data,
            {"teacher": metrics["teacher/test_nll"]},
            datamodule.image_shape,
        )
    finish_loggers(
        loggers,
        metrics,
        result.figures,
        metrics["teacher/global_step"],
        "teacher/test_nll",
        result.audio,
    )
    if "teacher/test_nll" in metrics:
        log.info("teacher stage done: held-out NLL %.4f nats", metrics["teacher/test_nll"])
    return result


def _sequence_outputs(
    result: StageResult,
    samples: dict[str, Tensor],
    sample_rate: int,
    metrics: dict[str, Any],
    stage_dir: Path,
) -> None:
    """A sequence stage's spectrogram figure, and its audio examples as WAV files in
    ``stage_dir/audio``."""
    nll = {
        role: metrics[f"{role}/test_nll_per_step"]
        for role in ("teacher", "student")
        if f"{role}/test_nll_per_step" in metrics
    }
    result.figures = sequence_figures(samples, sample_rate, nll)
    examples = {role: x[:AUDIO_EXAMPLES] for role, x in samples.items()}
    result.audio = write_audio(stage_dir, examples, sample_rate)


def load_teacher(path: str | Path) -> TeacherModule:
    """A trained teacher from its checkpoint (eval mode), with one-line errors for a missing,
    corrupt or foreign file."""
    path = Path(str(path))
    if not path.is_file():
        raise FileNotFoundError(
            f"teacher checkpoint {path} does not exist: pass teacher.ckpt=<path to a .ckpt "
            "written by distill-teacher> (e.g. <run dir>/checkpoints/best.ckpt)"
        )
    try:
        return TeacherModule.load_from_checkpoint(path, map_location="cpu")
    except Exception as error:
        message = str(error).splitlines()[0][:200] if str(error) else "no message"
        raise ValueError(
            f"cannot load teacher checkpoint {path}: it is corrupt or not written by "
            f"distill-teacher ({type(error).__name__}: {message})"
        ) from error


def student_datamodule(cfg: DictConfig, teacher: TeacherModule) -> DensityDataModule:
    """The data to validate and test a student on: ``cfg.data``, which must be the data set the
    teacher was trained on (its sizes and seed may differ) and of the teacher's dimension."""
    datamodule = build_datamodule(plain(cfg.data))
    trained_on = teacher.hparams.data.get("name")
    if trained_on is not None and datamodule.name != trained_on:
        raise ValueError(
            f"the teacher was trained on data `{trained_on}` but this run's data is "
            f"`{datamodule.name}`: pass data={trained_on} (or the teacher's experiment=...)"
        )
    if flow_shape(datamodule) != teacher.flow_shape:
        raise ValueError(
            f"the teacher was trained on data of shape {teacher.flow_shape} but data "
            f"`{datamodule.name}` has shape {flow_shape(datamodule)}: use the teacher's data "
            "(the same dimension, channels, crop length and conditioning)"
        )
    return datamodule


def distill_student(cfg: DictConfig, teacher: TeacherModule, stage_dir: Path) -> StageResult:
    """The ``student`` stage: distill ``teacher`` into the student of ``cfg.student``;
    metrics of the student against the teacher on the test split."""
    L.seed_everything(cfg.seed, workers=True)
    datamodule = student_datamodule(cfg, teacher)
    stage = cfg.student
    module = StudentModule.from_teacher(
        teacher,
        student={**plain(stage.flow), **teacher.flow_shape},
        loss=stage.loss,
        optim=stage.optim,
        ema_decay=stage.ema_decay,
        init=stage.init,
        seed=cfg.seed,
    )
    log.info(
        "student stage: %s (%d parameters, init=%s), loss %s, %d steps, into %s",
        stage.flow._target_,
        parameter_count(module.student),
        stage.init,
        dict(stage.loss.terms),
        stage.trainer.max_steps,
        stage_dir,
    )
    trainer, loggers, module, metrics = fit(cfg, "student", module, datamodule, stage_dir)
    result = StageResult(module, metrics, is_global_zero=trainer.is_global_zero)
    evaluation_threads = cpu_threads(
        stage.evaluation.get("cpu_threads"), "student.evaluation.cpu_threads"
    )
    if trainer.is_global_zero and isinstance(module.teacher, SequenceFlow):
        evaluation = stage.evaluation
        with evaluation_threads:
            sequence_metrics, samples = evaluate_sequence_distillation(
                in_data_space(module.inference_student, module.preprocessing),
                in_data_space(module.teacher, module.preprocessing),
                datamodule,
                num_kl_samples=evaluation.num_kl_samples,
                num_nll_sequences=evaluation.num_nll_sequences,
                timing_seconds=evaluation.timing_seconds,
                timing_rounds=evaluation.timing_rounds,
            )
        metrics.update(sequence_metrics)
        metrics["student/init"] = stage.init
        metrics["teacher/parameters"] = parameter_count(module.teacher)
        metrics["student/parameters"] = parameter_count(module.student)
        _sequence_outputs(result, samples, datamodule.sample_rate, metrics, stage_dir)
    elif trainer.is_global_zero:
        with evaluation_threads:
            distillation_metrics = evaluate_distillation(
                module.inference_student,
                module.teacher,
                datamodule.test_data,
                module.preprocessing,
                num_kl_samples=stage.evaluation.num_kl_samples,
                num_timing_samples=stage.evaluation.num_timing_samples,
            )
        metrics.update(distillation_metrics)
        metrics.update(_data_metrics(datamodule, metrics))
        metrics["student/init"] = stage.init
        metrics["teacher/parameters"] = parameter_count(module.teacher)
        metrics["student/parameters"] = parameter_count(module.student)
        flows = {
            role: in_data_space(flow, module.preprocessing)
            for role, flow in (("teacher", module.teacher), ("student", module.inference_student))
        }
        metrics.update(_support_metrics(datamodule, flows))
        result.figures = flow_figures(
            flows,
            datamodule.test_data,
            {role: metrics[f"{role}/test_nll"] for role in flows},
            datamodule.image_shape,
        )
        if teacher.features == 2:
            result.figures["taffy"] = taffy(module.inference_student, module.preprocessing)
    step = metrics["student/global_step"]
    main = "student/kl_per_step_trimmed_mean" if result.audio else "student/kl_trimmed_mean"
    finish_loggers(loggers, metrics, result.figures, step, main, result.audio)
    if "student/kl_per_step_trimmed_mean" in metrics:
        log.info(
            "student stage done: KL %.4f nats per step (1%%-trimmed), held-out NLL %.4f per step",
            metrics["student/kl_per_step_trimmed_mean"],
            metrics["student/test_nll_per_step"],
        )
    if "student/kl_trimmed_mean" in metrics:
        log.info(
            "student stage done: KL %.4f nats (1%%-trimmed), held-out NLL %.4f",
            metrics["student/kl_trimmed_mean"],
            metrics["student/test_nll"],
        )
    return result
