"""Every bijector: invertibility and log-dets against autograd, in float64, with perturbed
parameters and random inputs."""

import pytest
import torch
from torch.autograd.functional import jacobian

from distill.flows import (
    ActNorm,
    AdditiveCoupling,
    AffineCoupling,
    BatchNorm,
    Chain,
    InverseAutoregressiveAffine,
    InverseAutoregressiveSpline,
    Invert,
    MaskedAutoregressiveAffine,
    MaskedAutoregressiveSpline,
    Permute,
    RandomPermute,
    Reverse,
    SplineCoupling,
    build_iaf,
    build_maf,
    build_nice,
    build_realnvp,
)
from tests.flows.helpers import check_bijector, perturb

D = 4
CUSTOM_ORDER = [2, 0, 3, 1]


def initialized_act_norm(features: int) -> ActNorm:
    """An ActNorm past its data-dependent initialization (which the first training-mode
    inverse would otherwise perform in the middle of a round trip)."""
    layer = ActNorm(features)
    layer.inverse(torch.randn(64, features) * 2 + 1)
    return layer


FACTORIES = {
    "maf": lambda: MaskedAutoregressiveAffine(D, (16, 16)),
    "maf_custom_order": lambda: MaskedAutoregressiveAffine(D, (16,), order=CUSTOM_ORDER),
    "iaf": lambda: InverseAutoregressiveAffine(D, (16, 16)),
    "iaf_custom_order": lambda: InverseAutoregressiveAffine(D, (16, 16), order=CUSTOM_ORDER),
    "affine_coupling": lambda: AffineCoupling(D, hidden_features=(16, 16)),
    "affine_coupling_mask": lambda: AffineCoupling(D, mask=[True, False, False, True]),
    "additive_coupling": lambda: AdditiveCoupling(D, hidden_features=(16,)),
    "maf_spline": lambda: MaskedAutoregressiveSpline(D, (16, 16)),
    "maf_spline_custom_order": lambda: MaskedAutoregressiveSpline(
        D, (16,), order=CUSTOM_ORDER, bins=5, tail_bound=2.0
    ),
    "iaf_spline": lambda: InverseAutoregressiveSpline(D, (16, 16)),
    "iaf_spline_custom_order": lambda: InverseAutoregressiveSpline(D, (16,), order=CUSTOM_ORDER),
    "spline_coupling": lambda: SplineCoupling(D, hidden_features=(16, 16), tail_bound=2.0),
    "spline_coupling_mask": lambda: SplineCoupling(D, mask=[True, False, False, True], bins=3),
    "batch_norm_eval": lambda: BatchNorm(D).eval(),
    "act_norm": lambda: initialized_act_norm(D),
    "permute": lambda: Permute([3, 1, 0, 2]),
    "reverse": lambda: Reverse(D),
    "random_permute": lambda: RandomPermute(D, seed=3),
    "invert_maf": lambda: Invert(MaskedAutoregressiveAffine(D, (16,))),
    "chain": lambda: Chain(
        [MaskedAutoregressiveAffine(D, (8,)), Reverse(D), initialized_act_norm(D)]
    ),
    "build_maf": lambda: build_maf(D, 3, (16,), batch_norm=True).bijector.eval(),
    "build_iaf": lambda: build_iaf(D, 3, (16,), permutation="random").bijector,
    "build_realnvp": lambda: build_realnvp(D, 3, (16,), batch_norm=True).bijector.eval(),
    "build_nice": lambda: build_nice(D, 3, (16,)).bijector,
    "build_maf_spline": lambda: build_maf(D, 3, (16,), transform="spline").bijector,
    "build_realnvp_spline": lambda: build_realnvp(
        D, 3, (16,), batch_norm=True, transform="spline", bins=4, tail_bound=2.0
    ).bijector.eval(),
}


@pytest.mark.parametrize("name", FACTORIES)
def test_invertible_with_exact_log_det(name):
    bijector = perturb(FACTORIES[name]().double())
    check_bijector(bijector, D)


