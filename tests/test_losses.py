"""Distillation losses: textbook optima on a correlated Gaussian, closed form vs Monte Carlo,
and the gradient plumbing through the frozen teacher."""

import math

import pytest
import torch

from distill.flows import (
    ActNorm,
    Flow,
    MaskedAutoregressiveAffine,
    build_iaf,
    build_maf,
    build_wavenet_iaf,
    build_wavenet_maf,
)
from distill.losses import (
    LOSSES,
    DistillationObjective,
    StudentDraw,
    TeacherSampleBank,
    TeacherSamplePool,
    forward_kl,
    gaussian_conditionals,
    log_std_regularizer,
    reverse_kl,
    reverse_kl_closed_form,
    reverse_kl_per_step,
    schedule_factor,
)
from tests.flows.helpers import perturb

RHO = 0.9


def gaussian_teacher(rho: float = RHO) -> Flow:
    """A one-layer MAF that is exactly N(0, [[1, rho], [rho, 1]]): x1 = u1 and
    x2 = rho * x1 + sqrt(1 - rho^2) * u2, with rho * x1 = rho * (relu(x1) - relu(-x1))."""
    layer = MaskedAutoregressiveAffine(2, hidden_features=(2,)).double()
    bound = layer.transform.log_scale_bound
    made = layer.conditioner
    with torch.no_grad():
        first = made.hidden[0]
        first.weight.copy_(torch.tensor([[1.0, 0.0], [-1.0, 0.0]]))
        first.bias.zero_()
        out = made.output_layer  # rows: shift_1, shift_2, raw_log_scale_1, raw_log_scale_2
        out.weight.zero_()
        out.weight[1] = torch.tensor([rho, -rho])
        out.bias.zero_()
        out.bias[3] = bound * math.atanh(0.5 * math.log(1 - rho**2) / bound)
    teacher = Flow(layer).double()
    teacher.requires_grad_(False)
    return teacher.eval()


def test_gaussian_teacher_is_the_intended_gaussian():
    x = gaussian_teacher().sample((200_000,))
    covariance = torch.cov(x.T)
    torch.testing.assert_close(
        covariance, torch.tensor([[1.0, RHO], [RHO, 1.0]], dtype=torch.float64), atol=0.02, rtol=0
    )


def fit(student: Flow, loss_fn, steps: int = 600, lr: float = 2e-2) -> None:
    optimizer = torch.optim.Adam(student.parameters(), lr=lr)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)
    for _ in range(steps):
        loss = loss_fn().mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        scheduler.step()


def mc_kl(student: Flow, teacher: Flow, n: int = 50_000) -> float:
    with torch.no_grad():
        return reverse_kl(student, teacher, n).mean().item()


@pytest.mark.parametrize(
    "loss", ["reverse_kl", "reverse_kl_closed_form", "forward_kl", "regression"]
)
def test_full_affine_student_reaches_zero_kl_with_every_loss(loss):
    torch.manual_seed(0)
    teacher = gaussian_teacher()
    student = build_iaf(2, num_layers=1, hidden_features=(16,), permutation="none").double()
    data = teacher.sample((4096,))
    objective = DistillationObjective({loss: 1.0}, num_samples=256)

    def step():
        batch = data[torch.randint(len(data), (256,))]
        return objective(student, teacher, batch)[0]

    fit(student, step)
    # Measured: every loss ends below 2e-3 nats (reverse KL of a fresh student: ~0.8 nats).
    assert mc_kl(student, teacher) < 0.01


def mean_field_student(initial_std: float) -> Flow:
    layer = ActNorm(2).double()
    with torch.no_grad():
        layer.log_scale.fill_(math.log(initial_std))
        layer.initialized.fill_(True)  # start from `initial_std`, not from a data batch
    return Flow(layer).double()


def test_mean_field_reverse_kl_is_mode_seeking():
    teacher = gaussian_teacher()
    student = mean_field_student(2.0)
    fit(student, lambda: reverse_kl(student, teacher, 512), steps=800, lr=3e-2)
    std = student.bijector.log_scale.exp()
    torch.testing.assert_close(
        std, torch.full((2,), math.sqrt(1 - RHO**2), dtype=torch.float64), atol=0.02, rtol=0
    )


