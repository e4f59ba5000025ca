"""Distillation metrics: finite and in the data space even where the preprocessing saturates."""

import math

import pytest
import torch

from distill.evaluate import (
    evaluate_distillation,
    in_support_fraction,
    paired_sampling_times,
    robust_summary,
)
from distill.flows import build_iaf, build_maf, build_preprocessing
from tests.flows.helpers import perturb


def test_metrics_stay_finite_when_samples_saturate_a_logit():
    torch.manual_seed(0)
    teacher = perturb(build_maf(2, 2, (16,)), scale=1.0).eval()  # wide: far into the logit tails
    student = perturb(build_iaf(2, 2, (16,)), scale=1.0, seed=1).eval()
    preprocessing = build_preprocessing(2, logit_upper=17.0)
    test_data = torch.rand(200, 2) * 17
    metrics = evaluate_distillation(
        student, teacher, test_data, preprocessing, num_kl_samples=5000, num_timing_samples=10
    )
    assert all(math.isfinite(v) for v in metrics.values()), metrics


def test_robust_summary_reports_more_than_the_mean():
    values = torch.cat([torch.zeros(990), torch.full((10,), 1000.0)])
    summary = robust_summary(values, "kl")
    assert summary["kl_mean"] == 10.0 and summary["kl_median"] == 0.0
    assert summary["kl_trimmed_mean"] < summary["kl_mean"] and summary["kl_sem"] > 0


def test_robust_summary_counts_non_finite_values_as_infinite_in_the_tails():
    values = torch.cat([torch.zeros(990), torch.full((5,), math.inf), torch.full((5,), math.nan)])
    summary = robust_summary(values, "kl")
    assert summary["kl_p99"] == summary["kl_p999"] == summary["kl_max"] == math.inf
    assert summary["kl_nonfinite_fraction"] == 0.01 and summary["kl_median"] == 0.0


def test_in_support_fraction_counts_samples_inside():
    torch.manual_seed(0)
    flow = build_maf(2, 1, (8,)).eval()  # near the identity: a standard normal

    def right_half(points):
        return points[:, 0] > 0

    fraction = in_support_fraction(flow, right_half, num_samples=4000)
    assert abs(fraction - 0.5) < 0.05
    assert in_support_fraction(flow, lambda points: None, num_samples=10) is None


@pytest.mark.parametrize("warmups", ["default", "given"])
def test_paired_sampling_times_warms_up_untimed_then_interleaves_rounds(warmups):

    calls = []

    def sampler(name):
        def sample(count):
            calls.append((name, count))
            return torch.zeros(count)

        return sample

    given = [lambda: calls.append(("warm teacher", 0)), lambda: calls.append(("warm student", 0))]
    timed = paired_sampling_times(
        sampler("teacher"),
        sampler("student"),
        3,
        rounds=3,
        warmups=given if warmups == "given" else None,
    )
    warm = (
        [("warm teacher", 0), ("warm student", 0)]
        if warmups == "given"
        else [("teacher", 3), ("student", 3)]
    )
    rounds = [("teacher", 3), ("student", 3), ("student", 3), ("teacher", 3)]
    assert calls == warm + rounds + rounds[:2]  # the order alternates round by round
    assert timed["sampling/rounds"] == 3 and timed["sampling/speedup"] > 0