@pytest.mark.parametrize(
    "name", ["maf", "iaf", "affine_coupling", "build_maf", "maf_spline", "iaf_spline"]
)
def test_many_leading_batch_dims(name):
    bijector = perturb(FACTORIES[name]().double())
    check_bijector(bijector, D, batch_shape=(2, 3, 5))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize(
    "name",
    [
        "maf",
        "iaf",
        "affine_coupling",
        "batch_norm_eval",
        "maf_spline",
        "iaf_spline",
        "spline_coupling",
    ],
)
def test_dtypes(name, dtype):
    bijector = perturb(FACTORIES[name]()).to(dtype)
    z = torch.randn(11, D, dtype=dtype)
    x, log_det = bijector(z)
    assert x.dtype == dtype and log_det.dtype == dtype
    z_back, _ = bijector.inverse(x)
    tolerance = 1e-4 if dtype == torch.float32 else 1e-10
    torch.testing.assert_close(z_back, z, atol=tolerance, rtol=tolerance)


def test_additive_coupling_is_volume_preserving():
    bijector = perturb(AdditiveCoupling(D).double())
    _, log_det = bijector(torch.randn(5, D, dtype=torch.float64))
    assert torch.equal(log_det, torch.zeros(5, dtype=torch.float64))


def test_invert_swaps_directions():
    maf = perturb(MaskedAutoregressiveAffine(D, (16,)).double())
    x = torch.randn(6, D, dtype=torch.float64)
    u_maf, log_det_maf = maf.inverse(x)
    u_inv, log_det_inv = Invert(maf)(x)
    torch.testing.assert_close(u_inv, u_maf)
    torch.testing.assert_close(log_det_inv, log_det_maf)


def test_chain_order_and_steps():
    first, second = Reverse(3), Permute([1, 2, 0])
    chain = Chain([first, second])
    z = torch.arange(3.0)
    x, _ = chain(z)
    torch.testing.assert_close(x, second(first(z)[0])[0])
    steps = chain.forward_steps(z)
    assert len(steps) == 3 and torch.equal(steps[-1], x)


def test_new_layers_start_near_identity():
    layers = (
        MaskedAutoregressiveAffine(D),
        InverseAutoregressiveAffine(D),
        AffineCoupling(D),
        MaskedAutoregressiveSpline(D),
        InverseAutoregressiveSpline(D),
        SplineCoupling(D),
    )
    for bijector in layers:
        z = torch.randn(32, D)
        x, log_det = bijector(z)
        assert (x - z).abs().max() < 0.2 and log_det.abs().max() < 0.2


def test_log_scale_is_bounded():
    layer = MaskedAutoregressiveAffine(D, (16,), log_scale_bound=2.0)
    with torch.no_grad():
        layer.conditioner.output_layer.bias.fill_(1e3)
    _, log_det = layer.inverse(torch.randn(10, D))
    assert torch.all(log_det.abs() <= 2.0 * D + 1e-5)


def count_linear_rows(monkeypatch) -> list:
    """Record the number of output rows (units) of every matrix product MADE makes."""
    import distill.flows.made as made

    rows = []
    linear = made.F.linear

    def counting(inputs, weight, bias=None):
        rows.append(weight.shape[0])
        return linear(inputs, weight, bias)

    monkeypatch.setattr(made.F, "linear", counting)
    return rows


MAF_CLASSES = [MaskedAutoregressiveAffine, MaskedAutoregressiveSpline]
IAF_CLASSES = [InverseAutoregressiveAffine, InverseAutoregressiveSpline]


@pytest.mark.parametrize("layer_class", MAF_CLASSES)
def test_maf_forward_computes_each_unit_once_and_inverse_is_one_pass(monkeypatch, layer_class):
    layer = layer_class(D, (16, 8))
    num_params = layer.transform.num_params
    rows = count_linear_rows(monkeypatch)
    layer(torch.randn(3, D))  # sequential: every hidden unit once, then the P outputs per rank
    assert sum(rows) == 16 + 8 + num_params * D and len(rows) <= 3 * D
    rows.clear()
    layer.inverse(torch.randn(3, D))  # parallel: one pass
    assert rows == [16, 8, num_params * D]


@pytest.mark.parametrize("layer_class", IAF_CLASSES)
def test_iaf_forward_is_one_pass(monkeypatch, layer_class):
    layer = layer_class(D, (16,))
    rows = count_linear_rows(monkeypatch)
    layer(torch.randn(3, D))
    assert rows == [16, layer.transform.num_params * D]