def test_mean_field_forward_kl_is_mode_covering():
    teacher = gaussian_teacher()
    student = mean_field_student(0.2)
    fit(student, lambda: forward_kl(student, teacher, 512), steps=800, lr=3e-2)
    std = student.bijector.log_scale.exp()
    torch.testing.assert_close(std, torch.ones(2, dtype=torch.float64), atol=0.05, rtol=0)


def fixed_order_pair(features: int = 3, seed: int = 0) -> tuple[Flow, Flow]:
    teacher = perturb(build_maf(features, 2, (16,), permutation="none").double(), 0.3, seed)
    teacher.requires_grad_(False)
    student = perturb(build_iaf(features, 2, (16,), permutation="none").double(), 0.3, seed + 1)
    return student, teacher


def test_closed_form_kl_matches_monte_carlo_with_lower_variance():
    student, teacher = fixed_order_pair()
    torch.manual_seed(1)
    with torch.no_grad():
        closed = reverse_kl_closed_form(student, teacher, 100_000)
        sampled = reverse_kl(student, teacher, 100_000)
    standard_error = math.sqrt(closed.var() / len(closed) + sampled.var() / len(sampled))
    assert abs(closed.mean() - sampled.mean()) < 4 * standard_error
    assert closed.mean() > 0.05  # the pair is far apart, so the check is not vacuous
    assert closed.var() < 0.5 * sampled.var()


def test_closed_form_refuses_flows_that_do_not_qualify():
    student = build_iaf(2, 2, (8,), permutation="reverse")
    teacher = build_maf(2, 2, (8,), permutation="none")
    with pytest.raises(ValueError, match="permutation: none"):
        reverse_kl_closed_form(student, teacher, 4)
    student = build_iaf(2, 2, (8,), permutation="none")
    with pytest.raises(ValueError, match="MaskedAutoregressiveAffine"):
        reverse_kl_closed_form(student, build_iaf(2, 2, (8,), permutation="none"), 4)


def test_log_std_regularizer_is_the_squared_log_scale_mismatch():
    student, teacher = fixed_order_pair()
    torch.manual_seed(2)
    penalty = log_std_regularizer(student, teacher, 1000)
    torch.manual_seed(2)
    _, log_std_q, _, log_std_p = gaussian_conditionals(student, teacher, 1000)
    torch.testing.assert_close(penalty, (log_std_q - log_std_p).square().sum(-1))
    assert torch.all(penalty >= 0) and torch.any(penalty > 0)


def test_teacher_gets_no_gradient_but_passes_the_signal():
    teacher = perturb(build_maf(2, 2, (8,)).double())
    teacher.requires_grad_(False)
    student = perturb(build_iaf(2, 2, (8,)).double(), seed=3)

    torch.manual_seed(0)
    reverse_kl(student, teacher, 256).mean().backward()
    assert all(p.grad is None for p in teacher.parameters())
    through_teacher = [p.grad.clone() for p in student.parameters()]

    student.zero_grad()
    torch.manual_seed(0)
    x, log_q = student.sample_and_log_prob((256,))
    (log_q - teacher.log_prob(x.detach())).mean().backward()
    detached = [p.grad for p in student.parameters()]
    difference = sum((a - b).abs().sum() for a, b in zip(through_teacher, detached, strict=True))
    assert difference > 1e-3


def test_objective_combines_weighted_terms_and_validates():
    student, teacher = fixed_order_pair(2)
    objective = DistillationObjective({"reverse_kl": 1.0, "forward_kl": 0.5}, num_samples=64)
    total, parts = objective(student, teacher)
    assert set(parts) == {"reverse_kl", "forward_kl"} and torch.isfinite(total)
    with pytest.raises(ValueError, match="loss.terms must name at least one of reverse_kl"):
        DistillationObjective({"kl": 1.0})
    with pytest.raises(ValueError, match="needs a data batch"):
        DistillationObjective({"regression": 1.0})(student, teacher)


