"""The elementwise transforms on their own: round trips and log-dets against autograd with
random parameters, the identity at zero parameters, and the spline's knots, tails and
extreme parameters."""

import pytest
import torch

from distill.flows import Affine, RationalQuadraticSpline, Shift

TRANSFORMS = {
    "shift": Shift(),
    "affine": Affine(),
    "affine_bound_1": Affine(log_scale_bound=1.0),
    "spline": RationalQuadraticSpline(),
    "spline_2_bins": RationalQuadraticSpline(bins=2, tail_bound=2.0),
    "spline_3_bins": RationalQuadraticSpline(bins=3, tail_bound=3.0),
}
SPLINE = RationalQuadraticSpline(bins=8, tail_bound=3.0)
DTYPES = [torch.float32, torch.float64]


def random_params(transform, *batch_shape, scale=1.0, dtype=torch.float64, seed=0):
    generator = torch.Generator().manual_seed(seed)
    shape = (*batch_shape, transform.num_params)
    return scale * torch.randn(shape, generator=generator, dtype=dtype)


def spline_inputs(dtype=torch.float64) -> torch.Tensor:
    """(6, 50): points across [-B, B] and beyond, into the far tails."""
    generator = torch.Generator().manual_seed(1)
    return 2 * SPLINE.tail_bound * (2 * torch.rand(6, 50, generator=generator, dtype=dtype) - 1)


def elementwise_log_derivative(function, inputs: torch.Tensor) -> torch.Tensor:
    """log |d function(x)_i / d x_i| from the autograd Jacobian, whose off-diagonal must vanish
    (the transform is elementwise)."""
    flat = inputs.reshape(-1)
    matrix = torch.autograd.functional.jacobian(
        lambda x: function(x.view_as(inputs)).reshape(-1), flat
    )
    diagonal = matrix.diagonal()
    assert torch.all(matrix - torch.diag(diagonal) == 0)
    return diagonal.abs().log().view_as(inputs)


@pytest.mark.parametrize("scale", [0.3, 3.0], ids=["moderate", "extreme"])
@pytest.mark.parametrize("name", TRANSFORMS)
def test_round_trip_and_log_dets_against_autograd(name, scale):
    transform = TRANSFORMS[name]
    params = random_params(transform, 6, 50, scale=scale)
    u = spline_inputs()
    x, log_det_forward = transform.forward(u, params)
    u_back, log_det_inverse = transform.inverse(x, params)
    torch.testing.assert_close(u_back, u, atol=1e-9, rtol=1e-9)
    torch.testing.assert_close(log_det_inverse, -log_det_forward, atol=1e-9, rtol=1e-9)
    expected = elementwise_log_derivative(lambda v: transform.forward(v, params)[0], u)
    torch.testing.assert_close(log_det_forward, expected, atol=1e-9, rtol=1e-9)
    expected = elementwise_log_derivative(lambda v: transform.inverse(v, params)[0], x)
    torch.testing.assert_close(log_det_inverse, expected, atol=1e-9, rtol=1e-9)


@pytest.mark.parametrize("name", TRANSFORMS)
def test_one_dimension_at_a_time_matches_the_batch(name):
    """The sequential solve calls a transform with inputs (...) and params (..., P)."""
    transform = TRANSFORMS[name]
    params = random_params(transform, 6, 4)
    u = spline_inputs()[:, :4]
    x, log_det = transform.forward(u, params)
    for i in range(4):
        x_i, log_det_i = transform.forward(u[:, i], params[:, i])
        torch.testing.assert_close(x_i, x[:, i], atol=1e-14, rtol=1e-14)
        torch.testing.assert_close(log_det_i, log_det[:, i], atol=1e-14, rtol=1e-14)
    single = transform.inverse(x[0, 0], params[0, 0])  # one unbatched point: () and (P,)
    assert single[0].shape == single[1].shape == ()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", TRANSFORMS)
def test_zero_parameters_are_the_identity(name, dtype):
    transform = TRANSFORMS[name]
    u = spline_inputs(dtype)
    params = torch.zeros(*u.shape, transform.num_params, dtype=dtype)
    tolerance = 1e-6 if dtype == torch.float32 else 1e-14
    for direction in (transform.forward, transform.inverse):
        output, log_det = direction(u, params)
        torch.testing.assert_close(output, u, atol=tolerance, rtol=tolerance)
        torch.testing.assert_close(log_det, torch.zeros_like(u), atol=tolerance, rtol=0)


@pytest.mark.parametrize("dtype", DTYPES)
def test_spline_float32_agrees_with_float64(dtype):
    params = random_params(SPLINE, 6, 50, dtype=torch.float64)
    u = spline_inputs()
    x64, log_det64 = SPLINE.forward(u, params)
    x, log_det = SPLINE.forward(u.to(dtype), params.to(dtype))
    u_back, _ = SPLINE.inverse(x, params.to(dtype))
    assert x.dtype == log_det.dtype == dtype
    tolerance = 1e-4 if dtype == torch.float32 else 1e-12
    torch.testing.assert_close(x.double(), x64, atol=tolerance, rtol=tolerance)
    torch.testing.assert_close(log_det.double(), log_det64, atol=tolerance, rtol=tolerance)
    torch.testing.assert_close(u_back, u.to(dtype), atol=10 * tolerance, rtol=10 * tolerance)


