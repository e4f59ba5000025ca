"""Shared numerical checks for bijectors and flows: invertibility and log-dets against
autograd, perturbed parameters, small flows from every builder."""

from __future__ import annotations

from functools import partial

import torch
from torch.autograd.functional import jacobian

from distill.flows import BatchNorm, Bijector, Flow, build_iaf, build_maf, build_nice, build_realnvp

FLOW_BUILDERS = {
    "maf": build_maf,
    "iaf": build_iaf,
    "realnvp": build_realnvp,
    "nice": build_nice,
    "maf_spline": partial(build_maf, transform="spline"),
    "iaf_spline": partial(build_iaf, transform="spline"),
    "realnvp_spline": partial(build_realnvp, transform="spline"),
}


@torch.no_grad()
def perturb(module: torch.nn.Module, scale: float = 0.3, seed: int = 0) -> torch.nn.Module:
    """Move every parameter (and BatchNorm's running statistics) away from its initial value,
    where many layers are the identity and would hide bugs."""
    generator = torch.Generator().manual_seed(seed)
    for parameter in module.parameters():
        noise = torch.randn(parameter.shape, generator=generator, dtype=parameter.dtype)
        parameter.add_(scale * noise.to(parameter.device))
    for sub in module.modules():
        if isinstance(sub, BatchNorm):
            shape = sub.running_mean.shape
            sub.running_mean.copy_(torch.randn(shape, generator=generator))
            sub.running_var.copy_(torch.rand(shape, generator=generator) + 0.5)
    return module


def build_small_flow(
    name: str,
    features: int = 4,
    batch_norm: bool = False,
    context_features: int | None = None,
    dtype: torch.dtype = torch.float64,
) -> Flow:
    """A 3-layer flow from ``FLOW_BUILDERS[name]`` with one hidden layer of 16, at its
    initialization (near the identity)."""
    flow = FLOW_BUILDERS[name](
        features, 3, (16,), batch_norm=batch_norm, context_features=context_features
    )
    return flow.to(dtype)


def make_flow(name: str, features: int = 4, scale: float = 0.3, seed: int = 0, **kwargs) -> Flow:
    """`build_small_flow` with perturbed parameters (and BatchNorm statistics)."""
    return perturb(build_small_flow(name, features, **kwargs), scale, seed)


def assert_every_parameter_has_gradient(module: torch.nn.Module) -> None:
    """Every parameter got a finite gradient that is not zero everywhere (masked weights
    have zero-gradient entries, but no parameter is disconnected as a whole)."""
    for name, parameter in module.named_parameters():
        assert parameter.grad is not None, f"{name} received no gradient"
        assert torch.isfinite(parameter.grad).all(), f"{name} has a non-finite gradient"
        assert parameter.grad.abs().sum() > 0, f"{name} has an all-zero gradient"


def autograd_log_abs_det(function, point: torch.Tensor) -> torch.Tensor:
    """log|det d function / d point| for a single point of shape (D,)."""
    matrix = jacobian(function, point)
    return torch.linalg.slogdet(matrix).logabsdet


def check_bijector(
    bijector: Bijector,
    features: int,
    batch_shape=(7,),
    context: torch.Tensor | None = None,
    atol: float = 1e-8,
    num_jacobian_points: int = 3,
):
    """inverse(forward(z)) == z, forward(inverse(x)) == x, both log-dets against the autograd
    Jacobian at a few points, and inverse log-det == -forward log-det at matching points.

    A ``context`` of shape ``(..., C)`` is broadcast against ``batch_shape`` (the inputs take
    the broadcast batch shape); each Jacobian point is evaluated alone with its own context
    row, and must reproduce its row of the batched result (so contexts are matched to the
    right inputs).
    """
    if context is not None:
        batch_shape = torch.broadcast_shapes(tuple(batch_shape), context.shape[:-1])
    generator = torch.Generator().manual_seed(1)
    z = torch.randn(*batch_shape, features, generator=generator, dtype=torch.float64)
    x, log_det_forward = bijector(z, context)
    assert x.shape == z.shape and log_det_forward.shape == z.shape[:-1]
    z_back, log_det_inverse = bijector.inverse(x, context)
    torch.testing.assert_close(z_back, z, atol=atol, rtol=1e-6)
    torch.testing.assert_close(log_det_inverse, -log_det_forward, atol=atol, rtol=1e-6)

    x2 = torch.randn(*batch_shape, features, generator=generator, dtype=torch.float64)
    z2, log_det_inverse2 = bijector.inverse(x2, context)
    x2_back, _ = bijector(z2, context)
    torch.testing.assert_close(x2_back, x2, atol=atol, rtol=1e-6)

    def rows(tensor: torch.Tensor) -> torch.Tensor:
        """The batch dims flattened into one."""
        return tensor.reshape(-1, *tensor.shape[len(batch_shape) :])

    contexts = [None] * rows(z).shape[0]
    if context is not None:
        contexts = rows(context.expand(*batch_shape, context.shape[-1]))
    directions = (
        (bijector.forward, rows(z), rows(x), rows(log_det_forward)),
        (bijector.inverse, rows(x2), rows(z2), rows(log_det_inverse2)),
    )
    for index in range(min(num_jacobian_points, len(contexts))):
        c = contexts[index]
        for function, inputs, outputs, log_dets in directions:
            point_out, point_log_det = function(inputs[index], c)
            torch.testing.assert_close(point_out, outputs[index], atol=atol, rtol=1e-6)
            torch.testing.assert_close(point_log_det, log_dets[index], atol=atol, rtol=1e-6)
            expected = autograd_log_abs_det(lambda p, f=function, c=c: f(p, c)[0], inputs[index])
            torch.testing.assert_close(point_log_det, expected, atol=1e-7, rtol=1e-6)
