"""Normalizing-flow bijectors, their elementwise transforms (affine, rational-quadratic
spline), the conditioners (MADE over vector dimensions, WaveNet over time) and the `Flow`
distributions (pure PyTorch).

Direction convention (TFP's): ``forward`` maps noise -> data (sampling), ``inverse`` maps
data -> noise (density evaluation); each returns ``(output, log|det J|)`` of its direction.
"""

from distill.flows.autoregressive import (
    AutoregressiveAffine,
    AutoregressiveLayer,
    AutoregressiveSpline,
    AutoregressiveWaveNet,
    InverseAutoregressiveAffine,
    InverseAutoregressiveSpline,
    InverseAutoregressiveWaveNet,
    MaskedAutoregressiveAffine,
    MaskedAutoregressiveSpline,
    MaskedAutoregressiveWaveNet,
)
from distill.flows.base import Bijector, Chain, Invert
from distill.flows.builders import (
    build_flow,
    build_iaf,
    build_maf,
    build_nice,
    build_realnvp,
    build_wavenet_flow,
    build_wavenet_iaf,
    build_wavenet_maf,
)
from distill.flows.coupling import AdditiveCoupling, AffineCoupling, Coupling, SplineCoupling
from distill.flows.distribution import (
    Flow,
    SequenceFlow,
    SequenceNormal,
    StandardNormal,
    in_data_space,
)
from distill.flows.made import MADE
from distill.flows.normalization import ActNorm, BatchNorm
from distill.flows.permutation import Permute, RandomPermute, Reverse
from distill.flows.preprocessing import (
    Logit,
    Standardize,
    StandardizeSequence,
    build_preprocessing,
)
from distill.flows.transforms import Affine, ElementwiseTransform, RationalQuadraticSpline, Shift
from distill.flows.wavenet import WaveNet

__all__ = [
    "StandardizeSequence",
    "build_wavenet_maf",
    "build_wavenet_iaf",
    "build_wavenet_flow",
    "WaveNet",
    "SequenceNormal",
    "SequenceFlow",
    "MaskedAutoregressiveWaveNet",
    "InverseAutoregressiveWaveNet",
    "AutoregressiveWaveNet",
    "ActNorm",
    "AdditiveCoupling",
    "Affine",
    "AffineCoupling",
    "AutoregressiveAffine",
    "AutoregressiveLayer",
    "AutoregressiveSpline",
    "BatchNorm",
    "Bijector",
    "Chain",
    "Coupling",
    "ElementwiseTransform",
    "Flow",
    "InverseAutoregressiveAffine",
    "InverseAutoregressiveSpline",
    "Invert",
    "Logit",
    "MADE",
    "MaskedAutoregressiveAffine",
    "MaskedAutoregressiveSpline",
    "Permute",
    "RandomPermute",
    "RationalQuadraticSpline",
    "Reverse",
    "Shift",
    "SplineCoupling",
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