def test_clip_drops_gradient_of_outlier_terms():
    student, teacher = fixed_order_pair(2)
    objective = DistillationObjective({"reverse_kl": 1.0}, num_samples=128, clip=-1e6)
    total, _ = objective(student, teacher)
    total.backward()
    assert all(p.grad is None or p.grad.abs().sum() == 0 for p in student.parameters())


def test_clip_leaves_the_spectral_terms_alone():
    # a spectral term is one value per batch: clamping it would drop its whole gradient
    student, teacher = sequence_pair(global_features=2)
    data = torch.randn(3, 2, 8, dtype=torch.float64)
    context = torch.randn(3, 2, dtype=torch.float64)
    objective = DistillationObjective({"power": 1.0}, num_samples=3, clip=-1e6)
    total, parts = objective(student, teacher, data, context=context)
    assert total == parts["power"]
    total.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in student.parameters())


def test_draws_per_step_is_used_or_refused_never_replaced():
    with pytest.raises(ValueError, match="draws_per_step must be >= 1, got 0"):
        DistillationObjective({"reverse_kl_per_step": 1.0}, draws_per_step=0)
    objective = DistillationObjective({"reverse_kl_per_step": 1.0}, draws_per_step=1)
    assert objective.term_options["reverse_kl_per_step"] == {"draws": 1}


def test_spectral_terms_refuse_flows_over_vectors():
    student, teacher = fixed_order_pair(2)
    for name in ("power", "log_power", "loudness"):
        with pytest.raises(ValueError, match=f"the {name} loss compares power spectra of seq"):
            LOSSES[name](student, teacher, 4, torch.randn(4, 2), None)


def test_schedule_interpolates_each_terms_weight_and_skips_zero_terms():
    assert schedule_factor([[0, 1.0], [1, 0.0]], 0.25) == pytest.approx(0.75)
    assert schedule_factor([[0.1, 0.0], [0.2, 2.0]], 0) == 0.0  # held before the first knot
    assert schedule_factor([[0.1, 0.0], [0.2, 2.0]], 0.5) == 2.0  # and after the last
    assert schedule_factor([[0, 1.0], [1, 0.5]], None) == 0.5  # None: the end of training
    student, teacher = fixed_order_pair(2)
    objective = DistillationObjective(
        {"reverse_kl": 1.0, "forward_kl": 0.2},
        num_samples=64,
        schedule={
            "reverse_kl": [[0, 0.0], [0.1, 0.0], [0.2, 1.0]],
            "forward_kl": [[0, 5.0], [0.2, 1.0]],
        },
    )
    assert objective.weights(0) == {"reverse_kl": 0.0, "forward_kl": pytest.approx(1.0)}
    assert objective.weights(0.15) == {
        "reverse_kl": pytest.approx(0.5),
        "forward_kl": pytest.approx(0.4),
    }
    assert objective.weights() == {"reverse_kl": 1.0, "forward_kl": pytest.approx(0.2)}
    _, parts = objective(student, teacher, progress=0.05)
    assert set(parts) == {"forward_kl"}  # a term of weight 0 is not computed
    with pytest.raises(ValueError, match="not in loss.terms"):
        DistillationObjective({"reverse_kl": 1.0}, schedule={"forward_kl": [[0, 1.0]]})
    with pytest.raises(ValueError, match="increasing in"):
        DistillationObjective(
            {"reverse_kl": 1.0}, schedule={"reverse_kl": [[0.5, 1.0], [0.2, 0.0]]}
        )
    with pytest.raises(ValueError, match="in \\[0, 1\\]"):
        DistillationObjective({"reverse_kl": 1.0}, schedule={"reverse_kl": [[0, 1.0], [500, 0.0]]})


def sequence_pair(**conditioning) -> tuple[Flow, Flow]:
    """A WaveNet MAF teacher and IAF student over (2, 8) sequences, far apart."""
    shape = {"channels": 2, "length": 8, "residual_channels": 6, "skip_channels": 6}
    teacher = build_wavenet_maf(layers_per_flow=[2, 1], **shape, **conditioning)
    student = build_wavenet_iaf(layers_per_flow=[1, 2], **shape, **conditioning)
    teacher = perturb(teacher.double(), 0.3, 0).requires_grad_(False)
    return perturb(student.double(), 0.3, 1), teacher


