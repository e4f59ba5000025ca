"""MADE's autoregressive property, read off the autograd Jacobian with perturbed weights."""

import pytest
import torch
from torch.autograd.functional import jacobian

from distill.flows import MADE
from tests.flows.helpers import perturb

# features, order
ORDERS = {"default": (4, None), "custom": (4, [2, 0, 3, 1]), "one_dimensional": (1, None)}


@pytest.mark.parametrize("context_features", [None, 3], ids=["unconditional", "context"])
@pytest.mark.parametrize("out_multiplier", [1, 2, 3])
@pytest.mark.parametrize("order_name", ORDERS)
def test_outputs_depend_exactly_on_earlier_inputs_and_on_the_context(
    order_name, out_multiplier, context_features
):
    features, order = ORDERS[order_name]
    # Tanh and hidden layers wider than D: every allowed path exists and has a non-zero slope.
    made = MADE(
        features, (3 * features + 2,) * 2, out_multiplier, order, context_features, torch.nn.Tanh
    )
    made = perturb(made.double())
    x = torch.randn(features, dtype=torch.float64)
    context = None if context_features is None else torch.randn(3, dtype=torch.float64)

    rank = torch.arange(features) if order is None else torch.tensor(order)
    allowed = rank[None, :] < rank[:, None]  # [i, j]: output dimension i may read input j
    blocks = jacobian(lambda inputs: made(inputs, context), x)
    blocks = blocks.reshape(out_multiplier, features, features)
    assert torch.all(blocks[:, ~allowed] == 0)
    assert torch.all(blocks[:, allowed] != 0)

    if context is not None:
        context_jacobian = jacobian(lambda c: made(x, c), context)
        assert context_jacobian.shape == (out_multiplier * features, 3)
        assert torch.all(context_jacobian != 0), "some output ignores (part of) the context"


def test_unconditional_hidden_units_all_see_an_input():
    """Units that see only the context exist only when there is a context."""
    made = MADE(4, (12, 12))
    assert torch.all(made.hidden[0].mask.sum(1) > 0)


def test_missing_context_is_a_clear_error():
    made = MADE(4, (8,), context_features=3)
    with pytest.raises(ValueError, match="context_features=3"):
        made(torch.randn(2, 4))


@pytest.mark.parametrize("order", [[0, 0, 1], [0, 1, 3]])
def test_bad_order_is_a_clear_error(order):
    with pytest.raises(ValueError, match="permutation"):
        MADE(3, order=order)
