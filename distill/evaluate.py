"""Metrics of a distilled student against its teacher. Never only a mean: heavy tails
(a few samples far outside the teacher's support, a dropped mode) hide in means."""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable

import torch
from torch import Tensor

from distill.flows import Bijector, Flow, in_data_space


def robust_summary(values: Tensor, prefix: str) -> dict[str, float]:
    """Mean with its standard error, median and the 1%-trimmed mean of ``values`` (N,)."""
    values = values.double().flatten()
    sorted_values = values.sort().values
    cut = int(0.01 * len(values))
    trimmed = sorted_values[cut : len(values) - cut] if cut else sorted_values
    return {
        f"{prefix}_mean": values.mean().item(),
        f"{prefix}_sem": (values.std() / math.sqrt(len(values))).item() if len(values) > 1 else 0.0,
        f"{prefix}_median": values.median().item(),
        f"{prefix}_trimmed_mean": trimmed.mean().item(),
    }


@torch.no_grad()
def kl_terms(student: Flow, teacher: Flow, num_samples: int, chunk: int = 10_000) -> Tensor:
    """``log q(x) - log p(x)`` for ``num_samples`` student samples, in chunks: ``(N,)``."""
    parts = []
    for size in _chunks(num_samples, chunk):
        x, log_q = student.sample_and_log_prob((size,))
        parts.append(log_q - teacher.log_prob(x))
    return torch.cat(parts)


@torch.no_grad()
def batched_log_prob(flow: Flow, x: Tensor, chunk: int = 10_000) -> Tensor:
    return torch.cat([flow.log_prob(part) for part in x.split(chunk)])


@torch.no_grad()
def test_nll(flow: Flow, data: Tensor, prefix: str) -> tuple[dict[str, float], Tensor]:
    """``{prefix}/test_nll`` (mean, nats) and ``_median``, plus ``{prefix}/test_bpd`` (bits/dim)
    for D > 2, of ``flow`` on ``data`` (N, D); also returns the per-point NLLs."""
    data = data.to(next(flow.parameters()).device)
    nll = -batched_log_prob(flow, data)
    metrics = {
        f"{prefix}/test_nll": nll.mean().item(),
        f"{prefix}/test_nll_median": nll.median().item(),
    }
    if data.shape[-1] > 2:
        metrics[f"{prefix}/test_bpd"] = metrics[f"{prefix}/test_nll"] / (
            data.shape[-1] * math.log(2.0)
        )
    return metrics, nll


def _chunks(total: int, chunk: int) -> list[int]:
    return [min(chunk, total - start) for start in range(0, total, chunk)]


def sampling_time(sample: Callable[[int], Tensor], num_samples: int, repeats: int = 5) -> float:
    """Median wall time (s) of ``sample(num_samples)``, after one warm-up call; waits for
    the device to finish (CUDA) before reading the clock."""

    def run() -> float:
        start = time.perf_counter()
        out = sample(num_samples)
        if out.is_cuda:
            torch.cuda.synchronize(out.device)
        return time.perf_counter() - start

    run()
    return statistics.median(run() for _ in range(repeats))


@torch.no_grad()
def evaluate_distillation(
    student: Flow,
    teacher: Flow,
    test_data: Tensor,
    preprocessing: Bijector | None = None,
    num_kl_samples: int = 100_000,
    num_timing_samples: int = 1000,
    coverage_margin: float = 5.0,
    tail_threshold: float = 10.0,
) -> dict[str, float]:
    """Everything the report shows about a student. ``student`` and ``teacher`` are flows in
    the preprocessed (model) space and ``preprocessing`` maps it to the data space (forward);
    every density reported is in the data space.

    - ``student/kl_*``: KL(q || p) terms on ``num_kl_samples`` student samples (mean, sem,
      median, 1%-trimmed mean) and ``student/kl_tail_fraction``, the fraction above
      ``tail_threshold`` nats. The KL is invariant under the shared preprocessing, so it is
      computed in model space, where a saturating transform (the digits' logit) cannot
      round samples onto the edge of the data range;
    - ``{teacher,student}/test_nll`` (and ``_median``) on ``test_data`` (the student's needs
      its sequential inverse), ``student/coverage_loss``: the fraction of test points where
      the student's NLL exceeds the teacher's by more than ``coverage_margin`` nats;
    - ``teacher/ll_of_student_samples`` next to ``teacher/ll_of_own_samples`` (the latter
      from the teacher's cached noise);
    - ``sampling/{teacher,student}_s`` to draw ``num_timing_samples`` (data space) and their
      ratio.
    """
    terms = kl_terms(student, teacher, num_kl_samples)
    metrics = robust_summary(terms, "student/kl")
    metrics["student/kl_tail_fraction"] = (terms > tail_threshold).double().mean().item()

    student_data, teacher_data = (in_data_space(f, preprocessing) for f in (student, teacher))
    teacher_metrics, teacher_nll = test_nll(teacher_data, test_data, "teacher")
    student_metrics, student_nll = test_nll(student_data, test_data, "student")
    gap = student_nll.mean() - teacher_nll.mean()
    metrics.update(teacher_metrics)
    metrics.update(student_metrics)
    metrics["student/coverage_loss"] = (
        (student_nll - teacher_nll > coverage_margin).double().mean().item()
    )
    metrics["student/nll_gap"] = gap.item()
    metrics["student/nll_relative_gap"] = (gap / teacher_nll.mean().abs()).item()

    num_samples = num_kl_samples // 10
    student_samples = student.sample((num_samples,))
    teacher_samples, teacher_log_prob = teacher.sample_and_log_prob((num_samples,))
    metrics["teacher/ll_of_student_samples"] = _in_data_space(
        batched_log_prob(teacher, student_samples), student_samples, preprocessing
    )
    metrics["teacher/ll_of_own_samples"] = _in_data_space(
        teacher_log_prob, teacher_samples, preprocessing
    )

    metrics["sampling/num_samples"] = num_timing_samples
    metrics["sampling/teacher_s"] = sampling_time(
        lambda n: teacher_data.sample((n,)), num_timing_samples
    )
    metrics["sampling/student_s"] = sampling_time(
        lambda n: student_data.sample((n,)), num_timing_samples
    )
    metrics["sampling/speedup"] = metrics["sampling/teacher_s"] / metrics["sampling/student_s"]
    return metrics


def _in_data_space(log_prob: Tensor, samples: Tensor, preprocessing: Bijector | None) -> float:
    """Mean data-space log-density of model-space ``samples`` whose model-space log-density
    is ``log_prob``: minus the preprocessing's forward log-det, computed from the model side."""
    if preprocessing is not None:
        log_prob = log_prob - preprocessing(samples)[1]
    return log_prob.mean().item()