@pytest.mark.parametrize("conditioning", [{}, {"global_features": 2}])
@pytest.mark.parametrize("loss", ["reverse_kl_closed_form", "reverse_kl_per_step"])
def test_per_step_kl_over_time_matches_monte_carlo(loss, conditioning):
    student, teacher = sequence_pair(**conditioning)
    n = 5_000
    context = torch.randn(n, 2, dtype=torch.float64) if conditioning else None
    torch.manual_seed(3)
    with torch.no_grad():
        per_step = LOSSES[loss](student, teacher, n, None, context)
        sampled = reverse_kl(student, teacher, n, None, context)
    assert per_step.shape == sampled.shape == (n,)
    standard_error = math.sqrt(per_step.var() / n + sampled.var() / n)
    assert abs(per_step.mean() - sampled.mean()) < 4 * standard_error
    assert per_step.mean() > 0.1  # far apart: not vacuous
    assert per_step.var() < sampled.var()


def test_per_step_draws_reduce_variance_and_need_their_term():
    student, teacher = sequence_pair()
    torch.manual_seed(4)
    with torch.no_grad():
        one = reverse_kl_per_step(student, teacher, 4000, draws=1)
        many = reverse_kl_per_step(student, teacher, 4000, draws=16)
    assert many.var() < 0.5 * one.var()
    with pytest.raises(ValueError, match="only read by the reverse_kl_per_step"):
        DistillationObjective({"reverse_kl": 1.0}, draws_per_step=8)


def test_spline_stacks_qualify_for_per_step_draws_but_not_the_closed_form():
    shape = {"channels": 1, "length": 6, "layers_per_flow": [1], "transform": "spline"}
    student = build_wavenet_iaf(**shape)
    teacher = build_wavenet_maf(**shape).requires_grad_(False)
    assert reverse_kl_per_step(student, teacher, 3).shape == (3,)
    with pytest.raises(ValueError, match="affine layers"):
        reverse_kl_closed_form(student, teacher, 3)


def test_conditional_objective_pairs_contexts_and_data_rows():
    student, teacher = sequence_pair(global_features=2)
    objective = DistillationObjective({"reverse_kl": 1.0, "regression": 0.5}, num_samples=5)
    data = torch.randn(3, 2, 8, dtype=torch.float64)
    context = torch.randn(3, 2, dtype=torch.float64)
    total, parts = objective(student, teacher, data, context=context)
    assert torch.isfinite(total) and set(parts) == {"reverse_kl", "regression"}
    total.backward()
    assert all(p.grad is not None for p in student.parameters())


def test_spectral_terms_are_not_divided_per_step_and_pull_the_student():
    student, teacher = sequence_pair(global_features=2)
    data = torch.randn(3, 2, 8, dtype=torch.float64)
    context = torch.randn(3, 2, dtype=torch.float64)
    spectral = (("power", 1), ("log_power", 1), ("shape_power", 1), ("loudness", 1))
    for name, scale in (*spectral, ("reverse_kl", 16)):
        objective = DistillationObjective({name: 1.0}, num_samples=3)
        torch.manual_seed(0)
        _, parts = objective(student, teacher, data, context=context)
        torch.manual_seed(0)
        alone = LOSSES[name](student, teacher, 3, data, context)
        torch.testing.assert_close(parts[name], alone.mean() / scale)  # power: not per step
    for name in ("power", "log_power", "shape_power", "loudness"):
        assert DistillationObjective({name: 1.0}).needs_data  # the stage passes a batch
        student.zero_grad()
        torch.manual_seed(0)
        LOSSES[name](student, teacher, 3, data, context).mean().backward()
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in student.parameters())
    with pytest.raises(ValueError, match="needs a data batch"):
        LOSSES["log_power"](student, teacher, 3, None, context)
    unconditional, teacher = sequence_pair()
    with pytest.raises(ValueError, match="shape_power loss .* unconditional: use the power loss"):
        LOSSES["shape_power"](unconditional, teacher, 3, data, None)


