"""The `Flow` contract, for every builder with and without BatchNorm: log_prob shapes and
gradients, samples, save/load, dtypes, train/eval behaviour, bad inputs."""

import copy
import io
import re

import pytest
import torch

from distill.flows import BatchNorm, build_maf
from tests.flows.helpers import (
    FLOW_BUILDERS,
    assert_every_parameter_has_gradient,
    build_small_flow,
    make_flow,
)

D = 4
CASES = [
    pytest.param(name, batch_norm, id=name + ("-batch_norm" if batch_norm else ""))
    for name in FLOW_BUILDERS
    for batch_norm in (False, True)
]
BATCH_NORM_CASES = [case for case in CASES if case.values[1]]
PLAIN_CASES = [case for case in CASES if not case.values[1]]


@pytest.mark.parametrize("perturbed", [False, True], ids=["at_init", "perturbed"])
@pytest.mark.parametrize("name, batch_norm", CASES)
def test_log_prob_shape_and_gradient_to_every_parameter(name, batch_norm, perturbed):
    make = make_flow if perturbed else build_small_flow
    flow = make(name, D, batch_norm=batch_norm)
    log_prob = flow.log_prob(torch.randn(2, 5, D, dtype=torch.float64))
    assert log_prob.shape == (2, 5) and torch.isfinite(log_prob).all()
    log_prob.sum().backward()
    assert_every_parameter_has_gradient(flow)


@pytest.mark.parametrize("name, batch_norm", CASES)
def test_rsample_is_differentiable(name, batch_norm):
    flow = make_flow(name, D, batch_norm=batch_norm)
    x = flow.rsample((6,))
    assert x.shape == (6, D)
    x.square().sum().backward()
    assert_every_parameter_has_gradient(flow)


@pytest.mark.parametrize("sample_shape", [(), (5,), (2, 3)])
@pytest.mark.parametrize("name, batch_norm", CASES)
def test_sample_shapes_and_no_graph(name, batch_norm, sample_shape):
    flow = make_flow(name, D, batch_norm=batch_norm)
    sample = flow.sample(sample_shape)
    assert sample.shape == (*sample_shape, D)
    assert not sample.requires_grad and sample.grad_fn is None
    assert flow.rsample(sample_shape).requires_grad
    x, log_prob = flow.sample_and_log_prob(sample_shape)
    assert x.shape == (*sample_shape, D) and log_prob.shape == sample_shape


@pytest.mark.parametrize("name, batch_norm", CASES)
def test_state_dict_round_trip(name, batch_norm):
    flow = make_flow(name, D, batch_norm=batch_norm).eval()
    buffer = io.BytesIO()
    torch.save(flow.state_dict(), buffer)
    buffer.seek(0)
    # weights_only=True (torch's default since 2.6): the state must be plain tensors.
    state = torch.load(buffer, weights_only=True)
    fresh = build_small_flow(name, D, batch_norm=batch_norm).eval()
    x = torch.randn(10, D, dtype=torch.float64)
    assert not torch.equal(fresh.log_prob(x), flow.log_prob(x))
    fresh.load_state_dict(state)
    assert torch.equal(fresh.log_prob(x), flow.log_prob(x))
    torch.manual_seed(3)
    expected = flow.sample((4,))
    torch.manual_seed(3)
    assert torch.equal(fresh.sample((4,)), expected)


@pytest.mark.parametrize("name, batch_norm", CASES)
def test_to_float64_is_respected(name, batch_norm):
    flow = make_flow(name, D, batch_norm=batch_norm, dtype=torch.float32)
    flow.to(torch.float64)
    assert flow.base.rsample((3,)).dtype == torch.float64
    assert flow.sample((3,)).dtype == torch.float64
    x, log_prob = flow.sample_and_log_prob((3,))
    assert x.dtype == log_prob.dtype == torch.float64
    assert flow.log_prob(x).dtype == torch.float64


@pytest.mark.parametrize("name, batch_norm", CASES)
def test_float32_agrees_with_float64(name, batch_norm):
    flow32 = make_flow(name, D, batch_norm=batch_norm, dtype=torch.float32).eval()
    flow64 = copy.deepcopy(flow32).double()
    x = torch.randn(20, D, dtype=torch.float64)
    log_prob = flow32.log_prob(x.float())
    assert log_prob.dtype == torch.float32 and flow32.sample((3,)).dtype == torch.float32
    torch.testing.assert_close(log_prob.double(), flow64.log_prob(x), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("name, batch_norm", BATCH_NORM_CASES)
def test_batch_norm_train_uses_batch_statistics_and_eval_does_not(name, batch_norm):
    flow = make_flow(name, D, batch_norm=batch_norm)
    x = 2.0 + 3.0 * torch.randn(64, D, dtype=torch.float64)
    flow.eval()
    eval_log_prob = flow.log_prob(x)
    # eval: deterministic and independent of what else is in the batch
    torch.testing.assert_close(flow.log_prob(x[:8]), eval_log_prob[:8], atol=1e-12, rtol=1e-12)
    torch.testing.assert_close(flow.log_prob(x), eval_log_prob, atol=0, rtol=0)
    flow.train()
    train_log_prob = flow.log_prob(x)
    assert not torch.allclose(train_log_prob, eval_log_prob)
    assert not torch.allclose(flow.log_prob(x[:8]), train_log_prob[:8])


@pytest.mark.parametrize("name, batch_norm", PLAIN_CASES)
def test_without_batch_norm_train_and_eval_agree(name, batch_norm):
    flow = make_flow(name, D)
    assert not any(isinstance(module, BatchNorm) for module in flow.modules())
    x = torch.randn(16, D, dtype=torch.float64)
    train_log_prob = flow.log_prob(x)
    assert torch.equal(flow.eval().log_prob(x), train_log_prob)


@pytest.mark.parametrize("shape", [(5, D + 1), (D - 1,), ()])
@pytest.mark.parametrize("name", FLOW_BUILDERS)
def test_wrong_last_dimension_is_a_clear_error(name, shape):
    flow = build_small_flow(name, D)
    message = re.escape(f"x has shape {shape}") + ".*" + re.escape(f"shape (..., {D})")
    with pytest.raises(ValueError, match=message):
        flow.log_prob(torch.randn(shape, dtype=torch.float64))


def test_an_int_sample_shape_is_a_one_dim_shape():
    flow = build_maf(2, 2, (8,))
    assert flow.sample(5).shape == flow.sample((5,)).shape == (5, 2)
    x, log_q = flow.sample_and_log_prob(3)
    assert x.shape == (3, 2) and log_q.shape == (3,)
