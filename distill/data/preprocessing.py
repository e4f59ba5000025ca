"""Fitting the preprocessing bijectors (`distill.flows.preprocessing`) to training data."""

from __future__ import annotations

import torch
from torch import Tensor

from distill.flows.base import Chain
from distill.flows.preprocessing import Standardize, build_preprocessing


@torch.no_grad()
def fit_standardize(standardize: Standardize, x: Tensor) -> Standardize:
    """Set ``standardize``'s ``mean`` and ``std`` to the statistics of ``x`` (N, D), in place;
    returns it. A constant column has no density (its entropy is minus infinity): an error."""
    x = x.double()
    std = x.std(0)
    constant = torch.nonzero(std == 0).flatten().tolist()
    if constant:
        raise ValueError(
            f"column(s) {constant[:5]} of the training data are constant: a constant "
            "column has no density, drop it before training"
        )
    standardize.mean.copy_(x.mean(0))
    standardize.std.copy_(std)
    return standardize


@torch.no_grad()
def fit_sequence_preprocessing(data: Tensor) -> Chain:
    """``Chain([StandardizeSequence(C)])`` (`distill.flows`) fitted to sequences ``data``
    ``(N, C, T)``: each channel's mean and standard deviation over all its values, so the model
    space has zero mean and unit variance per channel. A silent channel is an error (it has no
    density)."""
    chain = build_preprocessing(channels=data.shape[1])
    (standardize,) = chain.bijectors
    values = data.double().transpose(0, 1).flatten(1)  # (C, N * T)
    std = values.std(1)
    silent = torch.nonzero(std == 0).flatten().tolist()
    if silent:
        raise ValueError(
            f"channel(s) {silent} of the training sequences are constant: a constant channel "
            "has no density; drop it or check the data"
        )
    standardize.mean.copy_(values.mean(1, keepdim=True))
    standardize.std.copy_(std[:, None])
    return chain


def fit_preprocessing(
    data: Tensor, features: int, logit_upper: float | None = None, logit_alpha: float = 0.05
) -> Chain:
    """`build_preprocessing` with its standardization fitted to ``data`` (N, D, data space),
    after the logit if there is one: the model space then has zero mean and unit variance."""
    chain = build_preprocessing(features, logit_upper, logit_alpha)
    standardize, *rest = chain.bijectors
    model_side = data.double()
    for bijector in reversed(rest):
        model_side, _ = bijector.inverse(model_side)
    fit_standardize(standardize, model_side)
    return chain
