"""Multi-process training on CPU (gloo): every logger under every recommended strategy, the
teacher with synchronized BatchNorm statistics equal to one process with the doubled batch, and
the random numbers (student noise, dequantization noise), which must differ between ranks.

In-process tests use ``ddp_fork`` (plain ``ddp`` re-executes the command line, i.e. pytest
itself); plain ``ddp`` and the logger matrix run the real CLI in a subprocess."""

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import torch

from distill.cli.student import run as run_student
from distill.cli.teacher import run as run_teacher

DATA = [
    "logger=none",
    "data=moons",
    "data.num_train=2048",
    "data.num_val=512",
    "data.num_test=512",
    "data.batch_size=128",
]


def ddp(stage: str) -> list[str]:
    """Overrides for a 2-rank ``ddp_fork`` run of ``stage`` on CPU."""
    return [
        f"trainer@{stage}.trainer=ddp",
        f"{stage}.trainer.strategy=ddp_fork",
        f"{stage}.trainer.accelerator=cpu",
        f"{stage}.trainer.devices=2",
        *DATA,
    ]


@pytest.fixture(autouse=True)
def restore_environment():
    """DDP leaves LOCAL_RANK and friends in os.environ; later Trainers would think they are
    workers."""
    saved = dict(os.environ)
    yield
    os.environ.clear()
    os.environ.update(saved)


class NoiseProbe(L.Callback):
    """Each rank writes the first standard-normal draws it makes after the module's
    on_fit_start (where the student offsets its seed by rank)."""

    def __init__(self, dirpath: str):
        self.dirpath = Path(dirpath)

    def on_train_start(self, trainer, module):
        torch.save(torch.randn(4), self.dirpath / f"noise_rank{trainer.global_rank}.pt")


def test_teacher_with_batch_norm_trains_under_ddp(compose_config, tmp_path):
    cfg = compose_config(
        "teacher",
        [
            *ddp("teacher"),
            "flow@teacher.flow=maf_bn",
            "teacher.flow.hidden_features=[32,32]",
            "teacher.trainer.max_steps=12",
        ],
    )
    metrics = run_teacher(cfg)
    assert metrics["teacher/global_step"] == 12
    assert torch.isfinite(torch.tensor(metrics["teacher/test_nll"]))
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["teacher/global_step"] == 12


def test_student_ranks_draw_different_noise(compose_config, tmp_path):
    teacher_cfg = compose_config(
        "teacher",
        [
            *DATA,
            "teacher.trainer.max_steps=10",
            "teacher.flow.num_layers=2",
            "teacher.flow.hidden_features=[16,16]",
        ],
        output_dir=tmp_path / "teacher",
    )
    teacher = run_teacher(teacher_cfg)
    probe = tmp_path / "probe"
    probe.mkdir()
    cfg = compose_config(
        "student",
        [
            *ddp("student"),
            f"teacher.ckpt={teacher['teacher/checkpoint']}",
            "student.flow.hidden_features=[16,16]",
            "student.trainer.max_steps=4",
            "student.evaluation.num_kl_samples=1000",
            "student.evaluation.num_timing_samples=10",
            "+student.callbacks.probe._target_=tests.test_ddp.NoiseProbe",
            f"+student.callbacks.probe.dirpath={probe}",
        ],
        output_dir=tmp_path / "student",
    )
    metrics = run_student(cfg)
    assert metrics["student/global_step"] == 4
    first, second = (torch.load(probe / f"noise_rank{r}.pt") for r in (0, 1))
    assert not torch.equal(first, second)


def run_cli(command: str, *overrides: str, cwd: Path, timeout: float = 240):
    """A CLI run in its own process: a hang fails the test by its timeout instead of blocking."""
    executable = Path(sys.executable).parent / command
    return subprocess.run(
        [str(executable), *overrides], capture_output=True, text=True, cwd=cwd, timeout=timeout
    )


def cli_ddp(stage: str, strategy: str) -> list[str]:
    return [
        f"trainer@{stage}.trainer=ddp",
        f"{stage}.trainer.strategy={strategy}",
        f"{stage}.trainer.accelerator=cpu",
        f"{stage}.trainer.devices=2",
        f"{stage}.trainer.log_every_n_steps=2",
        f"{stage}.flow.num_layers=2",
        f"{stage}.flow.hidden_features=[16,16]",
        *DATA[1:],
    ]