def test_spline_knots_are_sorted_from_minus_to_plus_the_bound():
    u_knots, x_knots, derivatives = SPLINE.knots(random_params(SPLINE, 6, 5, scale=3.0))
    bound = SPLINE.tail_bound
    for knots in (u_knots, x_knots):
        assert knots.shape == (6, 5, SPLINE.bins + 1)
        assert torch.all(knots[..., 0] == -bound) and torch.all(knots[..., -1] == bound)
        sizes = knots.diff(dim=-1)
        assert torch.all(sizes >= 2 * bound * SPLINE.min_bin_size * (1 - 1e-9))
    assert torch.all(derivatives[..., [0, -1]] == 1)
    assert torch.all(derivatives >= SPLINE.min_derivative)


@pytest.mark.parametrize("dtype", DTYPES)
def test_spline_maps_knots_to_knots_with_their_derivatives(dtype):
    """Points exactly on the knots (±B included): the map, its inverse and the log-dets are
    the knots' own values, and gradients stay finite there."""
    params = random_params(SPLINE, 6, 5, dtype=dtype).requires_grad_()
    # point j of each row sits on knot j (knots computed on the same batch as the transform's,
    # so that they agree to the last bit in float32 too)
    expanded = params[..., None, :].expand(6, 5, SPLINE.bins + 1, SPLINE.num_params)
    u_knots, x_knots, derivatives = (
        t.detach().diagonal(dim1=-2, dim2=-1) for t in SPLINE.knots(expanded)
    )
    x, log_det = SPLINE.forward(u_knots, expanded)
    u, log_det_inverse = SPLINE.inverse(x_knots, expanded)
    tolerance = 1e-4 if dtype == torch.float32 else 1e-12
    torch.testing.assert_close(x, x_knots, atol=tolerance, rtol=tolerance)
    torch.testing.assert_close(u, u_knots, atol=tolerance, rtol=tolerance)
    torch.testing.assert_close(log_det, derivatives.log(), atol=tolerance, rtol=tolerance)
    torch.testing.assert_close(log_det_inverse, -derivatives.log(), atol=tolerance, rtol=tolerance)
    (x.sum() + log_det.sum() + u.sum() + log_det_inverse.sum()).backward()
    assert torch.isfinite(params.grad).all()


def test_spline_is_continuous_with_a_continuous_slope_at_the_knots_and_the_bound():
    params = random_params(SPLINE, 1, scale=2.0).expand(3, SPLINE.num_params)
    u_knots, _, _ = SPLINE.knots(params[0])
    step = 1e-10
    for knot in u_knots.tolist():
        u = torch.tensor([knot - step, knot, knot + step], dtype=torch.float64)
        x, log_det = SPLINE.forward(u, params)
        assert abs(x[2] - x[0]) < 1e-8 and abs(log_det[2] - log_det[0]) < 1e-5


@pytest.mark.parametrize("dtype", DTYPES)
def test_spline_far_tails_are_the_identity_with_finite_gradients(dtype):
    params = random_params(SPLINE, 4, dtype=dtype, scale=3.0).requires_grad_()
    points = torch.tensor([-1e3, -3.5, 3.5, 1e3], dtype=dtype, requires_grad=True)
    for direction in (SPLINE.forward, SPLINE.inverse):
        output, log_det = direction(points, params)
        assert torch.equal(output, points.detach()) and torch.all(log_det == 0)
        params.grad = points.grad = None
        (output.square().sum() + log_det.sum()).backward()
        assert torch.all(params.grad == 0) and torch.all(points.grad == 2 * points.detach())


@pytest.mark.parametrize("dtype", DTYPES)
def test_spline_is_strictly_increasing_and_finite_for_extreme_parameters(dtype):
    params = random_params(SPLINE, 1, scale=30.0, dtype=dtype).expand(2001, SPLINE.num_params)
    u = torch.linspace(-4, 4, 2001, dtype=dtype)
    x, log_det = SPLINE.forward(u, params)
    assert torch.isfinite(x).all() and torch.isfinite(log_det).all()
    # strictly increasing; in float32, steps below the rounding of x may round to zero
    assert torch.all(x.diff() > 0) if dtype == torch.float64 else torch.all(x.diff() >= 0)
    u_back, log_det_inverse = SPLINE.inverse(x, params)
    assert torch.isfinite(u_back).all() and torch.isfinite(log_det_inverse).all()
    if dtype == torch.float64:  # float32 is ill-conditioned here: flat bins amplify rounding
        torch.testing.assert_close(u_back, u, atol=1e-9, rtol=0)


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: Affine(log_scale_bound=0.0), "log_scale_bound must be positive"),
        (lambda: RationalQuadraticSpline(bins=1), "bins must be >= 2"),
        (lambda: RationalQuadraticSpline(tail_bound=0.0), "tail_bound must be positive"),
        (lambda: RationalQuadraticSpline(bins=8, min_bin_size=0.2), "min_bin_size"),
        (lambda: RationalQuadraticSpline(min_derivative=1.0), "min_derivative"),
    ],
)
def test_bad_settings_are_a_clear_error(make, message):
    with pytest.raises(ValueError, match=message):
        make()
