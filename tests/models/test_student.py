"""The student end to end: distillation quality on moons, the frozen teacher, the run
directory and report, and clear errors for checkpoints that do not fit."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from distill.cli.student import run as run_student
from distill.models import StudentModule, TeacherModule
from distill.stages import load_teacher

STUDENT = [
    "student.optim.warmup_steps=20",
    "student.trainer.max_steps=600",
    "student.evaluation.num_kl_samples=20000",
    "student.evaluation.num_timing_samples=500",
    "data.num_train=4096",
    "data.num_val=256",  # one batch a validation (4 took a sixth of the training time)
    "data.num_test=2000",
    "data.batch_size=256",
]


@pytest.fixture(scope="module")
def distilled(trained_teacher, tmp_path_factory):
    from hydra import compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    _, teacher_metrics, teacher_run = trained_teacher
    root = tmp_path_factory.mktemp("student")
    ckpt = teacher_run / "checkpoints" / "best.ckpt"
    GlobalHydra.instance().clear()
    with initialize_config_module("distill.conf", version_base="1.3"):
        cfg = compose(
            "student",
            [
                *STUDENT,
                "data=moons",
                "logger=csv",
                f"teacher.ckpt={ckpt}",
                f"paths.output_dir={root}",
            ],
        )
    GlobalHydra.instance().clear()
    before = {k: v.clone() for k, v in load_teacher(ckpt).flow.state_dict().items()}
    metrics = run_student(cfg)
    return metrics, teacher_metrics, root, before


def test_short_distillation_on_moons_meets_kl_and_coverage(distilled):
    metrics, _, _, _ = distilled
    # Measured with this 300-step spline teacher and a 600-step student of the defaults (a 2-layer
    # spline IAF from scratch, init=identity, forward KL): trimmed KL 0.025 nats, coverage loss 0,
    # NLL 0.377 vs the teacher's 0.373 (+1.2%; validated on 1,000 points instead of 256, with 2
    # torch threads: KL 0.022, +2.0%). At 300 steps: +5.8%. (A warm start from the teacher, the
    # previous default, gave 0.003 nats.) The thresholds are the targets.
    shown = {k: v for k, v in metrics.items() if k.startswith(("student/", "teacher/test"))}
    assert metrics["student/kl_trimmed_mean"] < 0.05, shown
    assert metrics["student/coverage_loss"] < 0.01
    assert metrics["student/test_nll"] < metrics["teacher/test_nll"] * 1.05, shown
    assert metrics["student/kl_tail_fraction"] < 0.01, shown


def test_teacher_is_frozen_during_distillation(distilled):
    metrics, _, _, before = distilled
    student = StudentModule.load_from_checkpoint(metrics["student/checkpoint"])
    after = student.teacher.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert not any(p.requires_grad for p in student.teacher.parameters())


def test_run_directory_has_metrics_report_and_figures(distilled):
    metrics, _, root, _ = distilled
    on_disk = json.loads((root / "metrics.json").read_text())
    for key in (
        "student/kl_mean",
        "student/kl_sem",
        "student/kl_median",
        "student/kl_trimmed_mean",
        "student/kl_tail_fraction",
        "student/kl_p99",
        "student/kl_p999",
        "student/kl_max",
        "student/kl_nonfinite_fraction",
        "student/coverage_margin",
        "student/parameters",
        "teacher/parameters",
        "sampling/speedup_q25",
        "teacher/test_nll",
        "student/test_nll",
        "student/test_nll_median",
        "student/coverage_loss",
        "teacher/ll_of_student_samples",
        "teacher/ll_of_own_samples",
        "sampling/teacher_s",
        "sampling/student_s",
        "sampling/speedup",
    ):
        assert key in on_disk, key
    report = (root / "report.md").read_text()
    assert "| held-out NLL (nats), mean |" in report
    for name in ("samples", "densities", "taffy"):
        assert (root / "plots" / f"{name}.png").is_file()
        assert f"plots/{name}.png" in report


def run_cli(command: str, *overrides: str, cwd: Path) -> subprocess.CompletedProcess:
    executable = Path(sys.executable).parent / command
    return subprocess.run(
        [str(executable), *overrides], capture_output=True, text=True, cwd=cwd, timeout=600
    )


def test_missing_teacher_checkpoint_is_a_one_line_error(tmp_path):
    result = run_cli(
        "distill-student",
        f"teacher.ckpt={tmp_path}/nope.ckpt",
        "data=moons",
        f"hydra.run.dir={tmp_path}/run",
        cwd=tmp_path,
    )
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1].startswith("error: teacher checkpoint")
    assert "Traceback" not in result.stderr


def test_corrupt_teacher_checkpoint_is_a_clear_error(tmp_path):
    corrupt = tmp_path / "corrupt.ckpt"
    corrupt.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="corrupt or not written by distill-teacher"):
        load_teacher(corrupt)


def test_teacher_that_does_not_match_the_data_is_refused(trained_teacher, compose_config):
    _, _, run = trained_teacher
    cfg = compose_config(
        "student", ["data=digits", f"teacher.ckpt={run / 'checkpoints' / 'best.ckpt'}"]
    )
    with pytest.raises(ValueError, match="trained on data `moons` .* pass data=moons"):
        run_student(cfg)


def test_student_that_does_not_match_the_teacher_is_refused(trained_teacher):
    _, _, run = trained_teacher
    teacher = load_teacher(run / "checkpoints" / "best.ckpt")
    with pytest.raises(ValueError, match="the student acts on 3 dimensions but the teacher on 2"):
        StudentModule.from_teacher(
            teacher,
            student={"_target_": "distill.flows.build_iaf", "features": 3},
            loss={"terms": {"reverse_kl": 1.0}},
        )


def test_distill_end_to_end_with_tiny_step_counts(tmp_path):
    run = tmp_path / "run"
    result = run_cli(
        "distill",
        "data=moons",
        "data.num_train=2048",
        "data.num_val=256",
        "data.num_test=500",
        "teacher.trainer.max_steps=40",
        "student.trainer.max_steps=20",
        "student.evaluation.num_kl_samples=2000",
        "student.evaluation.num_timing_samples=100",
        "logger=csv",
        f"hydra.run.dir={run}",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((run / "metrics.json").read_text())
    assert {
        "teacher/test_nll",
        "student/test_nll",
        "student/kl_trimmed_mean",
        "sampling/speedup",
    } <= set(metrics)
    report = (run / "report.md").read_text()
    assert "teacher" in report and "student" in report
    images = list(run.rglob("*.png"))
    assert {p.name for p in images} == {"samples.png", "densities.png", "taffy.png"}
    assert (run / "teacher" / "checkpoints" / "best.ckpt").is_file()
    assert (run / "student" / "checkpoints" / "best.ckpt").is_file()
    assert "Overrides: `data=moons" in report
    assert "- `student.loss.terms`: {" in report and "- `teacher.flow`: " in report
    for image in images:
        assert image.resolve().is_relative_to(run.resolve())
    assert not (tmp_path / "lightning_logs").exists() and not (tmp_path / "outputs").exists()


def test_a_batch_norm_teacher_keeps_its_statistics_through_distillation(tmp_path):
    """The frozen teacher stays in eval mode through Lightning's sanity validation (which
    restores each submodule's mode) and training: its BatchNorm statistics do not move."""
    import lightning as L

    from distill.data import build_datamodule
    from tests.flows.helpers import perturb

    datamodule = build_datamodule("moons", num_train=512, num_val=128, num_test=128, batch_size=64)
    datamodule.setup()
    teacher = TeacherModule.from_datamodule(
        datamodule, {"_target_": "distill.flows.build_maf", "num_layers": 2, "batch_norm": True}
    )
    perturb(teacher.flow)
    before = {k: v.clone() for k, v in teacher.flow.state_dict().items()}
    student = StudentModule.from_teacher(
        teacher,
        student={"_target_": "distill.flows.build_iaf", "features": 2, "num_layers": 1},
        loss={"terms": {"reverse_kl": 1.0}, "num_samples": 64},
        optim={"lr": 1e-3},
    )
    trainer = L.Trainer(
        max_steps=3,
        num_sanity_val_steps=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        default_root_dir=tmp_path,
    )
    trainer.fit(student, datamodule=datamodule)
    after = student.teacher.state_dict()
    assert any("running_var" in key for key in before)
    for key, value in before.items():
        torch.testing.assert_close(after[key], value, msg=key)
