import os

import pytest
import torch

# Small matrix products on a shared 2-core machine: busy-waiting OpenMP threads slow them down.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
