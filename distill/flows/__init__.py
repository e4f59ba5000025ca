"""Normalizing-flow bijectors, MADE and the `Flow` distribution (pure PyTorch).

Direction convention (TFP's): ``forward`` maps noise -> data (sampling), ``inverse`` maps
data -> noise (density evaluation); each returns ``(output, log|det J|)`` of its direction.
"""

from distill.flows.autoregressive import (
    AutoregressiveAffine,
    InverseAutoregressiveAffine,
    MaskedAutoregressiveAffine,
)
from distill.flows.base import Bijector, Chain, Invert
from distill.flows.builders import build_flow, build_iaf, build_maf, build_nice, build_realnvp
from distill.flows.coupling import AdditiveCoupling, AffineCoupling
from distill.flows.distribution import Flow, StandardNormal, in_data_space
from distill.flows.made import MADE
from distill.flows.normalization import ActNorm, BatchNorm
from distill.flows.permutation import Permute, RandomPermute, Reverse
from distill.flows.preprocessing import Logit, Standardize, build_preprocessing

__all__ = [
    "ActNorm",
    "AdditiveCoupling",
    "AffineCoupling",
    "AutoregressiveAffine",
    "BatchNorm",
    "Bijector",
    "Chain",
    "Flow",
    "InverseAutoregressiveAffine",
    "Logit",
    "Invert",
    "MADE",
    "MaskedAutoregressiveAffine",
    "Permute",
    "RandomPermute",
    "Reverse",
    "StandardNormal",
    "Standardize",
    "build_flow",
    "build_iaf",
    "build_maf",
    "build_nice",
    "build_preprocessing",
    "build_realnvp",
    "in_data_space",
]
