"""Shared numerical checks for bijectors: invertibility and log-dets against autograd."""

from __future__ import annotations

import torch
from torch.autograd.functional import jacobian

from distill.flows import BatchNorm, Bijector


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
    Jacobian at a few points, and inverse log-det == -forward log-det at matching points."""
    generator = torch.Generator().manual_seed(1)
    z = torch.randn(*batch_shape, features, generator=generator, dtype=torch.float64)
    x, log_det_forward = bijector(z, context)
    assert x.shape == z.shape and log_det_forward.shape == z.shape[:-1]
    z_back, log_det_inverse = bijector.inverse(x, context)
    torch.testing.assert_close(z_back, z, atol=atol, rtol=1e-6)
    torch.testing.assert_close(log_det_inverse, -log_det_forward, atol=atol, rtol=1e-6)

    x2 = torch.randn(*batch_shape, features, generator=generator, dtype=torch.float64)
    z2, _ = bijector.inverse(x2, context)
    x2_back, _ = bijector(z2, context)
    torch.testing.assert_close(x2_back, x2, atol=atol, rtol=1e-6)

    flat_z = z.reshape(-1, features)
    flat_x = x2.reshape(-1, features)
    flat_context = None
    if context is not None:
        flat_context = context.expand(*batch_shape, context.shape[-1]).reshape(-1, context.shape[-1])
    for index in range(min(num_jacobian_points, flat_z.shape[0])):
        c = None if flat_context is None else flat_context[index]
        expected = autograd_log_abs_det(lambda p: bijector(p, c)[0], flat_z[index])
        torch.testing.assert_close(bijector(flat_z[index], c)[1], expected, atol=1e-7, rtol=1e-6)
        expected = autograd_log_abs_det(lambda p: bijector.inverse(p, c)[0], flat_x[index])
        torch.testing.assert_close(
            bijector.inverse(flat_x[index], c)[1], expected, atol=1e-7, rtol=1e-6
        )