@pytest.mark.parametrize("conditioning", [{}, {"global_features": 2}])
def test_a_per_layer_draw_is_the_flows_own_sample_and_density(conditioning):
    student, teacher = sequence_pair(**conditioning)
    context = torch.randn(4, 2, dtype=torch.float64) if conditioning else None
    torch.manual_seed(5)
    draw = StudentDraw(student, teacher, 4, context, per_layer=True)
    x, log_q = draw.x, draw.log_q
    torch.manual_seed(5)
    expected_x, expected_log_q = student.sample_and_log_prob(() if conditioning else 4, context)
    torch.testing.assert_close(x, expected_x)
    torch.testing.assert_close(log_q, expected_log_q)
    torch.testing.assert_close(log_q, student.log_prob(x, context))


def test_the_objective_runs_the_student_once_a_step_whatever_its_terms(monkeypatch):
    student, teacher = sequence_pair(global_features=2)
    calls = []
    conditioner = student.bijector.bijectors[0].conditioner
    parallel_pass = conditioner.params

    def counted(*args, **kwargs):
        calls.append(1)
        return parallel_pass(*args, **kwargs)

    monkeypatch.setattr(conditioner, "params", counted)
    terms = {"reverse_kl_per_step": 1.0, "reverse_kl": 1.0, "power": 0.5}
    objective = DistillationObjective(terms, num_samples=3)
    data = torch.randn(3, 2, 8, dtype=torch.float64)
    context = torch.randn(3, 2, dtype=torch.float64)
    total, parts = objective(student, teacher, data, context=context)
    assert set(parts) == set(terms) and torch.isfinite(total)
    assert len(calls) == 1
    calls.clear()
    LOSSES["reverse_kl"](student, teacher, 3, None, context)
    LOSSES["power"](student, teacher, 3, data, context)
    assert len(calls) == 2  # without the objective's shared draw, each term draws its own


def test_a_draw_without_per_layer_keeps_no_parameters():
    student, teacher = sequence_pair()
    with pytest.raises(ValueError, match="per_layer=True"):
        StudentDraw(student, teacher, 2).step_parameters()


def test_forward_kl_takes_log_p_from_the_teachers_sampling_pass():
    # log p(x) of the teacher's samples comes from their noise and the forward log-det: it must
    # equal the teacher's density pass on the same x (a spline MAF with perturbed weights).
    torch.manual_seed(0)
    teacher = build_maf(2, num_layers=2, hidden_features=(16,), transform="spline").double()
    teacher = perturb(teacher, 0.3, 0)
    student = build_iaf(2, num_layers=1, hidden_features=(16,)).double()
    torch.manual_seed(1)
    terms = forward_kl(student, teacher, 64)
    torch.manual_seed(1)
    x = teacher.sample((64,))
    expected = teacher.log_prob(x) - student.log_prob(x)
    torch.testing.assert_close(terms, expected, rtol=0, atol=1e-10)


class CountingTeacher(torch.nn.Module):
    """Wraps a teacher flow and records how many samples each of its draws asks for."""

    def __init__(self, flow: Flow):
        super().__init__()
        self.flow, self.draws = flow, []

    def sample_and_log_prob(self, shape, context=None):
        self.draws.append(len(context) if context is not None else shape[0])
        return self.flow.sample_and_log_prob(shape, context)


