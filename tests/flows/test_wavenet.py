"""WaveNet flows over time: causality of the conditioner, the cached sequential direction equal
to naive step-by-step sampling, invertibility and log-dets against autograd in float64 with
perturbed weights, conditioning, shapes and errors."""

import pytest
import torch
from torch.autograd.functional import jacobian

from distill.flows import (
    Chain,
    InverseAutoregressiveWaveNet,
    MaskedAutoregressiveWaveNet,
    SequenceFlow,
    StandardizeSequence,
    WaveNet,
    build_wavenet_iaf,
    build_wavenet_maf,
)
from tests.flows.helpers import perturb

C, T = 2, 12
SMALL = {"num_layers": 3, "residual_channels": 8, "skip_channels": 6, "dilation_cycle": 2}
CONDITIONING = {
    "none": ({}, None),
    "global": ({"global_features": 3}, (3,)),
    "local": ({"local_features": 2, "hop_length": 4}, (2, T // 4)),
    "local_mlp": ({"local_features": 2, "hop_length": 4, "context_hidden": 5}, (2, T // 4)),
    "global_mlp": ({"global_features": 3, "context_hidden": 5}, (3,)),
}


def make_context(kind: str, batch: int) -> torch.Tensor | None:
    shape = CONDITIONING[kind][1]
    if shape is None:
        return None
    generator = torch.Generator().manual_seed(5)
    return torch.randn(batch, *shape, generator=generator, dtype=torch.float64)


def make_layer(layer_class, kind: str, transform: str = "affine", kernel_size: int = 2):
    layer = layer_class(
        C,
        transform=transform,
        kernel_size=kernel_size,
        **({"tail_bound": 2.0} if transform == "spline" else {}),
        **SMALL,
        **CONDITIONING[kind][0],
    )
    return perturb(layer.double())


def sequences(batch: int, seed: int = 1) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(batch, C, T, generator=generator, dtype=torch.float64)


@pytest.mark.parametrize("kernel_size", [2, 3])
@pytest.mark.parametrize("kind", list(CONDITIONING))
def test_output_at_step_t_reads_no_input_at_or_after_t(kind, kernel_size):
    net = perturb(WaveNet(C, 2, kernel_size=kernel_size, **SMALL, **CONDITIONING[kind][0]))
    net = net.double()
    context = make_context(kind, 1)
    point = sequences(1)[0]
    # d params[c, t, p] / d inputs[c', s], flattened to (C*T*P, C*T)
    matrix = jacobian(lambda x: net.params(x[None], context)[0].reshape(-1), point)
    dependence = matrix.view(C, T, 2, C, T).abs().permute(0, 2, 3, 1, 4)  # (C, P, C', t, s)
    future = torch.arange(T)[None, :] >= torch.arange(T)[:, None]  # [t, s]: s >= t
    assert dependence[..., future].max() == 0
    # and it does read the past (the test would pass for a network that reads nothing)
    assert dependence[..., ~future].max() > 0


@pytest.mark.parametrize("depth", [{}, {"num_layers": 5, "dilation_cycle": 5}])
@pytest.mark.parametrize("kernel_size", [2, 3])
@pytest.mark.parametrize("kind", list(CONDITIONING))
def test_the_training_and_sampling_layouts_compute_the_same_parameters(kind, kernel_size, depth):
    # params runs time-major when autograd records (the causality and log-det tests above and
    # below run that way) and channel-major with Conv1d otherwise: the same numbers, also with
    # dilations (up to 16) whose lags pass the sequence's T = 12 steps
    net = WaveNet(C, 2, kernel_size=kernel_size, **{**SMALL, **depth}, **CONDITIONING[kind][0])
    net = perturb(net)
    net = net.double()
    context = make_context(kind, 3)
    inputs = sequences(3)
    with torch.no_grad():
        sampling = net.params(inputs, context)
    training = net.params(inputs.requires_grad_(), context)
    assert training.requires_grad and not sampling.requires_grad
    torch.testing.assert_close(training, sampling, rtol=0, atol=1e-12)
    assert training.shape == (3, C, T, 2)


@pytest.mark.parametrize("transform", ["affine", "spline"])
@pytest.mark.parametrize("kind", list(CONDITIONING))
@pytest.mark.parametrize("layer_class", [MaskedAutoregressiveWaveNet, InverseAutoregressiveWaveNet])
def test_invertible_with_exact_log_det(layer_class, kind, transform):
    layer = make_layer(layer_class, kind, transform, kernel_size=3)
    context = make_context(kind, 4)
    u = sequences(4)
    x, log_det = layer(u, context)
    assert x.shape == u.shape and log_det.shape == (4,)
    u_back, log_det_inverse = layer.inverse(x, context)
    torch.testing.assert_close(u_back, u, atol=1e-9, rtol=1e-7)
    torch.testing.assert_close(log_det_inverse, -log_det, atol=1e-9, rtol=1e-7)
    for index in range(2):
        c = None if context is None else context[index : index + 1]
        for direction, inputs, log_dets in (
            (layer.forward, u, log_det),
            (layer.inverse, x, log_det_inverse),
        ):
            matrix = jacobian(
                lambda p, f=direction, c=c: f(p.view(1, C, T), c)[0].reshape(-1),
                inputs[index].reshape(-1),
            )
            expected = torch.linalg.slogdet(matrix).logabsdet
            torch.testing.assert_close(log_dets[index], expected, atol=1e-8, rtol=1e-7)


def naive_solve(layer: MaskedAutoregressiveWaveNet, u: torch.Tensor, context) -> torch.Tensor:
    """Sampling without queues: a full parallel WaveNet pass for each step t (the steps not
    solved yet are zeros, which step t does not read)."""
    x = torch.zeros_like(u)
    for t in range(u.shape[-1]):
        params = layer.params(x, context)[..., t, :]
        x[..., t], _ = layer.transform.forward(u[..., t], params)
    return x


@pytest.mark.parametrize("kind", list(CONDITIONING))
def test_cached_sampling_equals_naive_step_by_step_sampling(kind):
    layer = make_layer(MaskedAutoregressiveWaveNet, kind, kernel_size=3)
    context = make_context(kind, 3)
    u = sequences(3)
    with torch.no_grad():
        cached, _ = layer(u, context)
        torch.testing.assert_close(cached, naive_solve(layer, u, context))


def test_sequential_direction_is_differentiable():
    layer = make_layer(MaskedAutoregressiveWaveNet, "global")
    u = sequences(2).requires_grad_(True)
    x, log_det = layer(u, make_context("global", 2))
    (x.square().sum() + log_det.sum()).backward()
    assert torch.isfinite(u.grad).all() and u.grad.abs().sum() > 0
    assert all(p.grad is not None for p in layer.parameters())


@pytest.mark.parametrize("kind", ["global", "local", "global_mlp", "local_mlp"])
def test_conditioning_reaches_the_output(kind):
    layer = make_layer(InverseAutoregressiveWaveNet, kind)
    u = sequences(1).expand(2, C, T)
    context = make_context(kind, 2)
    x, _ = layer(u, context)
    assert (x[0] - x[1]).abs().max() > 1e-3


@pytest.mark.parametrize("builder", [build_wavenet_maf, build_wavenet_iaf])
def test_flow_samples_any_length_with_its_density(builder):
    flow = perturb(
        builder(
            channels=C,
            length=T,
            layers_per_flow=[2, 1],
            **{k: v for k, v in SMALL.items() if k != "num_layers"},
        ).double()
    )
    assert isinstance(flow, SequenceFlow) and isinstance(flow.bijector, Chain)
    x, log_q = flow.sample_and_log_prob(5)
    assert x.shape == (5, C, T) and log_q.shape == (5,)
    torch.testing.assert_close(flow.log_prob(x), log_q)
    assert flow.sample((2, 3), length=7).shape == (2, 3, C, 7)


def test_local_context_sets_the_sample_length():
    flow = build_wavenet_iaf(
        channels=1, length=8, layers_per_flow=[1], local_features=2, hop_length=4
    )
    context = torch.randn(3, 2, 5)
    assert flow.sample(2, context).shape == (2, 3, 1, 20)
    with pytest.raises(ValueError, match="disagrees with the local context"):
        flow.sample(2, context, length=8)


def test_base_density_is_the_standard_normal_of_every_value():
    flow = build_wavenet_maf(channels=1, length=4, layers_per_flow=[1])
    x = torch.randn(6, 1, 4)
    with torch.no_grad():
        flow.bijector.bijectors[0].conditioner.head[-1].weight.zero_()
    expected = torch.distributions.Normal(0.0, 1.0).log_prob(x).sum((-2, -1))
    torch.testing.assert_close(flow.log_prob(x), expected)


def test_clear_errors():
    flow = build_wavenet_maf(channels=2, length=8, layers_per_flow=[1], global_features=3)
    with pytest.raises(ValueError, match=r"shape \(\.\.\., 2, T\)"):
        flow.log_prob(torch.randn(4, 1, 8), torch.randn(4, 3))
    with pytest.raises(ValueError, match="global context of 3"):
        flow.log_prob(torch.randn(4, 2, 8))
    local = build_wavenet_maf(
        channels=1, length=8, layers_per_flow=[1], local_features=2, hop_length=4
    )
    with pytest.raises(ValueError, match="multiple of 4"):
        local.log_prob(torch.randn(4, 1, 10), torch.randn(4, 2, 2))
    with pytest.raises(ValueError, match="one context"):
        WaveNet(1, 2, global_features=2, local_features=2, hop_length=4)
    with pytest.raises(ValueError, match="hop_length"):
        WaveNet(1, 2, local_features=2)
    with pytest.raises(ValueError, match="layers_per_flow"):
        build_wavenet_iaf(layers_per_flow=[])
    with pytest.raises(ValueError, match="context_hidden=8 sizes the network that reads a context"):
        build_wavenet_iaf(layers_per_flow=[1], context_hidden=8)
    with pytest.raises(ValueError, match="hop_length=4 is the steps per frame of a local context"):
        WaveNet(1, 2, hop_length=4)
    with pytest.raises(ValueError, match="log_scale_bound=7.0 is not read by the spline"):
        build_wavenet_maf(layers_per_flow=[1], transform="spline", log_scale_bound=7.0)
    with pytest.raises(ValueError, match="length is for sequence flows"):
        from distill.flows import build_maf

        build_maf(2, 1).sample(3, length=5)


def test_new_flows_start_near_the_identity():
    flow = build_wavenet_iaf(channels=1, length=64, layers_per_flow=[4, 4])
    u = torch.randn(3, 1, 64)
    x, log_det = flow.bijector(u)
    assert (x - u).abs().max() < 0.2 and log_det.abs().max() < 0.5


def test_an_iaf_stack_sees_the_noise_of_its_summed_receptive_fields_only():
    # x_t reads u_{t-H..t}, H the flows' receptive fields summed: two samples of a student
    # more than H steps apart are independent, so it cannot hold a phase (a pitch) longer
    flow = build_wavenet_iaf(channels=1, length=40, layers_per_flow=[3, 2]).double()
    perturb(flow)
    horizon = sum(layer.conditioner.receptive_field for layer in flow.bijector.bijectors)
    assert horizon == (1 + 1 + 2 + 4) + (1 + 1 + 2)
    u = torch.randn(1, 1, 40, dtype=torch.float64, requires_grad=True)
    (gradient,) = torch.autograd.grad(flow.bijector(u)[0][0, 0, 30], u)
    reached = gradient[0, 0].abs() > 0
    assert reached[30 - horizon : 31].all()
    assert not reached[: 30 - horizon].any() and not reached[31:].any()


def test_follows_dtype():
    flow = build_wavenet_iaf(channels=1, length=16, layers_per_flow=[2]).double()
    x, log_q = flow.sample_and_log_prob(2)
    assert x.dtype == torch.float64 and log_q.dtype == torch.float64


def test_sequence_standardization_is_invertible_with_exact_log_det():
    standardize = StandardizeSequence(C).double()
    with torch.no_grad():
        standardize.mean.copy_(torch.tensor([[0.3], [-1.0]]))
        standardize.std.copy_(torch.tensor([[0.2], [1.7]]))
    z = sequences(3)
    x, log_det = standardize(z)
    z_back, log_det_inverse = standardize.inverse(x)
    torch.testing.assert_close(z_back, z)
    torch.testing.assert_close(log_det_inverse, -log_det)
    matrix = jacobian(lambda p: standardize(p.view(1, C, T))[0].reshape(-1), z[0].reshape(-1))
    torch.testing.assert_close(log_det[0], torch.linalg.slogdet(matrix).logabsdet)
