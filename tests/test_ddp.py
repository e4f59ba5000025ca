"""Multi-process training on CPU (gloo): the teacher with synchronized BatchNorm statistics,
and the student's noise, which must differ between ranks.

Uses ``ddp_fork`` (plain ``ddp`` re-executes the command line, i.e. pytest itself)."""

import json
import os
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
