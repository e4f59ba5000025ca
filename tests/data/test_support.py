"""`DensityDataModule.in_support`: the data's own points are inside, others are not."""

import pytest
import torch

from distill.data import build_datamodule


@pytest.mark.parametrize("name", ["siggraph", "checkerboard"])
def test_the_datas_own_points_are_in_its_support(name):
    datamodule = build_datamodule(name=name, num_train=600, num_val=10, num_test=2000)
    datamodule.setup()
    assert datamodule.in_support(datamodule.test_data).all()
    around = datamodule.test_data + 0.5 * torch.randn_like(datamodule.test_data)
    fraction = datamodule.in_support(around).double().mean()
    assert 0.05 < fraction < 0.95  # blurred points fall on both sides


def test_checkerboard_support_is_the_eight_black_squares():
    datamodule = build_datamodule(name="checkerboard", num_train=600, num_val=10, num_test=10)
    points = torch.tensor([[-3.0, 3.0], [-1.0, 3.0], [1.0, 1.0], [1.0, -1.0], [5.0, 1.0]])
    assert datamodule.in_support(points).tolist() == [False, True, True, False, False]


def test_unknown_support_is_none():
    datamodule = build_datamodule(name="moons", num_train=600, num_val=10, num_test=10)
    assert datamodule.in_support(torch.zeros(3, 2)) is None
