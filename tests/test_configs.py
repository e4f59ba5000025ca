"""Every config composes with Hydra's compose API and instantiates; every experiment runs
through every entry point; nothing edits a composed config."""

import json
import os
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from distill.cli.pipeline import run as run_pipeline
from distill.data import DATASETS
from distill.models import TeacherModule
from distill.spec import plain
from distill.stages import build_datamodule
from distill.training import build_trainer

DATA = [name for name in DATASETS if name not in ("file", "waveform")]  # these need a path
FLOWS = sorted(p.stem for p in Path("distill/conf/flow").glob("*.yaml"))
EXPERIMENTS = sorted(p.stem for p in Path("distill/conf/experiment").glob("*.yaml"))


def test_the_config_groups_are_found():
    assert {"maf", "iaf", "realnvp", "nice", "maf_spline", "iaf_spline"} <= set(FLOWS)
    assert {"moons", "siggraph", "digits"} <= set(EXPERIMENTS)


@pytest.mark.parametrize("data", DATA)
def test_every_data_config_composes_and_builds(compose_config, data):
    cfg = compose_config("teacher", [f"data={data}"])
    spec = plain(cfg.data)
    if "num_train" in spec:
        spec["num_train"] = 600
    datamodule = build_datamodule(spec)
    event_shape = getattr(datamodule, "event_shape", None) or (datamodule.features,)
    assert datamodule.train_data.shape[1:] == event_shape


def flow_shape(flow_config, features: int) -> dict:
    """The data-shape arguments of a flow config's builder: vector flows take the dimension,
    WaveNet flows over sequences take channels and a length."""
    if "wavenet" in flow_config["_target_"]:
        return {"channels": 1, "length": 16}
    return {"features": features}


@pytest.mark.parametrize("flow", FLOWS)
@pytest.mark.parametrize("features", [2, 64])
def test_every_flow_config_instantiates_for_either_stage(compose_config, flow, features):
    cfg = compose_config("distill", [f"flow@teacher.flow={flow}", f"flow@student.flow={flow}"])
    assert cfg.teacher.flow == cfg.student.flow
    shape = flow_shape(cfg.teacher.flow, features)
    module = TeacherModule(flow={**plain(cfg.teacher.flow), **shape})
    assert module.features == shape.get("features")


@pytest.mark.parametrize("config", ["teacher", "student", "distill"])
@pytest.mark.parametrize("trainer", ["cpu", "gpu", "ddp"])
@pytest.mark.parametrize("logger", ["wandb", "csv", "tensorboard", "none"])
def test_entry_point_configs_compose(compose_config, tmp_path, config, trainer, logger):
    overrides = [f"trainer@teacher.trainer={trainer}", f"trainer@student.trainer={trainer}"]
    overrides.append(f"logger={logger}")
    if config == "student":
        overrides.append("teacher.ckpt=/nonexistent.ckpt")
    cfg = compose_config(config, overrides)
    assert {"teacher", "student"} <= set(cfg)
    if trainer == "cpu":
        built = build_trainer(cfg.student, [], tmp_path / "stage")
        assert built.default_root_dir == str(tmp_path / "stage")
        assert built.checkpoint_callback.dirpath == str(tmp_path / "stage" / "checkpoints")


def test_a_directory_set_in_the_config_is_used(compose_config, tmp_path):
    cfg = compose_config(
        "teacher", [f"teacher.callbacks.model_checkpoint.dirpath={tmp_path / 'mine'}"]
    )
    built = build_trainer(cfg.teacher, [], tmp_path / "stage")
    assert built.checkpoint_callback.dirpath == str(tmp_path / "mine")


def test_stages_read_their_own_nodes(compose_config):
    defaults = compose_config("distill")
    cfg = compose_config(
        "distill",
        ["teacher.optim.lr=0.5", "student.trainer.max_steps=7", "optim@teacher.optim=adamw"],
    )
    assert cfg.teacher.optim.lr == 0.5 and cfg.student.optim == defaults.student.optim
    assert cfg.student.trainer.max_steps == 7
    assert cfg.teacher.trainer.max_steps == defaults.teacher.trainer.max_steps
    assert cfg.teacher.optim.name == "adamw"


def test_a_key_that_does_not_exist_is_refused(compose_config):
    from hydra.errors import ConfigCompositionException

    with pytest.raises(ConfigCompositionException, match="stages"):
        compose_config("distill", ["stages.teacher.max_steps=10"])