def read_curves(run: Path, logger: str) -> dict[str, list[float]]:
    """The training curves a logger wrote, read back from its files: key -> values."""
    if logger == "csv":
        (path,) = run.glob("csv/version_*/metrics.csv")
        rows = list(csv.DictReader(path.open()))
        return {key: [float(r[key]) for r in rows if r[key]] for key in rows[0]}
    if logger == "tensorboard":
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

        curves: dict[str, list[float]] = {}
        for events in run.glob("tensorboard/version_*/events.out.tfevents.*"):
            accumulator = EventAccumulator(str(events))
            accumulator.Reload()
            for tag in accumulator.Tags()["scalars"]:
                curves.setdefault(tag, []).extend(e.value for e in accumulator.Scalars(tag))
        return curves
    records = inspect_wandb_run(run, "--json").splitlines()
    curves = {}
    for line in records:
        record = json.loads(line) if line.startswith("{") else {}
        for key, value in record.get("history", {}).get("item", {}).items():
            curves.setdefault(key, []).append(value)
    return curves


def inspect_wandb_run(run: Path, *options: str) -> str:
    """What W&B's own offline reader (`wandb leet inspect`) prints about the one W&B run
    under ``run``."""
    (run_dir,) = run.glob("wandb/offline-run-*")  # one run: only rank 0 logs
    wandb = Path(sys.executable).parent / "wandb"
    result = subprocess.run(
        [str(wandb), "leet", "inspect", *options, str(run_dir)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


def check_wandb_summary(run: Path, metrics: dict) -> None:
    """The W&B run finished with the stage's final metrics in its summary, and the figures it
    names are in its own folder."""
    summary = json.loads(inspect_wandb_run(run, "--summary", "--json"))
    assert summary["state"] == "finished" and summary["exit_code"] == 0
    values = summary["summary"]
    assert values["teacher/global_step"] == metrics["teacher/global_step"]
    assert values["teacher/test_nll"] == pytest.approx(metrics["teacher/test_nll"], rel=1e-6)
    (run_dir,) = run.glob("wandb/offline-run-*")
    figures = [
        name
        for value in values.values()
        if isinstance(value, dict)
        for name in value.get("filenames", ())
    ]
    assert len(figures) == 2 and all((run_dir / "files" / name).is_file() for name in figures)


# Every logger under every strategy: one run per strategy logs to all three loggers at once
# (each of them first, i.e. Lightning's `trainer.logger`, under one strategy), one to none.
# (One run per logger and strategy launched 12 CLIs, ddp_spawn's and ddp's each importing
# torch and Lightning again in their new processes.)
LOGGER_CASES = [
    ("ddp_fork", "csv,tensorboard,wandb"),
    ("ddp_fork", "none"),
    ("ddp_spawn", "wandb,csv,tensorboard"),
    ("ddp_spawn", "none"),
    ("ddp", "tensorboard,wandb,csv"),
    ("ddp", "none"),
]


@pytest.mark.slow
@pytest.mark.parametrize(("strategy", "loggers"), LOGGER_CASES)
def test_every_logger_keeps_its_curves_under_ddp(tmp_path, wandb_env, strategy, loggers):
    run = tmp_path / "run"
    chosen = "none" if loggers == "none" else f"[{loggers}]"
    overrides = [*cli_ddp("teacher", strategy), "teacher.trainer.max_steps=12", f"logger={chosen}"]
    result = run_cli("distill-teacher", *overrides, f"hydra.run.dir={run}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["teacher/global_step"] == 12
    assert len(list(run.glob("checkpoints/*.ckpt"))) == 2  # best and last, once
    assert len(list(run.glob("plots/*.png"))) == 2
    for logger in [] if loggers == "none" else loggers.split(","):
        curves = read_curves(run, logger)
        assert len(curves["train/nll"]) >= 3, (logger, sorted(curves))
        assert curves["val/nll"], (logger, sorted(curves))
        if logger == "tensorboard":  # the HParams tab's metric is the stage's objective
            assert pytest.approx(metrics["teacher/test_nll"], rel=1e-6) in curves["hp_metric"]
        if logger == "wandb":
            check_wandb_summary(run, metrics)
    assert not (tmp_path / "wandb").exists()  # nothing in the launch directory


@pytest.mark.slow
def test_the_student_logs_under_ddp(tmp_path, trained_moons_teacher):
    run = tmp_path / "run"
    result = run_cli(
        "distill-student",
        *cli_ddp("student", "ddp_fork"),
        f"teacher.ckpt={trained_moons_teacher}",
        "student.trainer.max_steps=6",
        "student.evaluation.num_kl_samples=500",
        "student.evaluation.num_timing_samples=10",
        "logger=csv",
        f"hydra.run.dir={run}",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert len(read_curves(run, "csv")["train/loss"]) >= 2


@pytest.fixture
def trained_moons_teacher(compose_config, tmp_path):
    cfg = compose_config(
        "teacher",
        [
            *DATA,
            "teacher.trainer.max_steps=10",
            "teacher.flow.num_layers=2",
            "teacher.flow.hidden_features=[16,16]",
        ],
        output_dir=tmp_path / "teacher",
    )
    return run_teacher(cfg)["teacher/checkpoint"]


def test_two_ranks_match_one_process_with_the_doubled_batch(compose_config, tmp_path):
    """Full-batch steps (each rank's half of 128 rows vs all 128 rows at once) with BatchNorm:
    the same gradients, so the same parameters after 5 Adam steps. In float64: Adam divides
    by the gradient's own scale, so float32 round-off in a near-zero gradient would move a
    weight by up to the learning rate; in float64 the runs agree to 1e-9."""
    common = [
        "logger=none",
        "data=moons",
        "data.num_train=128",
        "data.num_val=64",
        "data.num_test=64",
        "flow@teacher.flow=maf_bn",
        "teacher.flow.hidden_features=[16,16]",
        "teacher.trainer.max_steps=5",
        "teacher.optim.warmup_steps=0",
        "+teacher.trainer.precision=64-true",
    ]
    states = []
    for name, overrides in (
        ("two_ranks", [*ddp("teacher")[:4], "data.batch_size=64"]),
        ("one_process", ["data.batch_size=128"]),
    ):
        cfg = compose_config("teacher", [*common, *overrides], output_dir=tmp_path / name)
        run_teacher(cfg)
        checkpoint = torch.load(tmp_path / name / "checkpoints" / "last.ckpt", weights_only=True)
        assert checkpoint["global_step"] == 5
        states.append(checkpoint["state_dict"])
    for key, value in states[1].items():
        assert value.dtype == torch.float64 or not value.is_floating_point()
        torch.testing.assert_close(states[0][key], value, atol=1e-9, rtol=1e-9, msg=key)


class DequantizationProbe(L.Callback):
    """Each rank writes the dequantization noise of its first training batch."""

    def __init__(self, dirpath: str):
        self.dirpath = Path(dirpath)

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        if trainer.global_step == 0:
            noise = batch - batch.floor()
            torch.save(noise, self.dirpath / f"noise_rank{trainer.global_rank}.pt")


def test_each_rank_draws_its_own_dequantization_noise(compose_config, tmp_path):
    probe = tmp_path / "probe"
    probe.mkdir()
    cfg = compose_config(
        "teacher",
        [
            *ddp("teacher")[:4],
            "logger=none",
            "data=digits",
            "data.batch_size=64",
            "teacher.flow.hidden_features=[16,16]",
            "teacher.flow.num_layers=2",
            "teacher.trainer.max_steps=2",
            "+teacher.callbacks.probe._target_=tests.test_ddp.DequantizationProbe",
            f"+teacher.callbacks.probe.dirpath={probe}",
        ],
    )
    run_teacher(cfg)
    first, second = (torch.load(probe / f"noise_rank{r}.pt") for r in (0, 1))
    assert not torch.allclose(first, second)


def test_a_run_that_cannot_make_a_step_is_an_error(compose_config):
    cfg = compose_config(
        "teacher", [*ddp("teacher")[:4], *DATA, "data.num_train=200", "data.batch_size=128"]
    )
    with pytest.raises(ValueError, match="trained 0 steps: no rank got a full batch"):
        run_teacher(cfg)
