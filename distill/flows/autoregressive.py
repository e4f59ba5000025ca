"""Autoregressive bijectors: MAF and IAF layers, one mechanism used two ways and generic in
its elementwise transform (affine, rational-quadratic spline).

Each computes ``x_i = f(u_i; theta_i)`` (noise u -> data x) with f an `ElementwiseTransform`
and ``theta_i`` read by an autoregressive conditioner (MADE) from the earlier dimensions of
one side. MAF reads the data, ``theta_i = c(x_<i)``, so ``inverse`` is one parallel pass
and ``forward`` is sequential; IAF reads the noise, ``theta_i = c(u_<i)``, so ``forward`` is
one parallel pass and ``inverse`` is sequential. An IAF layer is the ``Invert`` of a MAF
layer up to which side its conditioner reads (the tutorial's "MAF and IAF are the same
bijector class").

The conditioner's interface (`MADE` over the dimensions of vectors ``(..., D)``, `WaveNet`
over the time steps of sequences ``(..., C, T)``): ``out_multiplier`` (P), ``event_dims``
(the trailing dims of one event: 1 for vectors, 2 for sequences), ``params(inputs, context)``
-> ``inputs.shape + (P,)``, and ``solve(given, step, context)`` for the sequential direction,
one call of ``step`` per dimension (MADE: ``(...)`` with ``(..., P)``) or per time step
(WaveNet: ``(..., C)`` with ``(..., C, P)``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from torch import Tensor, nn

from distill.flows.base import Bijector
from distill.flows.made import MADE
from distill.flows.transforms import (
    Affine,
    ElementwiseTransform,
    elementwise_transform,
)
from distill.flows.wavenet import WaveNet


class AutoregressiveLayer(Bijector):
    """``x_i = f(u_i; theta_i)``, ``theta = conditioner(y)`` with ``y`` the data (MAF,
    ``conditioner_reads_data = True``) or the noise (IAF): the mechanism of every MAF and IAF
    layer. Subclasses set ``conditioner_reads_data`` and build the transform and conditioner.

    The direction that computes theta from its own input (MAF: ``inverse``, IAF: ``forward``)
    is one conditioner pass; the other is sequential, D steps of `MADE.solve`.
    """

    conditioner_reads_data: bool

    def __init__(self, transform: ElementwiseTransform, conditioner: MADE | WaveNet):
        super().__init__()
        if conditioner.out_multiplier != transform.num_params:
            raise ValueError(
                f"the conditioner gives {conditioner.out_multiplier} parameters per dimension "
                f"but {transform} needs {transform.num_params}"
            )
        self.transform = transform
        self.conditioner = conditioner
        self.features = getattr(conditioner, "features", None)
        # the dims log-dets are summed over: the event's, and those of one sequential step
        self._event_dims = tuple(range(-conditioner.event_dims, 0))
        self._step_dims = self._event_dims[1:]

    def extra_repr(self) -> str:
        return f"transform={self.transform}"

    def params(self, conditioner_input: Tensor, context: Tensor | None = None) -> Tensor:
        """The transform's parameters ``(*event, P)`` from the conditioner's input (x for
        MAF, u for IAF): ``(..., D) -> (..., D, P)`` or ``(..., C, T) -> (..., C, T, P)``."""
        return self.conditioner.params(conditioner_input, context)

    def affine_params(
        self, conditioner_input: Tensor, context: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """``(mu, alpha)``, each of the input's shape, for an `Affine` transform: the shift and
        log-scale of ``x = u * exp(alpha) + mu`` read from the conditioner's input."""
        if not isinstance(self.transform, Affine):
            raise TypeError(
                f"affine_params needs an Affine transform, this layer has {self.transform}"
            )
        return self.transform.shift_and_log_scale(self.params(conditioner_input, context))

    def forward(self, u: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Noise ``u`` -> data ``x`` (the event's shape) and log|dx/du| (the batch shape)."""
        if self.conditioner_reads_data:
            return self._solve(u, context, self.transform.forward)
        x, log_det = self.transform.forward(u, self.params(u, context))
        return x, log_det.sum(self._event_dims)

    def inverse(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Data ``x`` -> noise ``u`` (the event's shape) and log|du/dx| (the batch shape)."""
        if self.conditioner_reads_data:
            u, log_det = self.transform.inverse(x, self.params(x, context))
            return u, log_det.sum(self._event_dims)
        return self._solve(x, context, self.transform.inverse)

    def _solve(
        self,
        given: Tensor,
        context: Tensor | None,
        transform: Callable[[Tensor, Tensor], tuple[Tensor, Tensor]],
    ) -> tuple[Tensor, Tensor]:
        """The sequential direction: ``y`` with ``y_i = transform(given_i, theta_i(y_<i))``,
        solved one step at a time (`MADE.solve`: a dimension in rank order; `WaveNet.solve`: a
        time step), and its log-det: the sum of the elementwise log-dets of the steps."""
        log_det: Tensor | float = 0.0
        step_dims = self._step_dims

        def step(given_i: Tensor, params_i: Tensor) -> Tensor:
            nonlocal log_det
            solution_i, log_det_i = transform(given_i, params_i)
            log_det = log_det + (log_det_i.sum(step_dims) if step_dims else log_det_i)
            return solution_i

        solution = self.conditioner.solve(given, step, context)
        return solution, log_det


def _made(
    transform: ElementwiseTransform,
    features: int,
    hidden_features: Sequence[int],
    order: Sequence[int] | Tensor | None,
    context_features: int | None,
    activation: type[nn.Module],
) -> MADE:
    """A MADE with the transform's number of parameters per dimension."""
    return MADE(
        features,
        hidden_features,
        out_multiplier=transform.num_params,
        order=order,
        context_features=context_features,
        activation=activation,
    )


class AutoregressiveAffine(AutoregressiveLayer):
    """``x = u * exp(alpha) + mu``, ``(mu, alpha) = MADE(y)`` (`Affine`); use
    `MaskedAutoregressiveAffine` or `InverseAutoregressiveAffine`.

    The log-scale is soft-clamped to ``(-log_scale_bound, log_scale_bound)`` (default 3: at
    most a factor e^3 ~ 20 per layer), and the MADE's last layer starts near zero, so a new
    layer is close to the identity.
    """

    def __init__(
        self,
        features: int,
        hidden_features: Sequence[int] = (64, 64),
        order: Sequence[int] | Tensor | None = None,
        context_features: int | None = None,
        log_scale_bound: float = 3.0,
        activation: type[nn.Module] = nn.ReLU,
    ):
        transform = elementwise_transform("affine", log_scale_bound=log_scale_bound)
        super().__init__(
            transform,
            _made(transform, features, hidden_features, order, context_features, activation),
        )


class AutoregressiveSpline(AutoregressiveLayer):
    """``x_i = spline(u_i; theta_i)``, ``theta = MADE(y)`` (`RationalQuadraticSpline`: ``bins``
    bins on ``[-tail_bound, tail_bound]``, identity outside); use `MaskedAutoregressiveSpline`
    or `InverseAutoregressiveSpline`. Zero parameters are the identity and the MADE's last
    layer starts near zero, so a new layer is close to the identity.
    """

    def __init__(
        self,
        features: int,
        hidden_features: Sequence[int] = (64, 64),
        order: Sequence[int] | Tensor | None = None,
        context_features: int | None = None,
        bins: int = 8,
        tail_bound: float = 5.0,
        activation: type[nn.Module] = nn.ReLU,
    ):
        transform = elementwise_transform("spline", bins=bins, tail_bound=tail_bound)
        super().__init__(
            transform,
            _made(transform, features, hidden_features, order, context_features, activation),
        )


class MaskedAutoregressiveAffine(AutoregressiveAffine):
    """MAF layer (Papamakarios et al., 2017): ``x_i = u_i * exp(alpha_i(x_<i)) + mu_i(x_<i)``.

    Fast direction: ``inverse`` (data -> noise, density evaluation), one MADE pass.
    Slow direction: ``forward`` (sampling), D sequential steps (`MADE.solve`).
    """

    conditioner_reads_data = True


class InverseAutoregressiveAffine(AutoregressiveAffine):
    """IAF layer (Kingma et al., 2016): ``x_i = u_i * exp(alpha_i(u_<i)) + mu_i(u_<i)``.

    Fast direction: ``forward`` (noise -> data, sampling with its log-det), one MADE pass.
    Slow direction: ``inverse`` (density of external data), D sequential steps.
    """

    conditioner_reads_data = False


class MaskedAutoregressiveSpline(AutoregressiveSpline):
    """Spline MAF layer (Durkan et al., 2019): ``x_i = spline(u_i; theta_i(x_<i))``.

    Fast direction: ``inverse`` (data -> noise, density evaluation), one MADE pass.
    Slow direction: ``forward`` (sampling), D sequential steps (`MADE.solve`).
    """

    conditioner_reads_data = True


class InverseAutoregressiveSpline(AutoregressiveSpline):
    """Spline IAF layer: ``x_i = spline(u_i; theta_i(u_<i))``.

    Fast direction: ``forward`` (noise -> data, sampling with its log-det), one MADE pass.
    Slow direction: ``inverse`` (density of external data), D sequential steps.
    """

    conditioner_reads_data = False


class AutoregressiveWaveNet(AutoregressiveLayer):
    """An autoregressive layer over the time axis of ``(..., C, T)`` sequences whose
    conditioner is a `WaveNet`: ``x_t = f(u_t; theta_t)``, theta_t read from the steps < t of
    the data (`MaskedAutoregressiveWaveNet`) or of the noise (`InverseAutoregressiveWaveNet`).

    Args:
        channels: C.
        transform: "affine" (Gaussian steps, as ClariNet: the closed-form KL applies) or
            "spline"; ``log_scale_bound``, ``bins`` and ``tail_bound`` as in `build_flow`.
        **wavenet: the `WaveNet`'s shape and conditioning (``num_layers``,
            ``residual_channels``, ``skip_channels``, ``kernel_size``, ``dilation_cycle``,
            ``global_features`` or ``local_features`` with ``hop_length``).
    """

    def __init__(
        self,
        channels: int = 1,
        transform: str = "affine",
        log_scale_bound: float | None = None,
        bins: int | None = None,
        tail_bound: float | None = None,
        **wavenet,
    ):
        elementwise = elementwise_transform(
            transform, log_scale_bound=log_scale_bound, bins=bins, tail_bound=tail_bound
        )
        super().__init__(
            elementwise, WaveNet(channels, out_multiplier=elementwise.num_params, **wavenet)
        )


class MaskedAutoregressiveWaveNet(AutoregressiveWaveNet):
    """MAF over time (a WaveNet teacher): ``x_t = f(u_t; theta(x_<t))``.

    Fast direction: ``inverse`` (data -> noise, the density of a whole sequence), one WaveNet
    pass. Slow direction: ``forward`` (sampling), T steps of the cached `WaveNet.solve`.
    """

    conditioner_reads_data = True


class InverseAutoregressiveWaveNet(AutoregressiveWaveNet):
    """IAF over time (a Parallel WaveNet student flow): ``x_t = f(u_t; theta(u_<t))``.

    Fast direction: ``forward`` (noise -> data: a whole sequence with its log-det), one
    WaveNet pass. Slow direction: ``inverse`` (density of external data), T cached steps.
    """

    conditioner_reads_data = False