@pytest.mark.parametrize(
    "loss",
    sorted(p.stem for p in Path("distill/conf/loss").glob("*.yaml")),
)
def test_loss_configs_build_objectives(compose_config, loss):
    from distill.losses import DistillationObjective

    cfg = compose_config("student", [f"loss@student.loss={loss}", "teacher.ckpt=x"])
    assert DistillationObjective(**plain(cfg.student.loss)).terms


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["loss@student.loss=clarinet", "teacher.flow.transform=spline"], "an affine MAF"),
        (["loss@student.loss=clarinet", "student.flow.transform=spline"], "an affine IAF"),
        (["student.evaluation.timing_rounds=null"], "needs student.evaluation.timing_rounds"),
        (["student.evaluation.timing_seconds=-1"], "timing_seconds=-1"),
        (["student.evaluation.num_timing_samples=100"], "num_timing_samples=null"),
    ],
)
def test_sequence_configs_are_checked_before_training(compose_config, overrides, message):
    from distill.checks import ConfigError, validate

    cfg = compose_config("distill", ["experiment=notes", *overrides])
    with pytest.raises(ConfigError, match=message):
        validate(cfg, ("teacher", "student"))


def test_sequence_evaluation_keys_are_refused_for_vector_students(compose_config):
    from distill.checks import ConfigError, validate

    cfg = compose_config("distill", ["+student.evaluation.timing_seconds=1.0"])
    with pytest.raises(ConfigError, match="read only for WaveNet students"):
        validate(cfg, ("teacher", "student"))


def test_unknown_group_value_names_the_allowed_values(compose_config):
    from hydra.errors import MissingConfigException

    with pytest.raises(MissingConfigException, match="Available options"):
        compose_config("teacher", ["data=nonexistent"])


def test_bad_flow_value_is_a_short_error_naming_the_key(compose_config):
    cfg = compose_config("teacher", ["teacher.flow.hidden_features=[-4,8]"])
    with pytest.raises(ValueError, match=r"`teacher.flow`.*hidden_features must be positive"):
        TeacherModule(flow={**plain(cfg.teacher.flow), "features": 2})


@pytest.mark.parametrize("experiment", EXPERIMENTS)
@pytest.mark.parametrize("config", ["teacher", "student", "distill"])
def test_experiment_configs_compose_for_every_entry_point(compose_config, experiment, config):
    overrides = [f"experiment={experiment}"]
    if config == "student":
        overrides.append("teacher.ckpt=x")
    cfg = compose_config(config, overrides)
    assert cfg.data.name == experiment
    shape = flow_shape(cfg.teacher.flow, 2)
    module = TeacherModule(flow={**plain(cfg.teacher.flow), **shape})
    assert module.flow.features == shape.get("features")


TINY = [
    "teacher.trainer.max_steps=3",
    "teacher.trainer.check_val_every_n_epoch=1",
    "student.trainer.max_steps=2",
    "student.evaluation.num_kl_samples=200",
    "student.evaluation.num_timing_samples=8",
    "logger=none",
]
# The experiments' own flows are built at full size above (every entry point); running them
# through distill checks the pipeline, not the flows: small ones (the density figures of an
# 8-layer spline MAF of 128x128 on SIGGRAPH's grid took most of a run).
SMALL_FLOWS = [
    f"{stage}.flow.{key}={value}"
    for stage in ("teacher", "student")
    for key, value in (("num_layers", 2), ("hidden_features", "[16,16]"))
]
SMALL_WAVENET = ["teacher.flow.residual_channels=16", "teacher.flow.skip_channels=16"]


@pytest.mark.slow
@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_experiment_runs_through_distill(compose_config, tmp_path, experiment):
    overrides = [f"experiment={experiment}", *TINY]
    if experiment == "notes":  # sequences are timed on seconds of audio, not N samples
        overrides.remove("student.evaluation.num_timing_samples=8")
    if experiment == "digits":  # early stopping needs a validation: one epoch is 9 steps
        overrides.append("teacher.trainer.max_steps=10")
    elif experiment == "notes":  # sequences: small splits, short timing
        overrides += [
            "data.num_train=64",
            "data.num_val=16",
            "data.num_test=16",
            "student.evaluation.num_kl_samples=8",
            "student.evaluation.num_nll_sequences=4",
            "student.evaluation.timing_seconds=0.01",
            *SMALL_WAVENET,
        ]
    else:
        overrides += ["data.num_train=600", "data.num_val=100", "data.num_test=100"]
    if experiment != "notes":
        overrides += SMALL_FLOWS
    cfg = compose_config("distill", overrides)
    composed = OmegaConf.to_yaml(cfg)
    metrics = run_pipeline(cfg)
    assert OmegaConf.to_yaml(cfg) == composed  # nothing edited the composed config
    assert metrics["student/global_step"] == 2
    assert metrics["teacher/global_step"] == cfg.teacher.trainer.max_steps
    on_disk = json.loads((tmp_path / "run" / "metrics.json").read_text())
    kl = cfg.optimized_metric  # student/kl_trimmed_mean, per step for sequences
    assert on_disk[kl] == pytest.approx(metrics[kl])