@pytest.mark.parametrize("conditional", [False, True])
def test_the_teacher_sample_pool_reuses_samples_with_their_density_and_context(conditional):
    torch.manual_seed(0)
    features = 3 if conditional else None
    teacher = build_maf(2, 2, (16,), transform="spline", context_features=features).double()
    teacher = perturb(teacher, 0.3, 0)
    counting, pool = CountingTeacher(teacher), TeacherSamplePool(reuse=4)
    context = torch.randn(64, 3, dtype=torch.float64) if conditional else None
    seen = []
    for _ in range(6):
        x, log_p, rows_context = pool.take(counting, 64, context)
        assert x.shape == (64, 2) and log_p.shape == (64,)
        # every row keeps its own density (and the context it was drawn with)
        torch.testing.assert_close(log_p, teacher.log_prob(x, rows_context), rtol=1e-9, atol=1e-8)
        if conditional:
            assert rows_context.shape == (64, 3)
            assert all((context == row).all(1).any() for row in rows_context)
        seen.append(x)
    # a pool of 4 x 64 filled once, then 64 / 4 fresh samples a step
    assert counting.draws == [256, 16, 16, 16, 16, 16]
    # rows drawn without replacement: no duplicate within a step; steps share samples
    assert len(torch.unique(seen[1], dim=0)) == 64
    shared = (seen[1][:, None] == seen[2][None]).all(-1).any(1).sum()
    assert 0 < shared < 64


def test_the_teacher_sample_pool_is_for_training_only():
    torch.manual_seed(0)
    teacher = perturb(build_maf(2, 2, (16,), transform="spline").double(), 0.3, 0)
    student = build_iaf(2, num_layers=1, hidden_features=(16,)).double()
    objective = DistillationObjective({"forward_kl": 1.0}, num_samples=32, teacher_reuse=4)
    counting = CountingTeacher(teacher)
    objective(student, counting)
    objective(student, counting)
    assert counting.draws == [128, 8]  # the pool, then a quarter of a step's samples
    objective.eval()
    objective(student, counting)
    assert counting.draws == [128, 8, 32]  # validation: fresh samples, the pool untouched
    with pytest.raises(ValueError, match="teacher_reuse=4 is only read by the forward_kl"):
        DistillationObjective({"reverse_kl": 1.0}, teacher_reuse=4)
    with pytest.raises(ValueError, match="teacher_reuse must be an integer >= 1"):
        DistillationObjective({"forward_kl": 1.0}, teacher_reuse=0)


def test_the_teacher_sample_bank_is_drawn_once_and_serves_every_training_step():
    torch.manual_seed(0)
    teacher = perturb(build_maf(2, 2, (16,), transform="spline").double(), 0.3, 0)
    student = build_iaf(2, num_layers=1, hidden_features=(16,)).double()
    counting, bank = CountingTeacher(teacher), TeacherSampleBank(100, chunk=40)
    seen = []
    for _ in range(3):
        x, log_p, context = bank.take(counting, 32)
        assert x.shape == (32, 2) and context is None
        torch.testing.assert_close(log_p, teacher.log_prob(x), rtol=1e-9, atol=1e-8)
        assert len(torch.unique(x, dim=0)) == 32  # no row twice within a step
        seen.append(x)
    assert counting.draws == [40, 40, 20]  # drawn once, in chunks; never again
    assert len(torch.unique(torch.cat(seen), dim=0)) <= 100
    objective = DistillationObjective({"forward_kl": 1.0}, num_samples=32, teacher_bank=64)
    objective(student, counting)
    objective(student, counting)
    assert counting.draws[3:] == [64]
    objective.eval()
    objective(student, counting)
    assert counting.draws[3:] == [64, 32]  # validation: fresh samples, the bank untouched
    with pytest.raises(ValueError, match="contexts"):
        bank.take(counting, 32, torch.zeros(32, 3, dtype=torch.float64))


@pytest.mark.parametrize(
    ("terms", "options", "match"),
    [
        ({"reverse_kl": 1.0}, {"teacher_bank": 64}, "read by the forward_kl term alone"),
        ({"forward_kl": 1.0}, {"teacher_bank": 64, "teacher_reuse": 4}, "replaces teacher_reuse"),
        ({"forward_kl": 1.0}, {"teacher_bank": 16}, "smaller than loss.num_samples=32"),
        ({"forward_kl": 1.0}, {"teacher_bank": 0}, "teacher_bank must be an integer >= 1"),
    ],
)
def test_the_teacher_sample_bank_refuses_settings_it_would_not_read(terms, options, match):
    with pytest.raises(ValueError, match=match):
        DistillationObjective(terms, num_samples=32, **options)
