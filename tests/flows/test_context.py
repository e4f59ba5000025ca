"""Conditional flows q(x | c): exact bijections for each context, a real dependence on the
context (density, samples, gradients), context batch shapes, and clear errors."""

import pytest
import torch

from tests.flows.helpers import FLOW_BUILDERS, build_small_flow, check_bijector, make_flow

D = 4
C = 3


def conditional_flow(name: str, features: int = D):
    return make_flow(name, features, context_features=C)


def random_context(*batch_shape: int, requires_grad: bool = False) -> torch.Tensor:
    return torch.randn(*batch_shape, C, dtype=torch.float64, requires_grad=requires_grad)


# context batch shape, input batch shape (broadcast against each other)
CONTEXT_BATCHES = {
    "one_per_input": ((7,), (7,)),
    "broadcast_over_leading_dims": ((7,), (2, 7)),
    "shared": ((), (5,)),
    "broadcast_both_ways": ((2, 1), (5,)),
}


@pytest.mark.parametrize("batches", CONTEXT_BATCHES)
@pytest.mark.parametrize("name", FLOW_BUILDERS)
def test_invertible_with_exact_log_det_for_each_context(name, batches):
    context_batch, batch_shape = CONTEXT_BATCHES[batches]
    check_bijector(
        conditional_flow(name).bijector, D, batch_shape, context=random_context(*context_batch)
    )


@pytest.mark.parametrize("name", FLOW_BUILDERS)
def test_context_changes_density_and_samples(name):
    flow = conditional_flow(name)
    first, second = random_context(), random_context()
    x = torch.randn(10, D, dtype=torch.float64)
    assert torch.all(flow.log_prob(x, first) != flow.log_prob(x, second))
    samples = []
    for context in (first, second):
        torch.manual_seed(1)  # the same noise for both contexts
        samples.append(flow.sample((10,), context))
    assert torch.all(samples[0] != samples[1]), "some coordinate ignores the context"


@pytest.mark.parametrize("name", ["maf", "iaf", "maf_spline", "iaf_spline"])
def test_one_dimensional_autoregressive_flow_depends_on_context(name):
    """With D = 1 every MADE output has rank 0: it sees no input, only the context."""
    flow = make_flow(name, 1, context_features=C)
    x = torch.randn(10, 1, dtype=torch.float64)
    assert torch.all(flow.log_prob(x, random_context()) != flow.log_prob(x, random_context()))


@pytest.mark.parametrize("name", FLOW_BUILDERS)
def test_gradients_reach_the_context(name):
    flow = conditional_flow(name)
    context = random_context(6, requires_grad=True)
    log_prob = flow.log_prob(torch.randn(6, D, dtype=torch.float64), context)
    (gradient,) = torch.autograd.grad(log_prob.sum(), context)
    assert torch.isfinite(gradient).all() and torch.all(gradient != 0)

    x, log_prob = flow.sample_and_log_prob((5,), context)
    (gradient,) = torch.autograd.grad(x.square().sum(), context, retain_graph=True)
    assert torch.all(gradient != 0)
    if name != "nice":
        # (NICE preserves volume: the density of its own samples is the noise's, log p(u).)
        (gradient,) = torch.autograd.grad(log_prob.sum(), context)
        assert torch.all(gradient != 0)


@pytest.mark.parametrize("name", FLOW_BUILDERS)
def test_sample_shapes_follow_the_context_batch(name):
    flow = conditional_flow(name)
    context = random_context(4)
    assert flow.sample((5,), context).shape == (5, 4, D)
    assert flow.rsample((5,), context).shape == (5, 4, D)
    x, log_prob = flow.sample_and_log_prob((5,), context)
    assert x.shape == (5, 4, D) and log_prob.shape == (5, 4)
    assert flow.sample(context=context).shape == (4, D)


@pytest.mark.parametrize("context_batch", [(1,), ()], ids=["(1,C)", "(C,)"])
@pytest.mark.parametrize("name", FLOW_BUILDERS)
def test_log_prob_broadcasts_one_context_over_a_batch(name, context_batch):
    flow = conditional_flow(name)
    x = torch.randn(8, D, dtype=torch.float64)
    context = random_context(*context_batch)
    log_prob = flow.log_prob(x, context)
    assert log_prob.shape == (8,)
    torch.testing.assert_close(log_prob, flow.log_prob(x, context.expand(8, C)))


@pytest.mark.parametrize(
    "call",
    [
        lambda flow: flow.log_prob(torch.randn(3, D, dtype=torch.float64)),
        lambda flow: flow.sample((3,)),
        lambda flow: flow.rsample((3,)),
        lambda flow: flow.sample_and_log_prob((3,)),
    ],
    ids=["log_prob", "sample", "rsample", "sample_and_log_prob"],
)
@pytest.mark.parametrize("name", FLOW_BUILDERS)
def test_missing_context_is_a_clear_error(name, call):
    with pytest.raises(ValueError, match=f"context_features={C} but got none: pass context="):
        call(conditional_flow(name))


@pytest.mark.parametrize("name", FLOW_BUILDERS)
def test_wrong_context_width_is_a_clear_error(name):
    x = torch.randn(3, D, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"got shape \(3, 5\)"):
        conditional_flow(name).log_prob(x, torch.randn(3, 5, dtype=torch.float64))


@pytest.mark.parametrize("name", FLOW_BUILDERS)
def test_context_batch_broadcasts_against_the_data_batch(name):
    flow = conditional_flow(name)
    x = torch.randn(5, D, dtype=torch.float64)
    context = random_context(2, 1)
    log_prob = flow.log_prob(x, context)
    assert log_prob.shape == (2, 5)
    torch.testing.assert_close(log_prob[1], flow.log_prob(x, context[1].expand(5, C)))


@pytest.mark.parametrize("name", FLOW_BUILDERS)
def test_unconditional_flow_has_no_context_machinery(name):
    flow = build_small_flow(name, D)
    assert not any("context" in key for key in flow.state_dict())
    x = torch.randn(6, D, dtype=torch.float64)
    assert torch.equal(flow.log_prob(x, None), flow.log_prob(x))
    assert flow.sample((5,)).shape == (5, D)
