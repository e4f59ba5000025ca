"""Metrics of a distilled student against its teacher. Never only a mean: heavy tails
(a few samples far outside the teacher's support, a dropped mode) hide in means."""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from distill.data import to_bits_per_dim
from distill.flows import Bijector, Flow, in_data_space


def robust_summary(values: Tensor, prefix: str) -> dict[str, float]:
    """Mean with its standard error, median, 1%-trimmed mean, the 99th and 99.9th
    percentiles and the maximum of ``values`` (N,), and the fraction of non-finite values.

    A non-finite value (a sample the other model gives zero density, or a NaN) counts as +inf
    in every statistic: it is never sorted away or dropped silently."""
    values = values.double().flatten()
    nonfinite = ~torch.isfinite(values)
    values = torch.where(nonfinite, torch.full_like(values, math.inf), values)
    sorted_values = values.sort().values
    cut = int(0.01 * len(values))
    trimmed = sorted_values[cut : len(values) - cut] if cut else sorted_values
    count = len(values)
    sem = values.std() / math.sqrt(count) if count > 1 else values.new_tensor(0.0)
    return {
        f"{prefix}_mean": values.mean().item(),
        f"{prefix}_sem": math.inf if nonfinite.any() else sem.item(),
        f"{prefix}_median": values.median().item(),
        f"{prefix}_trimmed_mean": trimmed.mean().item(),
        f"{prefix}_p99": _quantile(sorted_values, 0.99),
        f"{prefix}_p999": _quantile(sorted_values, 0.999),
        f"{prefix}_max": sorted_values[-1].item(),
        f"{prefix}_nonfinite_fraction": nonfinite.double().mean().item(),
    }


def _quantile(values: Tensor, q: float) -> float:
    """``torch.quantile`` with +inf where it interpolates between two infinite values (inf -
    inf is NaN there, and a NaN tail statistic would be dropped where it matters most)."""
    value = torch.quantile(values, q).item()
    return math.inf if math.isnan(value) else value


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
        metrics[f"{prefix}/test_bpd"] = to_bits_per_dim(
            metrics[f"{prefix}/test_nll"], data.shape[-1]
        )
    return metrics, nll


@torch.no_grad()
def in_support_fraction(
    flow: Flow, in_support: Callable[[Tensor], Tensor | None], num_samples: int = 10_000
) -> float | None:
    """The fraction of ``num_samples`` samples of ``flow`` (data space) that ``in_support``
    (``(N, D)`` -> ``(N,)`` bool, or None when the data's support is unknown) puts inside the
    data's support; None when it is unknown. The data's own fraction is 1."""
    inside = in_support(flow.sample((num_samples,)))
    return None if inside is None else inside.double().mean().item()


def _chunks(total: int, chunk: int) -> list[int]:
    return [min(chunk, total - start) for start in range(0, total, chunk)]


def _timed(sample: Callable[[int], Tensor], num_samples: int) -> float:
    """Wall time (s) of one ``sample(num_samples)``, waiting for the device (CUDA) to finish."""
    start = time.perf_counter()
    out = sample(num_samples)
    if out.is_cuda:
        torch.cuda.synchronize(out.device)
    return time.perf_counter() - start


