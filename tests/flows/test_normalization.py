"""BatchNorm's train/eval behaviour and ActNorm's data-dependent initialization."""

import torch

from distill.flows import ActNorm, BatchNorm
from tests.flows.helpers import perturb


def test_batch_norm_training_inverse_uses_batch_statistics():
    layer = perturb(BatchNorm(3).double())
    running_mean = layer.running_mean.clone()
    layer.train()
    x = 3.0 + 2.0 * torch.randn(4096, 3, dtype=torch.float64)
    u, log_det = layer.inverse(x)
    mean, var = x.mean(0), x.var(0, unbiased=False)
    expected_log_scale = layer.log_gamma - 0.5 * torch.log(var + layer.eps)
    torch.testing.assert_close(u, (x - mean) * expected_log_scale.exp() + layer.beta)
    torch.testing.assert_close(log_det, expected_log_scale.sum().expand(4096))
    # the running statistics moved towards the batch's by `momentum`
    torch.testing.assert_close(layer.running_mean, 0.9 * running_mean + 0.1 * mean)


def test_batch_norm_eval_uses_running_statistics_and_leaves_them():
    layer = perturb(BatchNorm(3).double()).eval()
    before = layer.running_mean.clone(), layer.running_var.clone()
    x = torch.randn(10, 3, dtype=torch.float64)
    u, log_det = layer.inverse(x)
    assert torch.equal(layer.running_mean, before[0]) and torch.equal(layer.running_var, before[1])
    log_scale = layer.log_gamma - 0.5 * torch.log(layer.running_var + layer.eps)
    torch.testing.assert_close(u, (x - layer.running_mean) * log_scale.exp() + layer.beta)
    # forward de-normalizes with the same running statistics: an exact round trip
    torch.testing.assert_close(layer(u)[0], x)


def test_batch_norm_running_statistics_converge():
    layer = BatchNorm(2, momentum=0.5)
    for _ in range(30):
        layer.inverse(torch.randn(2048, 2) * torch.tensor([0.5, 4.0]) + torch.tensor([1.0, -2.0]))
    torch.testing.assert_close(layer.running_mean, torch.tensor([1.0, -2.0]), atol=0.2, rtol=0)
    torch.testing.assert_close(layer.running_var, torch.tensor([0.25, 16.0]), atol=0.0, rtol=0.15)


def test_act_norm_initializes_from_first_training_batch():
    layer = ActNorm(2)
    x = torch.randn(5000, 2) * torch.tensor([3.0, 0.1]) + torch.tensor([-1.0, 4.0])
    u, _ = layer.inverse(x)
    torch.testing.assert_close(u.mean(0), torch.zeros(2), atol=1e-4, rtol=0)
    torch.testing.assert_close(u.std(0), torch.ones(2), atol=1e-3, rtol=0)
    assert bool(layer.initialized)
    shift = layer.shift.clone()
    layer.inverse(x + 10)  # a later batch does not re-initialize
    assert torch.equal(layer.shift, shift)


def test_act_norm_state_dict_keeps_initialization():
    layer = ActNorm(2)
    layer.inverse(torch.randn(100, 2) * 5)
    fresh = ActNorm(2)
    fresh.load_state_dict(layer.state_dict())
    assert bool(fresh.initialized)
    x = torch.randn(3, 2)
    torch.testing.assert_close(fresh.inverse(x)[0], layer.inverse(x)[0])


def test_batch_norm_statistics_keep_float32_precision_far_from_zero():
    x = 1e4 + torch.randn(4096, 2, dtype=torch.float64)
    layer = BatchNorm(2)
    u, _ = layer.inverse(x.float())
    torch.testing.assert_close(
        u.double().std(0), torch.ones(2, dtype=torch.float64), atol=1e-3, rtol=0
    )
