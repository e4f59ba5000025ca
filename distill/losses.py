"""Divergences between a student flow q and a frozen teacher flow p, for distillation.

Each loss is a function ``(student, teacher, num_samples, data, context) -> (N,)`` per-sample
terms (the objective is their mean, so callers can report robust statistics and clip outliers),
listed by name in `LOSSES`. ``data`` is a batch in the flows' space for the terms that read one
(`NEEDS_DATA`); ``context`` a batch of ``num_samples`` contexts for conditional flows (one
sample per context; None for unconditional flows, which draw ``num_samples``). Cost and
behaviour:

- `reverse_kl` (Parallel WaveNet, the default): ``log q(x) - log p(x)``, x ~ q from the
  student's cached noise. One parallel student pass + one parallel teacher (MAF) density
  pass. Mode-seeking: it can drop low-mass parts of the teacher (a moon's tip).
- `reverse_kl_per_step` (Parallel WaveNet's variance reduction): for autoregressive stacks
  that share one ordering (flows over time), ``sum_t KL(q(x_t | x_<t) || p(x_t | x_<t))``
  with each inner KL estimated from several draws of x_t given the same x_<t (``draws``);
  any elementwise transform. Same passes as `reverse_kl`; the extra draws are elementwise.
- `reverse_kl_closed_form` (ClariNet): when both flows are affine autoregressive with one
  shared ordering, the per-dimension conditionals are Gaussian and their KL is exact; only
  the outer expectation over x_<i is sampled. Same cost as `reverse_kl`, lower variance.
  `log_std_regularizer` is ClariNet's penalty on the log-scale mismatch of those conditionals.
- `forward_kl`: ``log p(x) - log q(x)``, x ~ p. Mode-covering. Needs the teacher's
  sequential sampling (log p from the same pass) and the student's sequential inverse:
  2·D passes per layer, fine for small D.
- `regression`: ``|student.forward(u) - x|^2`` with ``u = teacher.inverse(x)`` on data x: one
  parallel pass each, no sampling; a dense, "instructive" signal.
- `power` (Parallel WaveNet's power loss, sequences): the squared distance between the average
  power spectra of student samples and of data (paired by context when conditional); without
  it, students of audio "whisper".
- `log_power` (sequences): the same spectra compared on a log scale, floored relative to the
  data's peak: every harmonic counts, not only the loudest, so it carries the pitch.
- `shape_power` (conditional sequences): each sample's spectrum over its own total power
  against its data row's, plus the batch's level: the pitch without rewarding a student that
  plays every row at one loudness.
- `loudness` (sequences): the squared 1-D Wasserstein distance between the log power of the
  sample rows and of the data rows: the spread of loudness over notes, which reverse KL
  barely charges for.

One step, one draw: every loss takes an optional ``draw`` (`StudentDraw`), the step's samples
x ~ q with their log-density and, for the per-step losses, each layer's parameters; the
objective makes one and passes it to every term, so the student runs once a step whatever the
terms (without one, a loss draws its own).

Gradients: the teacher's parameters are frozen by the caller, but its computation stays on
the autograd tape: d log p(x) / dx is what pulls the student's samples.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence

import torch
from torch import Tensor, nn

from distill.flows import Affine, AutoregressiveLayer, Bijector, Chain, Flow, SequenceFlow

_HALF_LOG_TWO_PI = 0.5 * math.log(2 * math.pi)


def _sample_shape(num_samples: int, context: Tensor | None) -> tuple[int, ...]:
    """One sample per context row, else ``num_samples``."""
    return () if context is not None else (num_samples,)


def reverse_kl(
    student: Flow,
    teacher: Flow,
    num_samples: int,
    data: Tensor | None = None,
    context: Tensor | None = None,
    draw: StudentDraw | None = None,
) -> Tensor:
    """Monte Carlo KL(q || p) terms ``log q(x) - log p(x)``, ``x ~ q``: ``(num_samples,)``."""
    draw = draw or StudentDraw(student, teacher, num_samples, context)
    return draw.log_q - teacher.log_prob(draw.x, context)


def forward_kl(
    student: Flow,
    teacher: Flow,
    num_samples: int,
    data: Tensor | None = None,
    context: Tensor | None = None,
    draw: StudentDraw | None = None,
    pool: TeacherSamplePool | TeacherSampleBank | None = None,
) -> Tensor:
    """Monte Carlo KL(p || q) terms ``log p(x) - log q(x)``, ``x ~ p`` (no gradient to the
    teacher's samples; the student learns by maximum likelihood on them; ``draw`` is unused:
    the samples are the teacher's). log p(x) comes from the sampling pass itself (the noise
    and the forward log-det), not from a second, density pass of the teacher. With a
    ``pool`` (or a bank) the samples (and their contexts) are taken from it, each serving
    several steps."""
    if pool is not None:
        x, log_p, context = pool.take(teacher, num_samples, context)
    else:
        with torch.no_grad():
            x, log_p = teacher.sample_and_log_prob(_sample_shape(num_samples, context), context)
    return log_p - student.log_prob(x, context)


class TeacherSamplePool:
    """The teacher's samples of `forward_kl` reused across steps, for when the teacher's
    sequential sampling is most of a step's cost.

    The pool holds ``reuse * n`` samples with their log p (and contexts), ``n`` the step's
    ``num_samples``: filled at the first step, then each step replaces its oldest
    ``ceil(n / reuse)`` with fresh draws and returns ``n`` rows of the pool drawn without
    replacement, so a sample serves ``reuse`` steps on average and the teacher samples
    ``reuse`` times fewer points per step. ``reuse=1`` is a fresh sample every step. The pool
    lives in memory only: a resumed run fills a new one.
    """

    def __init__(self, reuse: int):
        if not isinstance(reuse, int) or reuse < 1:
            raise ValueError(f"loss.teacher_reuse must be an integer >= 1, got {reuse!r}")
        self.reuse = reuse
        self._rows: tuple[Tensor, Tensor, Tensor | None] | None = None
        self._oldest = 0

    def take(
        self, teacher: Flow, num_samples: int, context: Tensor | None = None
    ) -> tuple[Tensor, Tensor, Tensor | None]:
        """``(x, log p(x), contexts)`` of ``num_samples`` teacher samples, ``context`` the
        step's ``num_samples`` contexts (fresh draws are conditioned on its first rows)."""
        size = self.reuse * num_samples
        if self._rows is None or len(self._rows[0]) != size:
            self._rows = self._draw(teacher, size, context)
            self._oldest = 0
        else:
            fresh = self._draw(teacher, -(-num_samples // self.reuse), context)
            rows = torch.arange(len(fresh[0]), device=fresh[0].device)
            rows = (rows + self._oldest) % size
            for stored, new in zip(self._rows, fresh, strict=True):
                if stored is not None:
                    stored[rows] = new
            self._oldest = (self._oldest + len(rows)) % size
        chosen = torch.randperm(size, device=self._rows[0].device)[:num_samples]
        return tuple(None if t is None else t[chosen] for t in self._rows)

    @staticmethod
    def _draw(
        teacher: Flow, count: int, context: Tensor | None
    ) -> tuple[Tensor, Tensor, Tensor | None]:
        """``count`` fresh samples with their log p and contexts (the step's rows in turn)."""
        if context is not None:
            context = context[torch.arange(count, device=context.device) % len(context)]
        with torch.no_grad():
            x, log_p = teacher.sample_and_log_prob(_sample_shape(count, context), context)
        return x, log_p, context


class TeacherSampleBank:
    """A fixed bank of ``size`` teacher samples for `forward_kl`, drawn once, at the first step,
    in chunks of at most ``chunk``; every step then takes ``num_samples`` rows of it at random
    (without replacement within a step). The teacher never samples again, so a step costs the
    student's part only: for a MAF teacher at D = 64, whose sampling is 64 sequential steps per
    layer, that is most of a fresh step. The bank is finite (a student can overfit it: make it
    large against the steps x samples it serves) and lives in memory only. Unconditional flows
    only: a conditional student would see the first batch's contexts for ever (use
    `TeacherSamplePool`).
    """

    def __init__(self, size: int, chunk: int = 4096):
        if not isinstance(size, int) or size < 1:
            raise ValueError(f"loss.teacher_bank must be an integer >= 1, got {size!r}")
        self.size, self.chunk = size, chunk
        self._rows: tuple[Tensor, Tensor] | None = None

    def take(
        self, teacher: Flow, num_samples: int, context: Tensor | None = None
    ) -> tuple[Tensor, Tensor, None]:
        """``(x, log p(x), None)`` for ``num_samples`` rows of the bank."""
        if context is not None:
            raise ValueError(
                "loss.teacher_bank holds samples drawn once without contexts, but this flow is "
                "conditional: use loss.teacher_reuse instead"
            )
        if self._rows is None:
            with torch.no_grad():
                chunks = [
                    teacher.sample_and_log_prob((min(self.chunk, self.size - start),))
                    for start in range(0, self.size, self.chunk)
                ]
            self._rows = (torch.cat([x for x, _ in chunks]), torch.cat([lp for _, lp in chunks]))
        chosen = torch.randperm(self.size, device=self._rows[0].device)[:num_samples]
        return self._rows[0][chosen], self._rows[1][chosen], None


def regression(
    student: Flow,
    teacher: Flow,
    num_samples: int,
    data: Tensor | None = None,
    context: Tensor | None = None,
    draw: StudentDraw | None = None,
) -> Tensor:
    """Squared error ``|student.forward(u) - x|^2`` per point of the data batch ``data``,
    ``u = teacher.inverse(x)``: the student learns the teacher's noise -> data map on
    the data's latents (``num_samples`` and ``draw`` are unused: the batch is the sample)."""
    if data is None:
        raise ValueError("the regression loss needs a data batch")
    with torch.no_grad():
        u, _ = teacher.bijector.inverse(data, context)
    x, _ = student.bijector(u, context)
    return _per_sample((x - data).square(), student.event_dims)


def power(
    student: Flow,
    teacher: Flow,
    num_samples: int,
    data: Tensor | None = None,
    context: Tensor | None = None,
    draw: StudentDraw | None = None,
) -> Tensor:
    """Parallel WaveNet's power loss on sequences ``(..., C, T)``: the squared distance
    between the average power spectra (`distill.spectral.power_loss`) of student samples and
    of the data batch, paired row by row when conditional (``data[i]`` has ``context[i]``),
    batch averages otherwise: ``(num_samples,)``."""
    from distill.spectral import power_loss

    x = _samples_for_spectra("power", student, teacher, num_samples, data, context, draw)
    return power_loss(x, data, paired=context is not None).expand(x.shape[0])


def log_power(
    student: Flow,
    teacher: Flow,
    num_samples: int,
    data: Tensor | None = None,
    context: Tensor | None = None,
    draw: StudentDraw | None = None,
) -> Tensor:
    """The power loss on a log scale (`distill.spectral.log_power_loss`): the mean squared
    difference of the log average power spectra of student samples and of the data batch,
    floored 40 dB below the data's peak, paired as `power`: ``(num_samples,)``. Every bin above
    the floor counts alike, so a note's weaker harmonics and a rumble below its fundamental
    (what decides its pitch) weigh as much as its loudest peak."""
    from distill.spectral import log_power_loss

    x = _samples_for_spectra("log_power", student, teacher, num_samples, data, context, draw)
    return log_power_loss(x, data, paired=context is not None).expand(x.shape[0])


def shape_power(
    student: Flow,
    teacher: Flow,
    num_samples: int,
    data: Tensor | None = None,
    context: Tensor | None = None,
    draw: StudentDraw | None = None,
) -> Tensor:
    """The paired power loss without each row's loudness (`distill.spectral.shape_power_loss`):
    each student sample's spectral shape against its data row's, plus the batch's level, so a
    row's gain, random given its context (the notes' amplitude and decay), costs nothing:
    ``(num_samples,)``. Conditional flows only: an unconditional sample has no data row of its
    own to be compared with."""
    from distill.spectral import shape_power_loss

    if context is None:
        raise ValueError(
            "the shape_power loss compares each sample with the data row of its context, but "
            "this flow is unconditional: use the power loss"
        )
    x = _samples_for_spectra("shape_power", student, teacher, num_samples, data, context, draw)
    return shape_power_loss(x, data).expand(x.shape[0])


def loudness(
    student: Flow,
    teacher: Flow,
    num_samples: int,
    data: Tensor | None = None,
    context: Tensor | None = None,
    draw: StudentDraw | None = None,
) -> Tensor:
    """The distance between the loudness of the student's samples and of the data rows
    (`distill.spectral.loudness_loss`: its level and its spread over the batch), which the
    per-step reverse KL barely charges for: ``(num_samples,)``."""
    from distill.spectral import loudness_loss

    x = _samples_for_spectra("loudness", student, teacher, num_samples, data, context, draw)
    return loudness_loss(x, data).expand(x.shape[0])


def _samples_for_spectra(
    name: str,
    student: Flow,
    teacher: Flow,
    num_samples: int,
    data: Tensor | None,
    context: Tensor | None,
    draw: StudentDraw | None,
) -> Tensor:
    """The student samples a spectral term compares with ``data`` (the step's shared draw if
    given); a one-line error without a data batch or for a flow over vectors."""
    if not isinstance(student, SequenceFlow):
        raise ValueError(
            f"the {name} loss compares power spectra of sequences, but this student is a flow "
            "over vectors, whose samples have none: remove the term (it is for WaveNet flows "
            "over time)"
        )
    if data is None:
        raise ValueError(f"the {name} loss needs a data batch")
    return (draw or StudentDraw(student, teacher, num_samples, context)).x


def _per_sample(elementwise: Tensor, event_dims: int) -> Tensor:
    """Sum over the trailing ``event_dims`` dims: one value per sample."""
    return elementwise.sum(tuple(range(-event_dims, 0)))


def _autoregressive_layers(
    flow: Flow, role: str, parallel_forward: bool
) -> list[AutoregressiveLayer]:
    """The flow's layers, checked to be autoregressive (IAF layers for the student, MAF layers
    for the teacher) with nothing in between; else a ValueError naming why."""
    layers: list[Bijector] = (
        list(flow.bijector.bijectors) if isinstance(flow.bijector, Chain) else [flow.bijector]
    )
    kind = (
        "InverseAutoregressiveAffine (IAF)"
        if parallel_forward
        else "MaskedAutoregressiveAffine (MAF)"
    )
    for layer in layers:
        if (
            not isinstance(layer, AutoregressiveLayer)
            or layer.conditioner_reads_data == parallel_forward
        ):
            raise ValueError(
                f"the per-step losses need the {role} to be a stack of {kind} layers with no "
                f"permutations or other bijectors in between, but it contains "
                f"{type(layer).__name__}. Use flows with permutation: none (flow@teacher.flow="
                "maf_fixed_order flow@student.flow=iaf_fixed_order), or loss=reverse_kl"
            )
    return layers


def _check_affine(layers: list[AutoregressiveLayer], role: str) -> None:
    """The closed form needs Gaussian conditionals: affine layers only."""
    for layer in layers:
        if not isinstance(layer.transform, Affine):
            raise ValueError(
                f"reverse_kl_closed_form needs affine layers, whose conditionals are Gaussian, "
                f"but the {role} has {type(layer).__name__} layers with a "
                f"{type(layer.transform).__name__} transform, whose are not. Use affine "
                "flows (transform: affine) or loss=reverse_kl"
            )


def _shared_order(*stacks: list[AutoregressiveLayer]) -> None:
    """MADE layers must share one ordering; WaveNet layers all read time in order."""
    orders = [getattr(layer.conditioner, "order", None) for stack in stacks for layer in stack]
    if any(order is None for order in orders):
        return
    if any(not torch.equal(order, orders[0]) for order in orders):
        raise ValueError(
            "the per-step losses need teacher and student layers that share one "
            "autoregressive ordering (their per-dimension conditionals are then Gaussian); "
            "these flows use different orders. Build both with the same order and "
            "permutation: none, or use loss=reverse_kl"
        )


class StudentDraw:
    """The student's samples x ~ q for one training step, drawn once and shared by every term
    that reads them: an objective of per-step KL plus the power loss runs the student once a
    step, not once per term.

    Lazy: nothing runs until a term reads `x`, `log_q` or `step_parameters`. With
    ``per_layer`` (set when a per-step term will read this draw) the student runs layer by
    layer, keeping each layer's transform parameters, and `x` / `log_q` come from that same
    pass; otherwise from one `Flow.sample_and_log_prob`.

    Args:
        student, teacher: the flows (model space).
        num_samples: samples to draw, or, with a ``context``, ignored: one sample per row.
        context: the samples' contexts ``(N, ...)``, or None.
        per_layer: keep the student's per-layer parameters (the student must then be a stack
            of IAF layers).
    """

    def __init__(
        self,
        student: Flow,
        teacher: Flow,
        num_samples: int,
        context: Tensor | None = None,
        per_layer: bool = False,
    ):
        self.student, self.teacher, self.context = student, teacher, context
        self.sample_shape = _sample_shape(num_samples, context)
        self.per_layer = per_layer
        self._sample: tuple[Tensor, Tensor] | None = None
        self._student_steps: tuple[list[AutoregressiveLayer], list[Tensor]] | None = None
        self._teacher_steps: tuple[list[AutoregressiveLayer], list[Tensor]] | None = None

    @property
    def x(self) -> Tensor:
        """The samples, ``sample_shape + context batch + event``; differentiable."""
        return self._draw()[0]

    @property
    def log_q(self) -> Tensor:
        """log q(x) of the samples from the cached noise (no inverse pass)."""
        return self._draw()[1]

    def _draw(self) -> tuple[Tensor, Tensor]:
        if self._sample is None:
            if self.per_layer:
                self._run_layers()
            else:
                self._sample = self.student.sample_and_log_prob(self.sample_shape, self.context)
        assert self._sample is not None
        return self._sample

    def _run_layers(self) -> None:
        """The student's forward pass layer by layer, keeping each layer's parameters."""
        layers = _autoregressive_layers(self.student, "student", parallel_forward=True)
        noise = self.student.noise(self.sample_shape, self.context)
        h, log_det, params = noise, 0.0, []
        for layer in layers:
            params.append(layer.params(h, self.context))
            h, layer_log_det = layer.transform.forward(h, params[-1])
            log_det = log_det + layer_log_det
        event_dims = self.student.event_dims
        self._sample = (h, self.student.base.log_prob(noise) - _per_sample(log_det, event_dims))
        self._student_steps = (layers, params)

    def step_parameters(
        self,
    ) -> tuple[list[AutoregressiveLayer], list[Tensor], list[AutoregressiveLayer], list[Tensor]]:
        """For each layer, the parameters of its elementwise transform at x:
        ``(student_layers, student_params, teacher_layers, teacher_params)``, the teacher's
        layers (and their parameters) from its last to its first (its inverse's order, data ->
        noise).

        At step i, every layer's parameters depend only on the steps < i of x (of the noise u
        for the student, which is the same information), so they are those of the
        conditionals ``q(x_i | x_<i)`` and ``p(x_i | x_<i)``: the per-step losses reuse them
        for other values of x_i."""
        if not self.per_layer:
            raise ValueError("this draw was made without per_layer=True: it kept no parameters")
        if self._student_steps is None:
            self._run_layers()
        assert self._student_steps is not None and self._sample is not None
        student_layers, student_params = self._student_steps
        if self._teacher_steps is None:
            layers = _autoregressive_layers(self.teacher, "teacher", parallel_forward=False)
            _shared_order(student_layers, layers)
            h, params = self._sample[0], []
            for layer in layers[::-1]:
                params.append(layer.params(h, self.context))
                h, _ = layer.transform.inverse(h, params[-1])
            self._teacher_steps = (layers[::-1], params)
        return student_layers, student_params, *self._teacher_steps


def gaussian_conditionals(
    student: Flow,
    teacher: Flow,
    num_samples: int,
    context: Tensor | None = None,
    draw: StudentDraw | None = None,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Sample x ~ q and return the exact Gaussian conditionals of both flows at x:
    ``(mean_q, log_std_q, mean_p, log_std_p)``, each of x's shape, where
    q(x_i | x_<i) = N(mean_q_i, std_q_i^2) and likewise for p (i a dimension, or a time step
    and channel).

    Student (IAF layers, noise -> data): every layer maps ``h -> h * exp(a) + m`` with (a, m)
    read from h's earlier steps, so ``x_i = exp(S_i) * u_i + M_i`` with S, M functions of
    u_<i, i.e. of x_<i. Teacher (MAF layers, data -> noise): ``h -> (h - m) * exp(-a)``, so
    ``u_i = A_i * x_i + B_i`` and p(x_i | x_<i) = N(-B_i / A_i, A_i^-2).
    """
    draw = draw or StudentDraw(student, teacher, num_samples, context, per_layer=True)
    student_layers, student_params, teacher_layers, teacher_params = draw.step_parameters()
    _check_affine(student_layers, "student")
    _check_affine(teacher_layers, "teacher")
    mean_q: Tensor | float = 0.0
    log_std_q: Tensor | float = 0.0
    for layer, params in zip(student_layers, student_params, strict=True):
        shift, log_scale = layer.transform.shift_and_log_scale(params)
        mean_q = mean_q * log_scale.exp() + shift
        log_std_q = log_std_q + log_scale
    log_a: Tensor | float = 0.0
    b: Tensor | float = 0.0
    for layer, params in zip(teacher_layers, teacher_params, strict=True):  # last layer first
        shift, log_scale = layer.transform.shift_and_log_scale(params)
        b = (b - shift) * torch.exp(-log_scale)
        log_a = log_a - log_scale
    return mean_q, log_std_q, -b * torch.exp(-log_a), -log_a


def reverse_kl_closed_form(
    student: Flow,
    teacher: Flow,
    num_samples: int,
    data: Tensor | None = None,
    context: Tensor | None = None,
    draw: StudentDraw | None = None,
) -> Tensor:
    """ClariNet's KL(q || p): ``sum_i KL(q(x_i | x_<i) || p(x_i | x_<i))`` in closed form at
    x ~ q (`gaussian_conditionals`): ``(num_samples,)``."""
    mean_q, log_std_q, mean_p, log_std_p = gaussian_conditionals(
        student, teacher, num_samples, context, draw
    )
    log_ratio = log_std_q - log_std_p
    kl = (
        -log_ratio
        + 0.5 * (torch.exp(2 * log_ratio) + ((mean_q - mean_p) * torch.exp(-log_std_p)).square())
        - 0.5
    )
    return _per_sample(kl, student.event_dims)


def log_std_regularizer(
    student: Flow,
    teacher: Flow,
    num_samples: int,
    data: Tensor | None = None,
    context: Tensor | None = None,
    draw: StudentDraw | None = None,
) -> Tensor:
    """ClariNet's regularizer ``sum_i (log std_q_i - log std_p_i)^2`` at x ~ q, which keeps the
    conditionals' scales matched early in training: ``(num_samples,)``."""
    _, log_std_q, _, log_std_p = gaussian_conditionals(student, teacher, num_samples, context, draw)
    return _per_sample((log_std_q - log_std_p).square(), student.event_dims)


def reverse_kl_per_step(
    student: Flow,
    teacher: Flow,
    num_samples: int,
    data: Tensor | None = None,
    context: Tensor | None = None,
    draw: StudentDraw | None = None,
    draws: int = 4,
) -> Tensor:
    """``sum_i KL(q(x_i | x_<i) || p(x_i | x_<i))`` at x ~ q, each inner KL estimated from
    ``draws`` values of x_i drawn from q(x_i | x_<i) (Parallel WaveNet's "several samples of
    x_t per step"): ``(num_samples,)``.

    Unbiased for the KL, as `reverse_kl`, with lower variance: the draws share x_<i and its
    network passes (`StudentDraw.step_parameters`); each extra draw costs only the elementwise
    transforms of every layer. For affine stacks `reverse_kl_closed_form` is the limit of many
    draws."""
    if draws < 1:
        raise ValueError(f"loss.draws_per_step must be >= 1, got {draws}")
    draw = draw or StudentDraw(student, teacher, num_samples, context, per_layer=True)
    student_layers, student_params, teacher_layers, teacher_params = draw.step_parameters()
    noise = torch.randn(
        (draws, *student_params[0].shape[:-1]),
        dtype=student_params[0].dtype,
        device=student_params[0].device,
    )
    h = noise
    log_ratio = -0.5 * noise.square()  # log q(x_i | x_<i) - log p(x_i | x_<i), accumulated
    for layer, params in zip(student_layers, student_params, strict=True):
        h, log_det = layer.transform.forward(h, params.expand(draws, *params.shape))
        log_ratio = log_ratio - log_det
    for layer, params in zip(teacher_layers, teacher_params, strict=True):
        h, log_det = layer.transform.inverse(h, params.expand(draws, *params.shape))
        log_ratio = log_ratio - log_det
    log_ratio = log_ratio + 0.5 * h.square()  # the two base densities' constants cancel
    return _per_sample(log_ratio.mean(0), student.event_dims)


Loss = Callable[..., Tensor]

#: The divergences by name (the ``terms`` of `DistillationObjective`), one signature:
#: ``(student, teacher, num_samples, data, context) -> per-sample terms``.
LOSSES: dict[str, Loss] = {
    "reverse_kl": reverse_kl,
    "reverse_kl_per_step": reverse_kl_per_step,
    "reverse_kl_closed_form": reverse_kl_closed_form,
    "log_std_regularizer": log_std_regularizer,
    "forward_kl": forward_kl,
    "regression": regression,
    "power": power,
    "log_power": log_power,
    "shape_power": shape_power,
    "loudness": loudness,
}

#: The losses that compare spectra rather than densities: not divided per step.
SPECTRAL = frozenset({"power", "log_power", "shape_power", "loudness"})


def values_per_sample(student: Flow, context: Tensor | None) -> int:
    """The values of one sample: ``C * T`` for a sequence flow (T from a local context if
    there is one, else the flow's length), 1 for a flow over vectors. The objective divides the
    density terms by it, so that for sequences they are per step: their weights and the
    learning rate do not depend on the crop length."""
    if not isinstance(student, SequenceFlow):
        return 1
    length = student.length
    if context is not None and student.hop_length is not None:
        length = context.shape[-1] * student.hop_length
    return student.channels * length


#: The losses that read the student's per-layer parameters (`StudentDraw.step_parameters`).
PER_LAYER = frozenset({"reverse_kl_per_step", "reverse_kl_closed_form", "log_std_regularizer"})

#: The losses that read a data batch.
NEEDS_DATA = frozenset({"regression", "power", "log_power", "shape_power", "loudness"})


Knots = Sequence[Sequence[float]]


def schedule_factor(knots: Knots, progress: float | None) -> float:
    """The factor of a term's weight at ``progress`` (the fraction of training done, in
    [0, 1]), from its schedule ``knots`` ``[[progress, factor], ...]`` (progress increasing):
    linear between knots, held before the first and after the last; ``progress=None`` is the
    end of training (the last factor)."""
    if progress is None or progress >= knots[-1][0]:
        return float(knots[-1][1])
    if progress <= knots[0][0]:
        return float(knots[0][1])
    for (left_at, left), (right_at, right) in zip(knots, knots[1:], strict=False):
        if progress <= right_at:
            fraction = (progress - left_at) / (right_at - left_at)
            return float(left + fraction * (right - left))
    raise AssertionError("unreachable: progress is inside the knots")


def _check_schedule(terms: Mapping[str, float], schedule: Mapping[str, Knots]) -> None:
    unknown = sorted(set(schedule) - set(terms))
    if unknown:
        raise ValueError(
            f"loss.schedule names {unknown}, which are not in loss.terms {sorted(terms)}: a "
            "schedule scales the weight of a term, so add the term first"
        )
    for name, knots in schedule.items():
        at = [knot[0] for knot in knots] if knots else []
        valid = (
            bool(knots)
            and all(len(knot) == 2 and 0 <= knot[0] <= 1 and knot[1] >= 0 for knot in knots)
            and all(a < b for a, b in zip(at, at[1:], strict=False))
        )
        if not valid:
            raise ValueError(
                f"loss.schedule.{name} must be a list of [progress, factor] pairs, progress "
                f"(the fraction of training done) increasing in [0, 1] and factors >= 0, e.g. "
                f"[[0, 1.0], [0.5, 0.1]]; got {knots}"
            )


class DistillationObjective(nn.Module):
    """A weighted sum of the divergences of `LOSSES`: ``terms = {"reverse_kl": 1.0, ...}``,
    each weight optionally scaled over training by a ``schedule``.

    Args:
        terms: loss name -> weight (names from `LOSSES`).
        num_samples: samples per step for the sampled losses.
        clip: if set, each sample's density terms (per step for sequences) above it are
            clamped (their gradient is dropped), so a few samples deep in the teacher's tails
            cannot dominate a step. The spectral terms (`SPECTRAL`), one value per batch, are
            never clamped: it would drop their whole gradient.
        schedule: loss name -> ``[[progress, factor], ...]``, progress the fraction of the
            training steps done: that term's weight is its ``terms`` weight times the factor
            interpolated linearly between the knots (`schedule_factor`), so one schedule fits
            any number of steps. A term without a schedule keeps its weight; a term whose
            weight is 0 at a step is not computed at that step. Validation
            (``progress=None``) uses the final weights, so checkpoints select on one
            objective throughout.
        draws_per_step: the draws of each step's value of `reverse_kl_per_step` (>= 1; None:
            4); refused without that term.
        teacher_reuse: how many steps a teacher sample of `forward_kl` serves on average
            (`TeacherSamplePool`; 1, the default: fresh samples every step); refused without
            that term. In training mode only: in eval mode (validation) the samples are fresh.
        teacher_bank: if set, `forward_kl` takes its samples from a fixed bank of this many
            teacher samples drawn once (`TeacherSampleBank`) instead; refused without that
            term, with ``teacher_reuse`` or below ``num_samples``. Training mode only, as
            ``teacher_reuse``: validation's fresh samples show when the student overfits it.

    Conditional flows: the contexts of the batch are the samples' contexts, ``num_samples``
    of them taken in turn from the batch (``context[i % B]``), data rows paired with them.
    Sequence flows: every density term is per step (divided by the ``C * T`` values of a
    sequence, `values_per_sample`), the spectral terms (`SPECTRAL`) are not; they are refused
    for flows over vectors, whose samples have no spectrum.
    """

    def __init__(
        self,
        terms: Mapping[str, float],
        num_samples: int = 512,
        clip: float | None = None,
        schedule: Mapping[str, Knots] | None = None,
        draws_per_step: int | None = None,
        teacher_reuse: int = 1,
        teacher_bank: int | None = None,
    ):
        super().__init__()
        unknown = sorted(set(terms) - set(LOSSES))
        if unknown or not terms:
            raise ValueError(
                f"loss.terms must name at least one of {', '.join(LOSSES)} (and nothing else), "
                f"got {dict(terms)}"
            )
        if any(weight < 0 for weight in terms.values()):
            raise ValueError(f"loss.terms weights must be >= 0, got {dict(terms)}")
        if num_samples < 1:
            raise ValueError(f"loss.num_samples must be >= 1, got {num_samples}")
        schedule = {
            name: [list(knot) for knot in knots] for name, knots in (schedule or {}).items()
        }
        _check_schedule(terms, schedule)
        if draws_per_step is not None and "reverse_kl_per_step" not in terms:
            raise ValueError(
                f"loss.draws_per_step={draws_per_step} is only read by the reverse_kl_per_step "
                "term: add it to loss.terms or remove draws_per_step"
            )
        if teacher_reuse != 1 and "forward_kl" not in terms:
            raise ValueError(
                f"loss.teacher_reuse={teacher_reuse} is only read by the forward_kl term: add it "
                "to loss.terms or remove teacher_reuse"
            )
        self.teacher_pool: TeacherSamplePool | TeacherSampleBank | None = (
            TeacherSamplePool(teacher_reuse) if teacher_reuse != 1 else None
        )
        if teacher_bank is not None:
            if "forward_kl" not in terms or teacher_reuse != 1:
                raise ValueError(
                    f"loss.teacher_bank={teacher_bank} is read by the forward_kl term alone and "
                    "replaces teacher_reuse: add forward_kl to loss.terms and leave "
                    "teacher_reuse at 1, or remove teacher_bank"
                )
            self.teacher_pool = TeacherSampleBank(teacher_bank)
            if teacher_bank < num_samples:
                raise ValueError(
                    f"loss.teacher_bank={teacher_bank} is smaller than loss.num_samples="
                    f"{num_samples}: the bank must hold at least one step's samples"
                )
        if draws_per_step is not None and draws_per_step < 1:
            raise ValueError(f"loss.draws_per_step must be >= 1, got {draws_per_step}")
        draws = 4 if draws_per_step is None else draws_per_step
        self.term_options = {"reverse_kl_per_step": {"draws": draws}}
        self.terms = dict(terms)
        self.num_samples = num_samples
        self.clip = clip
        self.schedule = schedule

    @property
    def needs_data(self) -> bool:
        """Whether `forward` needs a data batch (a term such as `regression` reads one)."""
        return not NEEDS_DATA.isdisjoint(self.terms)

    def _paired(
        self, data: Tensor | None, context: Tensor | None
    ) -> tuple[Tensor | None, Tensor | None]:
        """The samples' contexts, ``num_samples`` rows taken in turn from the batch's, and the
        data rows paired with them (unchanged without a context)."""
        if context is None:
            return data, None
        rows = torch.arange(self.num_samples, device=context.device) % len(context)
        return (data[rows] if data is not None else None), context[rows]

    def evaluate(
        self, name: str, student: Flow, teacher: Flow, context: Tensor | None = None
    ) -> Tensor:
        """The loss ``name`` of `LOSSES` on ``num_samples`` samples (with the batch's
        ``context``): per-sample terms, per step for sequences (`values_per_sample`)."""
        _, context = self._paired(None, context)
        terms = LOSSES[name](student, teacher, self.num_samples, None, context)
        return terms / values_per_sample(student, context)

    def _options(self, name: str) -> dict:
        """The term's keyword options; the teacher's sample pool in training mode only (like
        dropout: validation, in eval mode, draws fresh samples and leaves the pool alone)."""
        if name == "forward_kl" and self.teacher_pool is not None and self.training:
            return {"pool": self.teacher_pool}
        return self.term_options.get(name, {})

    def weights(self, progress: float | None = None) -> dict[str, float]:
        """Each term's weight at ``progress`` in [0, 1] (None: the final weights)."""
        return {
            name: weight
            * (schedule_factor(self.schedule[name], progress) if name in self.schedule else 1.0)
            for name, weight in self.terms.items()
        }

    def forward(
        self,
        student: Flow,
        teacher: Flow,
        data: Tensor | None = None,
        progress: float | None = None,
        context: Tensor | None = None,
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """Returns the scalar objective at ``progress``, the fraction of training done (None:
        with the final weights), and the mean of each term computed (for logging). ``data``:
        a batch in the flows' space, for the terms that read one; ``context``: the batch's
        contexts ``(B, ...)`` for conditional flows. The terms share one draw of the student's
        samples (`StudentDraw`)."""
        data, context = self._paired(data, context)
        values = values_per_sample(student, context)
        weights = {name: weight for name, weight in self.weights(progress).items() if weight}
        draw = StudentDraw(
            student, teacher, self.num_samples, context, per_layer=not PER_LAYER.isdisjoint(weights)
        )
        total, parts = 0.0, {}
        for name, weight in weights.items():
            per_sample = LOSSES[name](
                student,
                teacher,
                self.num_samples,
                data,
                context,
                draw=draw,
                **self._options(name),
            )
            spectral = name in SPECTRAL
            if not spectral:
                per_sample = per_sample / values
            parts[name] = per_sample.detach().mean()
            clipped = self.clip is not None and not spectral
            value = per_sample.clamp(max=self.clip) if clipped else per_sample
            total = total + weight * value.mean()
        return total, parts