@pytest.mark.parametrize("grad", [True, False], ids=["autograd", "no_grad"])
@pytest.mark.parametrize("context_features", [None, 3])
@pytest.mark.parametrize("order", [None, CUSTOM_ORDER])
@pytest.mark.parametrize("layer_class", MAF_CLASSES + IAF_CLASSES)
def test_sequential_solve_matches_fixed_point_iteration(layer_class, order, context_features, grad):
    """The rank-by-rank solve (each unit computed once; in place without autograd) against
    the plain definition: D full MADE passes of the iteration y <- transform(given, params(y)).
    The context batch (2, 1) broadcasts against the data batch (6,)."""
    layer = perturb(
        layer_class(D, (16, 16), order=order, context_features=context_features).double()
    )
    context = torch.randn(2, 1, 3, dtype=torch.float64) if context_features else None
    given = torch.randn(6, D, dtype=torch.float64)
    with torch.set_grad_enabled(grad):
        solved, log_det = (layer if layer.conditioner_reads_data else layer.inverse)(given, context)
    transform = layer.transform.forward if layer.conditioner_reads_data else layer.transform.inverse
    y = torch.zeros_like(given)
    for _ in range(D):
        y, log_det_elementwise = transform(given, layer.params(y, context))
    torch.testing.assert_close(solved, y)
    torch.testing.assert_close(log_det, log_det_elementwise.sum(-1))


@pytest.mark.parametrize("direction", ["forward", "inverse"])
@pytest.mark.parametrize("layer_class", MAF_CLASSES + IAF_CLASSES)
def test_autoregressive_jacobian_is_triangular_in_the_order(layer_class, direction):
    """Output i depends on the inputs of rank <= rank(i) only, and strictly increases in
    input i: the Jacobian, rows and columns sorted by rank, is lower triangular with a
    positive diagonal, in both directions (the sequential one included)."""
    layer = perturb(layer_class(D, (16, 16), order=CUSTOM_ORDER).double())
    point = torch.randn(D, dtype=torch.float64)
    matrix = jacobian(lambda inputs: getattr(layer, direction)(inputs)[0], point)
    by_rank = torch.tensor(CUSTOM_ORDER).argsort()
    matrix = matrix[by_rank][:, by_rank]
    below = torch.ones(D, D, dtype=torch.bool).tril(-1)
    assert torch.all(matrix.triu(1) == 0)
    assert torch.all(matrix.diagonal() > 0)
    assert torch.all(matrix[below] != 0), "some dimension ignores an earlier one"


@pytest.mark.parametrize("flow", ["student", "teacher"])
def test_closed_form_kl_refuses_spline_layers(flow):
    from distill.losses import reverse_kl_closed_form

    flows = {
        "student": build_iaf(2, 2, (8,), permutation="none"),
        "teacher": build_maf(2, 2, (8,), permutation="none"),
    }
    build = build_iaf if flow == "student" else build_maf
    flows[flow] = build(2, 2, (8,), permutation="none", transform="spline")
    with pytest.raises(ValueError, match=f"needs affine layers.*the {flow} has .*Spline layers"):
        reverse_kl_closed_form(flows["student"], flows["teacher"], 4)


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: MaskedAutoregressiveAffine(3, order=[0, 0, 1]), "permutation"),
        (lambda: AffineCoupling(3, mask=[True, True, True]), "mask"),
        (lambda: Permute([0, 2, 2]), "permutation"),
        (lambda: build_maf(2, permutation="sideways"), "permutation must be one of"),
        (lambda: build_maf(2, hidden_features=(-3,)), "hidden_features"),
        (lambda: build_maf(2, num_layers=0), "num_layers"),
        (
            lambda: build_maf(2, transform="cubic"),
            r"transform must be one of \('affine', 'spline'\)",
        ),
        (lambda: build_nice(2, transform="spline"), r"one of \('additive',\) for nice"),
        (lambda: build_realnvp(2, transform="spline", bins=0), "bins must be >= 2"),
        (lambda: build_iaf(2, transform="spline", tail_bound=-1.0), "tail_bound must be positive"),
        (lambda: build_maf(2, log_scale_bound=0.0), "log_scale_bound must be positive"),
        (
            lambda: build_maf(2, transform="spline", log_scale_bound=2.0),
            r"log_scale_bound=2.0 is not read by the spline transform \(it takes bins, "
            r"tail_bound\)",
        ),
        (lambda: build_iaf(2, bins=4), "bins=4 is not read by the affine transform"),
        (
            lambda: build_nice(2, log_scale_bound=1.0, tail_bound=2.0),
            r"log_scale_bound=1.0, tail_bound=2.0 is not read by the additive transform \(it "
            r"takes no settings\)",
        ),
    ],
)
def test_bad_construction_is_a_clear_error(make, message):
    with pytest.raises(ValueError, match=message):
        make()
