import distill  # noqa: F401, I001  (first: it sets GOMP_SPINCOUNT before torch starts)

import os

import pytest
import torch
from hydra import compose, initialize_config_module
from hydra.core.global_hydra import GlobalHydra

# One intra-op thread in the test process: the tests' tensors are small (a batch of 1,024 points
# through a MADE of 128x128), too small for a second thread to pay for its synchronization, and
# on 2 cores shared with the CLIs and DDP ranks the tests launch, a second thread waited for a
# core (the 600-step distillation fixture took 52 s with 2 threads under load, 35 s with 1).
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(autouse=True)
def _outside_slurm(monkeypatch):
    """No SLURM_* variable in any test's environment, so that the suite run inside an srun or
    sbatch allocation behaves as outside it: with SLURM_JOB_ID set, a stopped stage ends its
    process at once (os._exit, for the requeue), and in the test's process that is pytest's own
    end; Lightning would also take the allocation's tasks for its own. A test that needs a
    variable sets it with monkeypatch (or in its subprocess's env); jobs on the test cluster
    get theirs from slurmd."""
    for name in [name for name in os.environ if name.startswith("SLURM_")]:
        monkeypatch.delenv(name)


@pytest.fixture
def wandb_env(tmp_path, monkeypatch):
    """W&B offline, with every directory it writes inside the test's tmp_path."""
    for name in ("WANDB_DIR", "WANDB_CACHE_DIR", "WANDB_CONFIG_DIR", "WANDB_DATA_DIR"):
        folder = tmp_path / "wandb_home" / name.lower()
        folder.mkdir(parents=True)
        monkeypatch.setenv(name, str(folder))
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    return tmp_path


@pytest.fixture
def compose_config(tmp_path):
    """``compose_config(name, overrides, output_dir=None)``: a config composed with Hydra's
    compose API, its run directory set to a folder under tmp_path (there is no real run)."""
    GlobalHydra.instance().clear()

    def _compose(config_name: str, overrides: list[str] = (), output_dir=None):
        output_dir = output_dir or tmp_path / "run"
        with initialize_config_module("distill.conf", version_base="1.3"):
            return compose(config_name, overrides=[*overrides, f"paths.output_dir={output_dir}"])

    yield _compose
    GlobalHydra.instance().clear()
