"""The teacher end to end: training quality, run directory contents, the offline W&B run
read back from disk, resuming, checkpoint reloading, and non-finite training."""

import json
import math
import subprocess
import sys
import time
from pathlib import Path

import lightning as L
import pytest
import torch

from distill.cli.teacher import run as run_teacher
from distill.models import TeacherModule
from distill.models.base import NonFiniteTrainingError
from distill.spec import plain
from distill.stages import build_datamodule
from tests.models.conftest import SMALL_MOONS


def gaussian_nll(train: torch.Tensor, test: torch.Tensor) -> float:
    """Held-out NLL of the maximum-likelihood Gaussian fitted to ``train``."""
    mean, covariance = train.double().mean(0), torch.cov(train.double().T)
    gaussian = torch.distributions.MultivariateNormal(mean, covariance)
    return -gaussian.log_prob(test.double()).mean().item()


class StepProbe(L.Callback):
    """Records the global step at which fitting starts (for the resume test)."""

    start_steps: list[int] = []

    def on_train_start(self, trainer, module):
        StepProbe.start_steps.append(trainer.global_step)


def read_wandb_summary(run_dir: Path, timeout: float = 60.0) -> dict:
    """W&B's own offline reader; polls until the run's file records that it finished
    (wandb.finish() may return before the file is complete)."""
    wandb = Path(sys.executable).parent / "wandb"
    deadline = time.monotonic() + timeout
    while True:
        result = subprocess.run(
            [str(wandb), "leet", "inspect", "--summary", "--json", str(run_dir)],
            capture_output=True,
            text=True,
        )
        if result.returncode == 0:
            summary = json.loads(result.stdout)
            if summary.get("state") == "finished":
                return summary
        if time.monotonic() > deadline:
            raise AssertionError(f"W&B run {run_dir} never finished: {result.stdout[-500:]}")
        time.sleep(0.5)


def test_short_training_beats_a_gaussian_clearly(trained_teacher):
    cfg, metrics, _ = trained_teacher
    datamodule = build_datamodule(plain(cfg.data))
    baseline = gaussian_nll(datamodule.train_data, datamodule.test_data)
    # Measured: Gaussian ~1.98 nats, this 300-step MAF ~0.7-0.9 nats (entropy 0.289).
    assert metrics["teacher/test_nll"] < baseline - 0.5
    assert metrics["data/entropy"] == pytest.approx(0.289, abs=0.01)
    assert metrics["teacher/excess_nll"] == pytest.approx(
        metrics["teacher/test_nll"] - metrics["data/entropy"]
    )


def test_run_directory_holds_everything(trained_teacher):
    _, metrics, run = trained_teacher
    on_disk = json.loads((run / "metrics.json").read_text())
    assert on_disk["teacher/test_nll"] == pytest.approx(metrics["teacher/test_nll"])
    assert {"teacher/test_nll", "data/entropy", "teacher/excess_nll"} <= set(on_disk)
    assert (run / "checkpoints" / "best.ckpt").is_file() and (
        run / "checkpoints" / "last.ckpt"
    ).is_file()
    assert (run / "plots" / "samples.png").is_file() and (run / "plots" / "densities.png").is_file()
    report = (run / "report.md").read_text()
    assert report.startswith("# distill report") and "plots/samples.png" in report
    assert not Path("lightning_logs").exists() or Path("lightning_logs").resolve().is_relative_to(
        run
    )


def test_offline_wandb_run_contains_metrics_and_images(trained_teacher):
    _, metrics, run = trained_teacher
    run_dirs = list((run / "wandb").glob("offline-run-*"))
    assert len(run_dirs) == 1
    summary = read_wandb_summary(run_dirs[0])["summary"]
    assert summary["teacher/test_nll"] == pytest.approx(metrics["teacher/test_nll"])
    assert "train/nll" in summary and "val/nll" in summary
    images = [v for k, v in summary.items() if k.startswith("plots/")]
    assert images, "no image logged"
    for image in images:
        for filename in image["filenames"]:
            assert (run_dirs[0] / "files" / filename).is_file()


def test_best_checkpoint_alone_reproduces_the_test_nll(trained_teacher):
    cfg, metrics, run = trained_teacher
    # weights_only loading (torch's default) must work: hyper-parameters are plain values
    checkpoint = torch.load(run / "checkpoints" / "best.ckpt", weights_only=True)
    assert checkpoint["hyper_parameters"]["flow"]["_target_"] == "distill.flows.build_maf"
    teacher = TeacherModule.load_from_checkpoint(run / "checkpoints" / "best.ckpt").eval()
    test_data = build_datamodule(plain(cfg.data)).test_data
    with torch.no_grad():
        nll = -teacher(test_data).mean().item()
    assert nll == pytest.approx(metrics["teacher/test_nll"], abs=1e-4)


def test_resume_continues_at_the_saved_global_step(trained_teacher, compose_config, wandb_env):
    _, _, run = trained_teacher
    last = run / "checkpoints" / "last.ckpt"
    saved_step = torch.load(last, weights_only=True)["global_step"]
    StepProbe.start_steps.clear()
    cfg = compose_config(
        "teacher",
        [
            *SMALL_MOONS,
            "teacher.trainer.max_steps=340",
            "logger=csv",
            f"teacher.resume={last}",
            "+teacher.callbacks.probe._target_=tests.models.test_teacher.StepProbe",
        ],
    )
    metrics = run_teacher(cfg)
    assert StepProbe.start_steps == [saved_step] and saved_step == 300
    assert metrics["teacher/global_step"] == 340


def test_non_finite_training_stops_with_a_usable_checkpoint(
    compose_config, wandb_env, monkeypatch, tmp_path
):
    original = TeacherModule.training_step

    def poisoned(self, batch, batch_idx):
        loss = original(self, batch, batch_idx)
        return loss * math.nan if self.global_step == 7 else loss

    monkeypatch.setattr(TeacherModule, "training_step", poisoned)
    cfg = compose_config("teacher", [*SMALL_MOONS, "logger=none"])
    with pytest.raises(
        NonFiniteTrainingError,
        match="non-finite at global step 7.*rescue.ckpt .last.ckpt is unchanged",
    ):
        run_teacher(cfg)
    checkpoints = Path(cfg.paths.output_dir) / "checkpoints"
    assert not (checkpoints / "last.ckpt").exists()  # no epoch ended: nothing was overwritten
    checkpoint = torch.load(checkpoints / "rescue.ckpt", weights_only=True)
    assert checkpoint["global_step"] == 7
    assert all(
        torch.isfinite(v).all() for v in checkpoint["state_dict"].values() if v.is_floating_point()
    )
    teacher = TeacherModule.load_from_checkpoint(checkpoints / "rescue.ckpt")
    assert torch.isfinite(teacher(torch.randn(10, 2))).all()


def test_multirun_sweep_writes_one_run_directory_per_job(tmp_path):
    executable = Path(sys.executable).parent / "distill-teacher"
    result = subprocess.run(
        [
            str(executable),
            "-m",
            "data=moons",
            "flow@teacher.flow=maf,realnvp",
            "data.num_train=1024",
            "data.num_val=256",
            "data.num_test=256",
            "teacher.flow.num_layers=2",
            "teacher.flow.hidden_features=[16,16]",
            "teacher.trainer.max_steps=5",
            "logger=csv",
            f"hydra.sweep.dir={tmp_path / 'sweep'}",
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    runs = sorted((tmp_path / "sweep").glob("*/metrics.json"))
    assert len(runs) == 2
    assert {json.loads(p.read_text())["teacher/global_step"] for p in runs} == {5}
