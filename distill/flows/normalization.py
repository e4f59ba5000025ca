"""Per-dimension affine bijectors whose statistics come from data: BatchNorm and ActNorm.

Both are ``x = (u - beta) * exp(-gamma) * sigma + m`` in the forward (noise -> data)
direction, i.e. the inverse normalizes data: ``u = (x - m) / sigma * exp(gamma) + beta``.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor, nn

from distill.flows.base import Bijector


def _global_sum(tensor: Tensor) -> Tensor:
    """``tensor`` summed over all processes when torch.distributed runs with several ranks
    (differentiably: the gradient flows through the all-reduce), else itself."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        from torch.distributed.nn.functional import all_reduce

        return all_reduce(tensor)
    return tensor


def _batch_moments(x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Mean, (biased) variance and row count over all leading dims of ``x`` (..., D), of the
    global batch across processes. Two passes (mean, then centred squares), so float32 keeps
    its precision on data with a large mean."""
    flat = x.reshape(-1, x.shape[-1])
    count = _global_sum(flat.new_tensor(float(flat.shape[0])))
    mean = _global_sum(flat.sum(0)) / count
    variance = _global_sum((flat - mean).square().sum(0)) / count
    return mean, variance, count


class BatchNorm(Bijector):
    """Flow batch normalization (Real NVP), with a learnable per-dimension affine.

    ``inverse`` (data -> noise) in training mode normalizes with the batch's own mean and
    variance, and updates the running statistics with ``momentum``; in eval mode it uses
    the running statistics. ``forward`` (noise -> data) de-normalizes with the running
    statistics. The log-det is exact for the statistics actually used (the batch-statistics
    log-det treats them as constants per batch, as in Real NVP).
    """

    def __init__(self, features: int, momentum: float = 0.1, eps: float = 1e-5):
        super().__init__()
        if not 0.0 < momentum <= 1.0:
            raise ValueError(f"momentum must be in (0, 1], got {momentum}")
        self.features = features
        self.momentum = momentum
        self.eps = eps
        self.log_gamma = nn.Parameter(torch.zeros(features))
        self.beta = nn.Parameter(torch.zeros(features))
        self.register_buffer("running_mean", torch.zeros(features))
        self.register_buffer("running_var", torch.ones(features))

    def _log_scale(self, var: Tensor) -> Tensor:
        """log of the inverse's per-dimension scale ``exp(gamma) / sqrt(var + eps)``."""
        return self.log_gamma - 0.5 * torch.log(var + self.eps)

    def forward(self, u: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Noise ``u`` (..., D) -> data (..., D) with the running statistics."""
        log_scale = self._log_scale(self.running_var)
        x = (u - self.beta) * torch.exp(-log_scale) + self.running_mean
        return x, (-log_scale.sum()).expand(u.shape[:-1])

    def inverse(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Data ``x`` (..., D) -> noise (..., D): batch statistics in training, running in eval."""
        if self.training:
            mean, var, count = _batch_moments(x)
            with torch.no_grad():  # the unbiased variance of the global batch, all ranks'
                unbiased = var * count / (count - 1).clamp(min=1)
                self.running_mean.lerp_(mean.detach(), self.momentum)
                self.running_var.lerp_(unbiased.detach(), self.momentum)
        else:
            mean, var = self.running_mean, self.running_var
        log_scale = self._log_scale(var)
        u = (x - mean) * torch.exp(log_scale) + self.beta
        return u, log_scale.sum().expand(x.shape[:-1])


class ActNorm(Bijector):
    """Per-dimension affine ``x = u * exp(log_scale) + shift`` (Glow), initialized from the
    first data batch it sees in training (``inverse`` in train mode), so that batch comes out
    with zero mean and unit variance. Both directions are exact inverses at all times."""

    def __init__(self, features: int, eps: float = 1e-6):
        super().__init__()
        self.features = features
        self.eps = eps
        self.shift = nn.Parameter(torch.zeros(features))
        self.log_scale = nn.Parameter(torch.zeros(features))
        self.register_buffer("initialized", torch.tensor(False))

    @torch.no_grad()
    def _initialize(self, x: Tensor) -> None:
        mean, var, _ = _batch_moments(x)
        self.shift.copy_(mean)
        self.log_scale.copy_(0.5 * torch.log(var + self.eps))
        self.initialized.fill_(True)

    def forward(self, u: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Noise ``u`` (..., D) -> data (..., D)."""
        x = u * self.log_scale.exp() + self.shift
        return x, self.log_scale.sum().expand(u.shape[:-1])

    def inverse(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Data ``x`` (..., D) -> noise (..., D); the first training batch sets the statistics."""
        if self.training and not self.initialized:
            self._initialize(x)
        u = (x - self.shift) * torch.exp(-self.log_scale)
        return u, (-self.log_scale.sum()).expand(x.shape[:-1])
