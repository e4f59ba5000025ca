"""The density of a flow is a density of its samples: it integrates to one, matches the
frequencies of `sample`, and `sample_and_log_prob` computes it by its own route."""

import pytest
import torch

from tests.flows.helpers import FLOW_BUILDERS, make_flow

SPACING = 0.05
GRID_AXIS = torch.arange(-10 + SPACING / 2, 10, SPACING, dtype=torch.float64)
CUTS = torch.tensor([-1.0, 1.0], dtype=torch.float64)


def two_dimensional_flow(name: str):
    """A perturbed 2-D flow whose mass stays well inside [-10, 10]^2: a moderate perturbation,
    as from 0.2 on some Real NVPs grow tails heavy enough to leave the grid (their log-scales
    saturate at the bound for large inputs)."""
    return make_flow(name, features=2, scale=0.1).eval()


def cell_index(points: torch.Tensor) -> torch.Tensor:
    """Which of the 3 x 3 cells cut at x_i = -1 and x_i = 1 each point (..., 2) falls in."""
    rows, columns = torch.bucketize(points, CUTS).unbind(-1)
    return 3 * rows + columns


@torch.no_grad()
@pytest.mark.parametrize("name", FLOW_BUILDERS)
def test_density_integrates_to_one_and_matches_sample_frequencies(name):
    flow = two_dimensional_flow(name)
    grid = torch.cartesian_prod(GRID_AXIS, GRID_AXIS)
    mass = flow.log_prob(grid).exp() * SPACING**2
    assert abs(mass.sum().item() - 1) < 1e-2

    samples = flow.sample((20_000,))
    # not the base in disguise: the check would then pass without the log-dets
    assert (flow.log_prob(samples) - flow.base.log_prob(samples)).abs().mean() > 0.1
    cell_counts = torch.bincount(cell_index(samples), minlength=9)
    cell_frequencies = cell_counts.to(torch.float64) / len(samples)
    cell_masses = torch.zeros(9, dtype=torch.float64).index_add_(0, cell_index(grid), mass)
    # binomial standard errors are below 0.0036: 0.015 is over four of them
    torch.testing.assert_close(cell_frequencies, cell_masses, atol=0.015, rtol=0)


@pytest.mark.parametrize("sample_shape", [(3,), (2, 4)])
@pytest.mark.parametrize("batch_norm", [False, True], ids=["", "batch_norm"])
@pytest.mark.parametrize("name", FLOW_BUILDERS)
def test_sample_and_log_prob_agrees_with_log_prob(name, batch_norm, sample_shape):
    # eval: in training, BatchNorm's inverse would use the batch's statistics instead
    flow = make_flow(name, batch_norm=batch_norm).eval()
    x, log_prob = flow.sample_and_log_prob(sample_shape)
    assert x.shape == (*sample_shape, 4) and log_prob.shape == sample_shape
    # A spline's flat parts (slopes down to 1e-3 per layer) amplify the rounding of x in the
    # inverse: float64 agreement to ~1e-8 there, not 1e-10.
    tolerance = 1e-7 if "spline" in name else 1e-10
    torch.testing.assert_close(flow.log_prob(x), log_prob, atol=tolerance, rtol=tolerance)