def test_evaluation_threads_are_set_for_the_block_and_restored():
    import torch

    from distill.threads import cpu_threads

    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        with cpu_threads("all"):
            assert torch.get_num_threads() == len(os.sched_getaffinity(0))
        assert torch.get_num_threads() == 1
        with cpu_threads(None):  # the run's own
            assert torch.get_num_threads() == 1
        with pytest.raises(ValueError, match="student.evaluation.cpu_threads=0 is not valid"):
            with cpu_threads(0, "student.evaluation.cpu_threads"):
                pass
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("value", ["0", "auto", "abc"])
def test_a_bad_evaluation_thread_count_is_refused_by_name(compose_config, value):
    from distill.checks import ConfigError, validate

    cfg = compose_config("distill", [f"student.evaluation.cpu_threads={value}"])
    with pytest.raises(ConfigError, match="student.evaluation.cpu_threads=.* is not valid"):
        validate(cfg, ("teacher", "student"))


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        (
            ["loss@student.loss=forward_kl_bank", "student.loss.teacher_bank=8"],
            "student.loss.teacher_bank=8 is smaller than loss.num_samples",
        ),
        (["+student.loss.draws_per_step=8"], "student.loss.draws_per_step=8 is only read by"),
        (
            ["experiment=notes", "student.loss.draws_per_step=0"],
            "student.loss.draws_per_step must be >= 1, got 0",
        ),
        (["+student.loss.bogus=1"], "student.loss has a key the objective does not read"),
        (["+student.loss.terms.power=1"], "terms.power compares power spectra of sequences"),
        (
            ["experiment=notes", "data.conditioning=none"],
            "shape_power pairs each sample with the data row of its context",
        ),
        (
            ["+student.loss.schedule={reverse_kl: [[0.5, 0.0], [0.5, 1.0]]}"],
            "progress increasing",
        ),
    ],
)
def test_objective_settings_are_refused_before_the_teacher_trains(compose_config, overrides, match):
    from distill.checks import ConfigError, validate

    cfg = compose_config("distill", overrides)
    with pytest.raises(ConfigError, match=match):
        validate(cfg, ("teacher", "student"))


@pytest.mark.parametrize("value", ["0", "2.5", "abc"])
def test_a_bad_teacher_reuse_is_refused_by_name(compose_config, value):
    from distill.checks import ConfigError, validate

    cfg = compose_config("distill", [f"student.loss.teacher_reuse={value}"])
    with pytest.raises(ConfigError, match=rf"student.loss.teacher_reuse=.*{value}.* is not valid"):
        validate(cfg, ("teacher", "student"))


def test_cpu_threads_is_one_unless_the_environment_or_the_user_says_otherwise(monkeypatch):
    import torch

    from distill.cli.common import set_cpu_threads

    before = torch.get_num_threads()
    try:
        monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
        torch.set_num_threads(2)
        set_cpu_threads("auto")
        assert torch.get_num_threads() == 1
        monkeypatch.setenv("OMP_NUM_THREADS", "2")
        torch.set_num_threads(2)
        set_cpu_threads("auto")  # the environment's value stands
        assert torch.get_num_threads() == 2
        set_cpu_threads(1)
        assert torch.get_num_threads() == 1
        set_cpu_threads("all")  # every core this process may use, whatever the environment
        assert torch.get_num_threads() == len(os.sched_getaffinity(0))
        for bad in (0, "abc", 1.5, True):
            with pytest.raises(ValueError, match="cpu_threads=.* is not valid: it must be auto"):
                set_cpu_threads(bad)
    finally:
        torch.set_num_threads(before)


def test_a_student_run_does_not_warn_about_its_frozen_teacher(compose_config, recwarn):
    """The student's teacher is in eval mode by design: Lightning's warning about modules in
    eval mode would be noise on every run, so the student stage silences that one message."""
    overrides = ["data=moons", *TINY, "data.num_train=600", "data.num_val=100", *SMALL_FLOWS]
    run_pipeline(compose_config("distill", overrides + ["data.num_test=100"]))
    messages = [str(w.message) for w in recwarn]
    assert not [m for m in messages if "in eval mode at the start of training" in m]


@pytest.mark.parametrize(
    ("config", "stages", "metric"),
    [
        ("teacher", ("teacher",), "student/kl_trimmed_mean"),
        ("distill", ("teacher", "student"), "kl"),
    ],
)
def test_an_optimized_metric_the_command_cannot_report_is_refused_before_training(
    compose_config, config, stages, metric
):
    from distill.checks import ConfigError, validate

    validate(compose_config(config, []), stages)  # the shipped values pass
    with pytest.raises(ConfigError, match=rf"optimized_metric={metric} is not a metric"):
        validate(compose_config(config, [f"optimized_metric={metric}"]), stages)
