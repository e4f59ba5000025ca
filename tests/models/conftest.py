"""A short teacher run on moons, trained once per session and shared by the model tests."""

import pytest
from hydra import compose, initialize_config_module
from hydra.core.global_hydra import GlobalHydra

from distill.cli.teacher import run as run_teacher

SMALL_MOONS = [
    "data=moons",
    "data.num_train=4096",
    "data.num_val=1000",
    "data.num_test=2000",
    "data.batch_size=256",
    "teacher.flow.num_layers=4",
    "teacher.flow.hidden_features=[64,64]",
    "teacher.optim.lr=3e-3",
    "teacher.optim.warmup_steps=20",
    "teacher.trainer.max_steps=300",
]


@pytest.fixture(scope="session")
def trained_teacher(tmp_path_factory):
    """(config, metrics, run directory) of one 300-step MAF run on moons, W&B offline."""
    root = tmp_path_factory.mktemp("teacher")
    env = pytest.MonkeyPatch()
    for name in ("WANDB_DIR", "WANDB_CACHE_DIR", "WANDB_CONFIG_DIR", "WANDB_DATA_DIR"):
        (root / name.lower()).mkdir()
        env.setenv(name, str(root / name.lower()))
    env.setenv("WANDB_SILENT", "true")
    GlobalHydra.instance().clear()
    with initialize_config_module("distill.conf", version_base="1.3"):
        cfg = compose("teacher", [*SMALL_MOONS, f"paths.output_dir={root / 'run'}"])
    GlobalHydra.instance().clear()
    metrics = run_teacher(cfg)
    yield cfg, metrics, root / "run"
    env.undo()