def paired_sampling_times(
    teacher: Callable[[int], Tensor],
    student: Callable[[int], Tensor],
    num_samples: int,
    rounds: int = 11,
    warmups: Sequence[Callable[[], object]] | None = None,
) -> dict[str, float]:
    """Teacher and student drawing ``num_samples`` in interleaved, paired rounds (the order
    alternates, so load from other processes hits both alike), after one warm-up call each
    (or the calls ``warmups``, untimed).

    ``sampling/{teacher,student}_s``: median seconds; ``sampling/speedup``: the median of the
    per-round ratios teacher / student, with ``_q25``/``_q75`` (its spread) and ``_min``;
    ``sampling/cpu_threads``: torch's intra-op threads during the rounds (``cpu_threads``), the
    same for both."""
    if warmups is None:
        warmups = (lambda: teacher(num_samples), lambda: student(num_samples))
    for warmup in warmups:
        warmup()
    teacher_s, student_s = [], []
    for index in range(rounds):
        pair = [(teacher, teacher_s), (student, student_s)]
        for sample, times in pair if index % 2 == 0 else pair[::-1]:
            times.append(_timed(sample, num_samples))
    ratios = torch.tensor(teacher_s, dtype=torch.float64) / torch.tensor(
        student_s, dtype=torch.float64
    )
    q25, median, q75 = torch.quantile(ratios, torch.tensor([0.25, 0.5, 0.75], dtype=torch.float64))
    return {
        "sampling/num_samples": num_samples,
        "sampling/rounds": rounds,
        "sampling/cpu_threads": torch.get_num_threads(),
        "sampling/teacher_s": statistics.median(teacher_s),
        "sampling/student_s": statistics.median(student_s),
        "sampling/speedup": median.item(),
        "sampling/speedup_q25": q25.item(),
        "sampling/speedup_q75": q75.item(),
        "sampling/speedup_min": ratios.min().item(),
    }


def coverage_margin(features: int) -> float:
    """The NLL margin (nats) of the coverage metric: 5 nats at D <= 2, growing as sqrt(D/2)
    (per-point NLL differences between two good models spread with the dimension: at D = 64
    their std is ~4 nats, so a fixed 5 would count noise as lost coverage)."""
    return 5.0 * math.sqrt(max(features / 2, 1.0))


@torch.no_grad()
def evaluate_distillation(
    student: Flow,
    teacher: Flow,
    test_data: Tensor,
    preprocessing: Bijector | None = None,
    num_kl_samples: int = 100_000,
    num_timing_samples: int = 1000,
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
      the student's NLL exceeds the teacher's by more than `coverage_margin` nats (recorded as
      ``student/coverage_margin``), and the same at fixed margins of 1, 2, 5, 10 and 20 nats
      (``student/coverage_loss_at_{m}``);
    - ``teacher/ll_of_student_samples`` next to ``teacher/ll_of_own_samples`` (the latter
      from the teacher's cached noise);
    - ``sampling/*``: teacher and student drawing ``num_timing_samples`` (data space), in
      interleaved paired rounds (`paired_sampling_times`).
    """
    terms = kl_terms(student, teacher, num_kl_samples)
    metrics = robust_summary(terms, "student/kl")
    metrics["student/kl_tail_fraction"] = (
        ((terms > tail_threshold) | ~torch.isfinite(terms)).double().mean().item()
    )

    student_data, teacher_data = (in_data_space(f, preprocessing) for f in (student, teacher))
    teacher_metrics, teacher_nll = test_nll(teacher_data, test_data, "teacher")
    student_metrics, student_nll = test_nll(student_data, test_data, "student")
    gap = student_nll.mean() - teacher_nll.mean()
    metrics.update(teacher_metrics)
    metrics.update(student_metrics)
    excess = student_nll - teacher_nll
    excess = torch.where(torch.isnan(excess), torch.full_like(excess, math.inf), excess)
    margin = coverage_margin(test_data.shape[-1])
    metrics["student/coverage_margin"] = margin
    metrics["student/coverage_loss"] = (excess > margin).double().mean().item()
    for fixed in (1, 2, 5, 10, 20):
        metrics[f"student/coverage_loss_at_{fixed}"] = (excess > fixed).double().mean().item()
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

    metrics.update(
        paired_sampling_times(
            lambda n: teacher_data.sample((n,)),
            lambda n: student_data.sample((n,)),
            num_timing_samples,
        )
    )
    return metrics


def _in_data_space(log_prob: Tensor, samples: Tensor, preprocessing: Bijector | None) -> float:
    """Mean data-space log-density of model-space ``samples`` whose model-space log-density
    is ``log_prob``: minus the preprocessing's forward log-det, computed from the model side."""
    if preprocessing is not None:
        log_prob = log_prob - preprocessing(samples)[1]
    return log_prob.mean().item()
