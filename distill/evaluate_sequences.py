"""Metrics of flows over sequences (WaveNet teachers and students) on held-out sequences:
per-step NLL, the KL per step with its tails, how close the samples' spectra are to the data's,
whether conditional samples have the asked pitch, and the sampling times of one second of audio.

Shapes: sequences ``(N, C, T)``, contexts ``(N, G)`` (global) or ``(N, L, T // hop)`` (local).
"Per step" divides a sequence's figure by its ``C * T`` values.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import partial

import torch
from torch import Tensor

from distill import spectral
from distill.evaluate import paired_sampling_times, robust_summary
from distill.flows import SequenceFlow


def _rows(context: Tensor | None, count: int) -> Tensor | None:
    """``count`` contexts taken in turn from ``context`` (None stays None)."""
    if context is None:
        return None
    return context[torch.arange(count, device=context.device) % len(context)]


def draw(
    flow: SequenceFlow, count: int, context: Tensor | None, length: int | None = None
) -> Tensor:
    """``count`` samples ``(count, C, T)``, one per context row taken in turn from ``context``
    (unconditional flows: ``length`` steps, default the flow's)."""
    if context is None:
        return flow.sample((count,), length=length)
    return flow.sample((), _rows(context, count))


@torch.no_grad()
def per_step_nll(
    flow: SequenceFlow, data: Tensor, context: Tensor | None, prefix: str, chunk: int = 64
) -> tuple[dict[str, float], Tensor]:
    """``{prefix}/test_nll_per_step`` (mean nats per value), its ``_median`` and
    ``{prefix}/test_nll`` (per sequence) on ``data``; also the per-sequence, per-step NLLs."""
    parts = []
    for start in range(0, len(data), chunk):
        rows = slice(start, start + chunk)
        part_context = None if context is None else context[rows]
        parts.append(-flow.log_prob(data[rows], part_context))
    nll = torch.cat(parts)
    steps = data.shape[-2:].numel()
    per_step = nll / steps
    return {
        f"{prefix}/test_nll_per_step": per_step.mean().item(),
        f"{prefix}/test_nll_per_step_median": per_step.median().item(),
        f"{prefix}/test_nll": nll.mean().item(),
    }, per_step


@torch.no_grad()
def kl_per_step(
    student: SequenceFlow, teacher: SequenceFlow, num_samples: int, context: Tensor | None
) -> Tensor:
    """KL(q || p) terms ``(log q(x) - log p(x)) / (C T)`` for ``num_samples`` student samples
    (one per context row, taken in turn): ``(num_samples,)``."""
    sample_context = _rows(context, num_samples)
    shape = (num_samples,) if context is None else ()
    x, log_q = student.sample_and_log_prob(shape, sample_context)
    return (log_q - teacher.log_prob(x, sample_context)) / x.shape[-2:].numel()


def spectral_metrics(samples: dict[str, Tensor], data: Tensor) -> dict[str, float]:
    """``{role}/log_spectral_distance``: the RMS difference in dB between the average power
    spectrum of each role's samples and the data's (about 0 for data rows themselves), and
    ``{role}/relative_power_db``: the samples' mean power over the data's, in dB (a
    "whispering" student is well below 0)."""
    data_power = data.double().square().mean()
    metrics = {}
    for role, x in samples.items():
        metrics[f"{role}/log_spectral_distance"] = spectral.log_spectral_distance(x, data).item()
        power = x.double().square().mean()
        metrics[f"{role}/relative_power_db"] = (10 * torch.log10(power / data_power)).item()
    return metrics


def pitch_metrics(
    samples: dict[str, Tensor],
    target_hz: Tensor,
    sample_rate: int,
    min_hz: float,
    max_hz: float,
) -> dict[str, float]:
    """``{role}/pitch_within_semitone``: the fraction of conditional samples whose spectral
    peak (`spectral.estimate_pitch`) is within a semitone of the pitch their context asks for,
    and ``{role}/pitch_error_semitones_median``."""
    metrics = {}
    for role, x in samples.items():
        estimated = spectral.estimate_pitch(x, sample_rate, min_hz=min_hz, max_hz=max_hz)
        target = target_hz[: len(x)].to(estimated)
        errors = spectral.semitone_error(estimated, target)
        metrics[f"{role}/pitch_within_semitone"] = (errors <= 1.0).double().mean().item()
        metrics[f"{role}/pitch_error_semitones_median"] = errors.median().item()
    return metrics


def _timing_context(context: Tensor | None, count: int, frames: int | None) -> Tensor | None:
    """Contexts for timing ``count`` sequences; a local context is tiled to ``frames``."""
    if context is None:
        return None
    rows = _rows(context, count)
    if frames is None:
        return rows
    repeats = math.ceil(frames / rows.shape[-1])
    return rows.repeat_interleave(repeats, dim=-1)[..., :frames]


def sampling_times(
    teacher: SequenceFlow,
    student: SequenceFlow,
    sample_rate: int,
    context: Tensor | None,
    batch_sizes: tuple[int, ...] = (1, 16),
    seconds: float = 1.0,
    rounds: int = 3,
) -> dict[str, float]:
    """Teacher (cached sequential sampling) and student (one parallel pass per flow) drawing
    ``seconds`` of audio at each batch size, in interleaved paired rounds
    (`paired_sampling_times`): ``sampling/b{B}_{teacher_s,student_s,speedup,...}``.

    Warm-up: the student draws the whole length once; the teacher a sixteenth of it (its loop
    repeats one step's operations, so a short draw warms it as well as a long one, and the
    whole second would cost as much as a timed round)."""
    length = int(round(seconds * sample_rate))
    hop = teacher.hop_length
    if hop is not None:  # a local context fixes the length: whole frames
        length = max(hop, length // hop * hop)
    frames = None if hop is None else length // hop
    warm_frames = None if frames is None else max(1, frames // 16)
    warm_length = max(1, length // 16) if hop is None else warm_frames * hop
    metrics: dict[str, float] = {"sampling/seconds_of_audio": length / sample_rate}

    def sampler(flow: SequenceFlow, ctx: Tensor | None, steps: int) -> Callable[[int], Tensor]:
        def sample(count: int) -> Tensor:
            if ctx is None:
                return flow.sample((count,), length=steps)
            if hop is not None:  # a local context's frames set the length
                return flow.sample((), ctx)
            return flow.sample((), ctx, length=steps)

        return sample

    for batch in batch_sizes:
        timing_context = _timing_context(context, batch, frames)
        warm_context = _timing_context(context, batch, warm_frames)
        teacher_sample = sampler(teacher, timing_context, length)
        student_sample = sampler(student, timing_context, length)
        warmups = (
            partial(sampler(teacher, warm_context, warm_length), batch),
            partial(student_sample, batch),
        )
        timed = paired_sampling_times(
            teacher_sample, student_sample, batch, rounds=rounds, warmups=warmups
        )
        metrics.update(
            {
                key.replace("sampling/", f"sampling/b{batch}_"): value
                for key, value in timed.items()
                if key != "sampling/num_samples"
            }
        )
    return metrics


@torch.no_grad()
def evaluate_sequence_teacher(
    teacher: SequenceFlow,
    datamodule,
    num_samples: int = 64,
) -> tuple[dict[str, float], dict[str, Tensor]]:
    """The teacher's held-out per-step NLL, and the spectra (and pitch, for conditional data)
    of ``num_samples`` of its samples. Returns the metrics and the samples by role (``data``,
    ``teacher``) for figures and audio."""
    data, context = datamodule.test_data, getattr(datamodule, "test_context", None)
    num_samples = min(num_samples, len(data))
    metrics, _ = per_step_nll(teacher, data, context, "teacher")
    samples = {"data": data[:num_samples], "teacher": draw(teacher, num_samples, context)}
    metrics.update(_sample_metrics(samples, datamodule, context))
    return metrics, samples


@torch.no_grad()
def evaluate_sequence_distillation(
    student: SequenceFlow,
    teacher: SequenceFlow,
    datamodule,
    num_kl_samples: int = 256,
    num_nll_sequences: int = 128,
    num_samples: int = 64,
    timing_seconds: float = 1.0,
    timing_rounds: int = 3,
) -> tuple[dict[str, float], dict[str, Tensor]]:
    """Everything the report shows about a sequence student:

    - ``student/kl_per_step_*``: robust statistics of KL(q || p) per step on ``num_kl_samples``
      student samples (`robust_summary`: mean, sem, median, 1%-trimmed mean, tails,
      non-finite fraction);
    - ``{teacher,student}/test_nll_per_step`` on the first ``num_nll_sequences`` test sequences
      (the student's needs its sequential inverse), ``student/nll_gap_per_step`` (nats) and
      ``student/nll_relative_gap`` (that gap over the teacher's |NLL|: the issue's "within
      5%"; a differential NLL moves with the data's units, so the absolute gap is the figure
      that compares across data sets);
    - ``{data,teacher,student}/log_spectral_distance`` of ``num_samples`` samples to the
      test data, and for conditional notes ``{role}/pitch_within_semitone``;
    - ``sampling/b{1,16}_*``: ``timing_seconds`` of audio from the cached teacher and the
      student, interleaved paired rounds (none if ``timing_seconds`` is 0).

    Returns the metrics and the samples by role (data, teacher, student)."""
    data, context = datamodule.test_data, getattr(datamodule, "test_context", None)
    num_samples = min(num_samples, len(data))
    metrics = robust_summary(
        kl_per_step(student, teacher, num_kl_samples, context), "student/kl_per_step"
    )
    nll_data = data[:num_nll_sequences]
    nll_context = None if context is None else context[:num_nll_sequences]
    teacher_metrics, teacher_nll = per_step_nll(teacher, nll_data, nll_context, "teacher")
    student_metrics, student_nll = per_step_nll(student, nll_data, nll_context, "student")
    metrics.update(teacher_metrics)
    metrics.update(student_metrics)
    gap = student_nll.mean() - teacher_nll.mean()
    metrics["student/nll_gap_per_step"] = gap.item()
    metrics["student/nll_relative_gap"] = (gap / teacher_nll.mean().abs()).item()
    samples = {
        "data": data[:num_samples],
        "teacher": draw(teacher, num_samples, context),
        "student": draw(student, num_samples, context),
    }
    metrics.update(_sample_metrics(samples, datamodule, context))
    if timing_seconds > 0:
        metrics.update(
            sampling_times(
                teacher,
                student,
                datamodule.sample_rate,
                context,
                seconds=timing_seconds,
                rounds=timing_rounds,
            )
        )
    return metrics, samples


def _sample_metrics(samples: dict[str, Tensor], datamodule, context: Tensor | None) -> dict:
    """Spectral distances of every role's samples to the data, and their pitch accuracy when
    the data asks for a pitch (conditional notes)."""
    metrics = spectral_metrics(samples, datamodule.test_data)
    pitch_of = getattr(datamodule, "pitch_of", None)
    if context is not None and pitch_of is not None:
        count = len(samples["data"])
        metrics.update(
            pitch_metrics(
                samples,
                pitch_of(_rows(context, count)),
                datamodule.sample_rate,
                # an octave of slack each side: a wrong octave counts as wrong, not as missing
                datamodule.min_pitch / 2,
                datamodule.max_pitch * 2,
            )
        )
    return metrics
