"""Every config composes with Hydra's compose API and instantiates."""

import pytest
from hydra.utils import instantiate

from distill.cli.teacher import build_datamodule
from distill.data import DATASETS
from distill.models import TeacherModule
from distill.spec import plain

DATA = [name for name in DATASETS if name != "file"]
FLOWS = ["maf", "maf_bn", "maf_fixed_order", "realnvp", "realnvp_bn", "nice", "nice_bn", "iaf"]


@pytest.mark.parametrize("data", DATA)
def test_every_data_config_composes_and_builds(compose_config, data):
    cfg = compose_config("teacher", [f"data={data}"])
    if "num_train" in cfg.data:
        cfg.data.num_train = 600
    datamodule = build_datamodule(cfg)
    assert datamodule.train_data.shape[1] == datamodule.features


@pytest.mark.parametrize("flow", FLOWS)
@pytest.mark.parametrize("features", [2, 64])
def test_every_flow_config_instantiates(compose_config, flow, features):
    cfg = compose_config("teacher", [f"flow={flow}"])
    module = TeacherModule(flow={**plain(cfg.flow), "features": features}, optim=cfg.optim)
    assert module.features == features


@pytest.mark.parametrize("config", ["teacher", "student", "distill"])
@pytest.mark.parametrize("trainer", ["cpu", "gpu", "ddp"])
@pytest.mark.parametrize("logger", ["wandb", "csv", "tensorboard", "none"])
def test_entry_point_configs_compose(compose_config, config, trainer, logger):
    overrides = [f"trainer={trainer}", f"logger={logger}"]
    if config == "student":
        overrides.append("teacher.ckpt=/nonexistent.ckpt")
    cfg = compose_config(config, overrides)
    assert cfg.trainer.default_root_dir == cfg.paths.output_dir
    callbacks = [instantiate(spec) for spec in cfg.callbacks.values()]
    assert any(type(c).__name__ == "ModelCheckpoint" for c in callbacks)


@pytest.mark.parametrize(
    "loss", ["reverse_kl", "reverse_kl_closed_form", "forward_kl", "regression", "mixed"]
)
def test_loss_configs_build_objectives(compose_config, loss):
    from distill.losses import DistillationObjective

    cfg = compose_config("student", [f"loss={loss}", "teacher.ckpt=x"])
    assert DistillationObjective(**plain(cfg.loss)).terms


def test_unknown_group_value_names_the_allowed_values(compose_config):
    from hydra.errors import MissingConfigException

    with pytest.raises(MissingConfigException, match="Available options"):
        compose_config("teacher", ["data=nonexistent"])


def test_bad_flow_value_is_a_short_error_naming_the_key(compose_config):
    cfg = compose_config("teacher", ["flow.hidden_features=[-4,8]"])
    with pytest.raises(
        ValueError, match=r"invalid config `flow` .*hidden_features must be positive"
    ):
        TeacherModule(flow={**plain(cfg.flow), "features": 2})


@pytest.mark.parametrize(
    "experiment", ["moons", "siggraph", "8gaussians", "checkerboard", "digits"]
)
def test_experiment_configs_compose_and_build(compose_config, experiment):
    cfg = compose_config("teacher", [f"experiment={experiment}"])
    assert cfg.data.name == experiment
    module = TeacherModule(flow={**plain(cfg.flow), "features": 2}, optim=cfg.optim)
    assert module.model_flow.features == 2
