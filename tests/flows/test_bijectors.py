"""Every bijector: invertibility and log-dets against autograd, in float64, with perturbed
parameters and random inputs."""

import pytest
import torch

from distill.flows import (
    ActNorm,
    AdditiveCoupling,
    AffineCoupling,
    BatchNorm,
    Chain,
    InverseAutoregressiveAffine,
    Invert,
    MaskedAutoregressiveAffine,
    Permute,
    RandomPermute,
    Reverse,
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
}


@pytest.mark.parametrize("name", FACTORIES)
def test_invertible_with_exact_log_det(name):
    bijector = perturb(FACTORIES[name]().double())
    check_bijector(bijector, D)


@pytest.mark.parametrize("name", ["maf", "iaf", "affine_coupling", "build_maf"])
def test_many_leading_batch_dims(name):
    bijector = perturb(FACTORIES[name]().double())
    check_bijector(bijector, D, batch_shape=(2, 3, 5))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("name", ["maf", "iaf", "affine_coupling", "batch_norm_eval"])
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
    layers = (MaskedAutoregressiveAffine(D), InverseAutoregressiveAffine(D), AffineCoupling(D))
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


def test_maf_forward_computes_each_unit_once_and_inverse_is_one_pass(monkeypatch):
    layer = MaskedAutoregressiveAffine(D, (16, 8))
    rows = count_linear_rows(monkeypatch)
    layer(torch.randn(3, D))  # sequential: every hidden unit once, then the 2 outputs per rank
    assert sum(rows) == 16 + 8 + 2 * D and len(rows) <= 3 * D
    rows.clear()
    layer.inverse(torch.randn(3, D))  # parallel: one pass
    assert rows == [16, 8, 2 * D]


def test_iaf_forward_is_one_pass(monkeypatch):
    layer = InverseAutoregressiveAffine(D, (16,))
    rows = count_linear_rows(monkeypatch)
    layer(torch.randn(3, D))
    assert rows == [16, 2 * D]


@pytest.mark.parametrize("grad", [True, False], ids=["autograd", "no_grad"])
@pytest.mark.parametrize("context_features", [None, 3])
@pytest.mark.parametrize("order", [None, CUSTOM_ORDER])
@pytest.mark.parametrize("layer_class", [MaskedAutoregressiveAffine, InverseAutoregressiveAffine])
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
    y = torch.zeros_like(given)
    for _ in range(D):
        shift, log_scale = layer.affine_params(y, context)
        y = (
            given * log_scale.exp() + shift
            if layer.conditioner_reads_data
            else (given - shift) * torch.exp(-log_scale)
        )
    torch.testing.assert_close(solved, y)
    expected = log_scale.sum(-1) if layer.conditioner_reads_data else -log_scale.sum(-1)
    torch.testing.assert_close(log_det, expected)


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: MaskedAutoregressiveAffine(3, order=[0, 0, 1]), "permutation"),
        (lambda: AffineCoupling(3, mask=[True, True, True]), "mask"),
        (lambda: Permute([0, 2, 2]), "permutation"),
        (lambda: build_maf(2, permutation="sideways"), "permutation must be one of"),
        (lambda: build_maf(2, hidden_features=(-3,)), "hidden_features"),
        (lambda: build_maf(2, num_layers=0), "num_layers"),
    ],
)
def test_bad_construction_is_a_clear_error(make, message):
    with pytest.raises(ValueError, match=message):
        make()
