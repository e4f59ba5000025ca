"""Sweeps and run identity: a student sweep trains its teacher once, W&B runs say which job and
stage they are, a failed job is recorded while the sweep goes on, a resumed stage continues its
W&B run."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

TEACHER = [
    "data=moons",
    "data.num_train=2048",
    "data.num_val=256",
    "data.num_test=256",
    "teacher.trainer.max_steps=20",
    "teacher.flow.num_layers=2",
    "teacher.flow.hidden_features=[16,16]",
]
TINY = [
    *TEACHER,
    "student.flow.hidden_features=[16,16]",
    "student.trainer.max_steps=4",
    "student.evaluation.num_kl_samples=500",
    "student.evaluation.num_timing_samples=20",
]


def run_cli(command: str, *overrides: str, cwd: Path) -> subprocess.CompletedProcess:
    executable = Path(sys.executable).parent / command
    return subprocess.run(
        [str(executable), *overrides], capture_output=True, text=True, cwd=cwd, timeout=600
    )


def wandb_records(run_dir: Path) -> list[dict]:
    """Every record of an offline W&B run, read back with W&B's own reader."""
    wandb = Path(sys.executable).parent / "wandb"
    result = subprocess.run(
        [str(wandb), "leet", "inspect", "--json", str(run_dir)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]


def wandb_run(stage_dir: Path) -> list[dict]:
    (run_dir,) = stage_dir.glob("wandb/offline-run-*")
    return wandb_records(run_dir)


@pytest.mark.slow
def test_a_student_sweep_trains_one_teacher_and_names_its_runs(tmp_path, wandb_env):
    sweep = tmp_path / "sweep"
    result = run_cli(
        "distill",
        "-m",
        *TINY,
        "loss@student.loss=reverse_kl,mixed",
        f"hydra.sweep.dir={sweep}",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert len(list((sweep / "teachers").glob("*/checkpoints/best.ckpt"))) == 1
    assert len(list(sweep.glob("[0-9]/student/checkpoints/best.ckpt"))) == 2
    assert not list(sweep.glob("[0-9]/teacher"))
    losses = {
        json.loads((sweep / f"{job}/metrics.json").read_text())["student/init"] for job in "01"
    }
    assert losses == {"identity"}

    records = wandb_run(sweep / "0" / "student")
    run = next(r["run"] for r in records if r["type"] == "run")
    assert run["run_group"] == str(sweep) and run["job_type"] == "student"
    assert {"data:moons", "loss:reverse_kl", "flow:build_iaf"} <= set(run["tags"])
    assert (
        run["display_name"].startswith("student ")
        and "loss@student.loss=reverse_kl" in run["display_name"]
    )
    summary = [r for r in records if r["type"] == "summary"]
    assert summary, "no summary record"
    teacher = next(
        r["run"] for r in wandb_run(next((sweep / "teachers").iterdir())) if r["type"] == "run"
    )
    assert teacher["job_type"] == "teacher" and teacher["run_group"] == str(sweep)


def test_a_failed_sweep_job_is_recorded_and_the_sweep_goes_on(tmp_path):
    sweep = tmp_path / "sweep"
    result = run_cli(
        "distill-teacher",
        "-m",
        *TEACHER,
        "teacher.trainer.max_steps=3",
        "logger=none",
        "teacher.optim.lr=-1,1e-3",
        f"hydra.sweep.dir={sweep}",
        cwd=tmp_path,
    )
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("error: 1 job(s) of the sweep failed")
    error = json.loads((sweep / "0" / "error.json").read_text())
    assert "teacher.optim.lr=-1 is not valid" in error["error"]
    assert "teacher.optim.lr=-1" in error["overrides"]
    assert len((sweep / "failures.jsonl").read_text().splitlines()) == 1
    assert json.loads((sweep / "1" / "metrics.json").read_text())["teacher/global_step"] == 3


def test_a_resumed_stage_continues_its_wandb_run(tmp_path, wandb_env):
    run = tmp_path / "run"
    first = run_cli("distill-teacher", *TEACHER, f"hydra.run.dir={run}", cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    run_id = (run / "wandb_run_id").read_text().strip()
    again = run_cli(
        "distill-teacher",
        *TEACHER,
        "teacher.trainer.max_steps=30",
        "teacher.resume=last",
        f"hydra.run.dir={run}",
        cwd=tmp_path,
    )
    assert again.returncode == 0, again.stderr[-3000:]
    assert (run / "wandb_run_id").read_text().strip() == run_id
    ids = set()
    for run_dir in run.glob("wandb/offline-run-*"):
        ids |= {r["run"]["run_id"] for r in wandb_records(run_dir) if r["type"] == "run"}
    assert ids == {run_id}
    assert json.loads((run / "metrics.json").read_text())["teacher/global_step"] == 30
    history = [
        json.loads(line) for line in (run / "overrides_history.jsonl").read_text().splitlines()
    ]
    assert len(history) == 2 and "teacher.resume=last" in history[1]["overrides"]
    assert "teacher.resume=last" not in history[0]["overrides"]


def test_an_unknown_optimized_metric_is_refused_by_name(tmp_path):
    result = run_cli(
        "distill-teacher",
        *TEACHER,
        "teacher.trainer.max_steps=2",
        "logger=none",
        "optimized_metric=teacher/nope",
        f"hydra.run.dir={tmp_path / 'run'}",
        cwd=tmp_path,
    )
    assert result.returncode == 1
    assert (
        result.stderr.strip()
        .splitlines()[-1]
        .startswith(
            "error: optimized_metric=teacher/nope is not a metric of this run: choose one of"
        )
    )


def test_the_optuna_search_config_runs_trials_and_shares_the_teacher(tmp_path):
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper", reason="needs the optuna extra")
    sweep = tmp_path / "sweep"
    result = run_cli(
        "distill",
        "hparams_search=student_optuna",
        "hydra.sweeper.n_trials=2",
        *TINY,
        "teacher.trainer.max_steps=5",
        "student.trainer.max_steps=2",
        "logger=none",
        f"hydra.sweep.dir={sweep}",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    best = (sweep / "optimization_results.yaml").read_text()
    assert "student.optim.lr" in best and "best_value" in best
    assert len(list((sweep / "teachers").glob("*/checkpoints/best.ckpt"))) == 1
