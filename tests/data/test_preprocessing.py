"""Preprocessing bijectors: invertibility, log-dets against autograd, likelihood bookkeeping,
rebuilding from plain values + state_dict."""

import math

import pytest
import torch

from distill.data import fit_preprocessing, fit_standardize
from distill.flows import Flow, Logit, Standardize, build_preprocessing
from tests.flows.helpers import autograd_log_abs_det, check_bijector


def fitted_standardize(features: int = 3) -> Standardize:
    generator = torch.Generator().manual_seed(0)
    data = torch.randn(500, features, generator=generator, dtype=torch.float64)
    data = data * torch.tensor([0.3, 2.0, 5.0])[:features] + torch.tensor([1.0, -4.0, 0.5])
    return fit_standardize(Standardize(features).double(), data)


def check_inverse_pair(bijector, z: torch.Tensor, x: torch.Tensor) -> None:
    """Round trips and log-dets against autograd at model points ``z`` and data points ``x``
    (for bijectors whose inverse is defined only on part of R^D)."""
    for point, there, back in (
        (z, bijector.forward, bijector.inverse),
        (x, bijector.inverse, bijector.forward),
    ):
        out, log_det = there(point)
        point_back, log_det_back = back(out)
        torch.testing.assert_close(point_back, point, atol=1e-9, rtol=1e-7)
        torch.testing.assert_close(log_det_back, -log_det, atol=1e-9, rtol=1e-7)
        for row in point[:3]:
            expected = autograd_log_abs_det(lambda p, f=there: f(p)[0], row)
            torch.testing.assert_close(there(row)[1], expected, atol=1e-8, rtol=1e-7)


def test_standardize_is_a_bijector_with_exact_log_dets():
    check_bijector(fitted_standardize(), 3)


def test_standardize_fit_sets_buffers_and_no_parameters():
    standardize = fitted_standardize()
    assert list(standardize.parameters()) == []
    assert set(standardize.state_dict()) == {"mean", "std"}
    torch.testing.assert_close(
        standardize.mean, torch.tensor([1.0, -4.0, 0.5], dtype=torch.float64), atol=0.5, rtol=0
    )


def test_standardize_rejects_a_constant_column():
    data = torch.randn(10, 3)
    data[:, 1] = 2.0
    with pytest.raises(ValueError, match=r"column\(s\) \[1\].*constant"):
        fit_standardize(Standardize(3), data)


def test_logit_round_trips_and_log_dets():
    logit = Logit(upper=17.0, alpha=0.05)
    z = torch.randn(7, 5, dtype=torch.float64) * 2
    x = torch.rand(7, 5, dtype=torch.float64) * 17
    check_inverse_pair(logit, z, x)
    edges = torch.tensor([[0.0, 17.0]], dtype=torch.float64)
    assert torch.isfinite(logit.inverse(edges)[0]).all()


@pytest.mark.parametrize("alpha", [0.0, 0.5, -0.1])
def test_logit_rejects_bad_alpha(alpha):
    with pytest.raises(ValueError, match="alpha"):
        Logit(17.0, alpha)


def test_digits_style_chain_round_trips_and_log_dets():
    data = torch.rand(200, 4, dtype=torch.float64) * torch.tensor([17.0, 8.0, 2.0, 17.0])
    chain = fit_preprocessing(data, 4, logit_upper=17.0, logit_alpha=0.05).double()
    check_inverse_pair(chain, torch.randn(7, 4, dtype=torch.float64), data[:7])
    model_side, _ = chain.inverse(data)
    torch.testing.assert_close(
        model_side.mean(0), torch.zeros(4, dtype=torch.float64), atol=1e-5, rtol=0
    )
    torch.testing.assert_close(
        model_side.std(0), torch.ones(4, dtype=torch.float64), atol=1e-5, rtol=0
    )


def test_standard_normal_through_standardize_is_the_fitted_gaussian():
    standardize = fitted_standardize()
    flow = Flow(standardize).double()
    x = torch.randn(50, 3, dtype=torch.float64) * 3
    expected = torch.distributions.Normal(standardize.mean, standardize.std).log_prob(x).sum(-1)
    torch.testing.assert_close(flow.log_prob(x), expected)


def test_density_through_logit_integrates_to_one_in_data_space():
    """A 1-D standard normal in model space, pushed through standardize + logit, is a density
    in the 17-level pixel space: it integrates to 1 over the logit's image."""
    alpha, upper = 0.05, 17.0
    data = torch.rand(300, 1, dtype=torch.float64) * upper
    flow = Flow(fit_preprocessing(data, 1, logit_upper=upper, logit_alpha=alpha)).double()
    low, high = -upper * alpha / (1 - 2 * alpha), upper * (1 - alpha) / (1 - 2 * alpha)
    grid = torch.linspace(low, high, 200_001, dtype=torch.float64)[1:-1, None]
    mass = torch.trapezoid(flow.log_prob(grid).exp(), grid[:, 0])
    assert mass.item() == pytest.approx(1.0, abs=1e-4)


def test_rebuilt_from_config_and_state_dict():
    data = torch.rand(100, 2, dtype=torch.float64) * 17
    config = {"features": 2, "logit_upper": 17.0, "logit_alpha": 0.1}
    fitted = fit_preprocessing(data, **config)
    rebuilt = build_preprocessing(**config)
    rebuilt.load_state_dict(fitted.state_dict())
    x = data[:5].float()
    for a, b in zip(fitted.inverse(x), rebuilt.inverse(x), strict=True):
        torch.testing.assert_close(a, b)
    assert list(fitted.parameters()) == []
    assert math.isclose(rebuilt.bijectors[1].alpha, 0.1)
