"""distill-report on fake run directories: gathering, the table, sorting, the page."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402
import yaml  # noqa: E402

from distill.cli.report import main  # noqa: E402
from distill.dashboard import find_runs  # noqa: E402
from distill.dashboard.runs import parse_overrides, read_curves  # noqa: E402
from distill.dashboard.table import choose_sort, sort_runs, varying_settings  # noqa: E402


def make_run(
    path: Path,
    overrides: list[str],
    metrics: dict | None,
    job: str = "teacher",
    choices: dict | None = None,
    config: dict | None = None,
    stages: tuple[str, ...] = (),
) -> Path:
    """A run directory as the entry points leave it: .hydra/, metrics.json (None: failed),
    and per stage (the run itself if ``stages`` is empty) a CSV log and a PNG figure."""
    hydra = path / ".hydra"
    hydra.mkdir(parents=True)
    (hydra / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    (hydra / "config.yaml").write_text(yaml.safe_dump(config or {"optim": {"lr": 0.001}}))
    runtime = {"choices": {"data": "moons", "hydra/launcher": "basic", **(choices or {})}}
    (hydra / "hydra.yaml").write_text(
        yaml.safe_dump({"hydra": {"job": {"name": job}, "runtime": runtime}})
    )
    if metrics is None:
        (path / "error.txt").write_text("Traceback ...\nValueError: bad flow.num_layers\n")
        return path
    (path / "metrics.json").write_text(json.dumps(metrics))
    for stage in stages or (".",):
        directory = path / stage
        (directory / "plots").mkdir(parents=True)
        figure = plt.figure(figsize=(1, 1))
        figure.savefig(directory / "plots" / "samples.png")
        plt.close(figure)
        if stage != ".":  # a stage keeps its own metrics.json: not a run of its own
            (directory / "metrics.json").write_text(json.dumps(metrics))
        log = directory / "csv" / "version_0"
        log.mkdir(parents=True)
        with open(log / "metrics.csv", "w", newline="") as file:
            writer = csv.writer(file)
            writer.writerow(["epoch", "step", "train/nll", "val/nll", "teacher/test_nll"])
            writer.writerows([[0, 19, 2.0, "", ""], [0, 39, "", 1.5, ""], [1, 59, 1.2, "", ""]])
            writer.writerow(["", 0, "", "", 1.0])
    return path


@pytest.fixture
def sweep(tmp_path: Path) -> Path:
    """A multirun sweep over flow and learning rate: three finished jobs, one failed."""
    root = tmp_path / "multirun" / "teacher" / "2026-11-29_10-00-00"
    root.mkdir(parents=True)
    (root / "multirun.yaml").write_text("hydra: {}\n")
    jobs = [("maf", "1e-3", 0.9), ("maf", "3e-3", 0.6), ("realnvp", "1e-3", 1.2)]
    for number, (flow, lr, nll) in enumerate(jobs):
        make_run(
            root / str(number),
            ["data=moons", f"flow={flow}", f"optim.lr={lr}", f"hydra.run.dir=/x/{number}"],
            {"teacher/test_nll": nll, "teacher/train_time_s": 3.0 + number},
            choices={"flow": flow},
        )
    make_run(root / "3", ["data=moons", "flow=nice", "optim.lr=1e-3"], None)
    return root


def test_sweep_report(sweep: Path, tmp_path: Path):
    out = tmp_path / "report"
    assert main([str(sweep), "--out", str(out)]) == 0
    lines = (out / "runs.md").read_text().splitlines()
    table = [line for line in lines if line.startswith("| ")]
    assert table[0].startswith("| run | flow | optim.lr | teacher NLL (nats) |")
    # Best (lowest NLL) first, the failed job last with its message; data=moons is shared.
    assert [row.split(" | ")[0] for row in table[1:]] == ["| 1", "| 0", "| 2", "| 3"]
    assert "failed: ValueError: bad flow.num_layers" in table[-1]
    assert "`data=moons`" in (out / "runs.md").read_text()
    rows = list(csv.DictReader(open(out / "runs.csv")))
    assert [row["optim.lr"] for row in rows] == ["0.003", "0.001", "0.001", "0.001"]
    assert float(rows[0]["teacher/test_nll"]) == 0.6
    page = (out / "index.html").read_text()
    sources = re.findall(r'(?:src|href)="([^"]+)"', page)
    assert sources and not [s for s in sources if "://" in s or s.startswith("/")]
    for source in sources:
        assert source.startswith("#") or (out / source).is_file(), source
    assert any("curves" in s for s in sources) and any("vs-" in s for s in sources)
    assert sum("samples.png" in s for s in sources) == 3


def test_sort_by_a_higher_is_better_metric_and_unknown_metric(sweep: Path, capsys):
    runs = find_runs([sweep])
    for run, speedup in zip(runs, (2.0, 8.0, 4.0), strict=False):
        run.metrics["sampling/speedup"] = speedup
    ordered = sort_runs(runs, choose_sort(runs, "sampling/speedup"))
    assert [run.name for run in ordered] == ["1", "2", "0", "3"]
    assert main([str(sweep), "--sort", "bogus", "--out", str(sweep / "r")]) == 1
    error = capsys.readouterr().err.strip()
    assert error.count("\n") == 0
    assert "unknown metric 'bogus'" in error and "teacher/test_nll" in error


def test_pipeline_and_single_stage_runs(tmp_path: Path):
    """A `distill` run counts once (its stages' metrics.json are not runs); its curves come per
    stage; a config value stands in for a missing override."""
    metrics = {"teacher/test_nll": 1.0, "student/test_nll": 1.1, "sampling/speedup": 2.0}
    make_run(
        tmp_path / "a", ["optim.lr=1e-3"], metrics, job="distill", stages=("teacher", "student")
    )
    make_run(tmp_path / "b", ["+loss.clip=10"], {"teacher/test_nll": 0.8}, job="teacher")
    runs = find_runs([tmp_path])
    assert [run.name for run in runs] == ["a", "b"]
    assert varying_settings(runs) == ["loss.clip"]  # optim.lr: 0.001 in b's config too
    curves, notes = read_curves(runs)
    assert not notes
    assert set(curves) == {"teacher", "student"}
    assert curves["student"]["val/nll"] == {"a": [(39.0, 1.5)]}
    assert set(curves["teacher"]["train/nll"]) == {"a", "b"}
    assert choose_sort(runs, None).key == "student/test_nll"


def test_unreadable_wandb_run_is_a_note(tmp_path: Path):
    run_dir = make_run(tmp_path / "w", [], {"teacher/test_nll": 1.0})
    for path in (run_dir / "csv").rglob("*.csv"):
        path.unlink()
    wandb_run = run_dir / "wandb" / "offline-run-20261129_100000-abc" / "run-abc.wandb"
    wandb_run.parent.mkdir(parents=True)
    wandb_run.write_bytes(b"not a wandb log")
    curves, notes = read_curves(find_runs([tmp_path]))
    assert curves == {}
    assert len(notes) == 1 and notes[0].startswith("w (teacher): curves skipped")


def test_parse_overrides():
    parsed = parse_overrides(
        [
            "flow@student.flow=iaf_spline",
            "+loss.terms.regression=1.0",
            "++seed=3",
            "~callbacks.early_stopping",
            "student.optim.lr=3e-4",
            "trainer.enable_progress_bar=False",
            "hydra.run.dir=/tmp/x",
        ]
    )
    assert parsed == {
        "flow@student.flow": "iaf_spline",
        "loss.terms.regression": 1.0,
        "seed": 3,
        "callbacks.early_stopping": "(deleted)",
        "student.optim.lr": 3e-4,
        "trainer.enable_progress_bar": False,
    }


def test_no_runs_is_an_error(tmp_path: Path, capsys):
    assert main([str(tmp_path)]) == 1
    assert "no run" in capsys.readouterr().err


def test_wandb_offline_run_curves(wandb_env: Path):
    """A real offline W&B run, long enough to span several 32 KiB blocks of its log: the
    in-process reader gives what W&B's own `wandb leet inspect` gives."""
    import time

    import wandb

    from distill.dashboard.runs import _wandb_history_by_leet, read_wandb_curves

    steps = 1500
    run = wandb.init(mode="offline", dir=wandb_env, project="distill-report-test")
    for step in range(steps):
        run.log({"train/nll": 2.0 / (1 + step), "trainer/global_step": step, "epoch": 0})
    run.finish()
    (run_file,) = wandb_env.glob("wandb/offline-run-*/run-*.wandb")
    deadline = time.monotonic() + 30  # finish() can return before the file is flushed
    while len(curves := read_wandb_curves(run_file).get("train/nll", [])) < steps:
        assert time.monotonic() < deadline, f"{len(curves)} of {steps} steps after 30 s"
        time.sleep(0.1)
    assert run_file.stat().st_size > 2 * 32768
    assert curves[0] == (0.0, 2.0) and curves[-1] == (steps - 1.0, 2.0 / steps)
    official = [item["train/nll"] for item in _wandb_history_by_leet(run_file)]
    assert official == [value for _, value in curves]


def test_a_resumed_run_replaces_the_steps_it_logged_again(tmp_path: Path):
    """After a hard kill the run resumes from its last saved step and logs the steps after it
    again into a new CSV version: the curve keeps the resumed launch's points, each step once."""
    run_dir = make_run(tmp_path / "r", [], {"teacher/test_nll": 1.0})
    resumed = run_dir / "csv" / "version_1"
    resumed.mkdir()
    with open(resumed / "metrics.csv", "w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(["epoch", "step", "train/nll", "val/nll"])
        writer.writerows([[1, 59, 1.1, ""], [1, 79, 1.0, ""], [1, 79, "", 1.4]])
    curves, _ = read_curves(find_runs([tmp_path]))
    assert curves["teacher"]["train/nll"]["r"] == [(19.0, 2.0), (59.0, 1.1), (79.0, 1.0)]
    assert curves["teacher"]["val/nll"]["r"] == [(39.0, 1.5), (79.0, 1.4)]


def test_launches_continue_each_other():
    from distill.dashboard.runs import continued

    first = {"train/loss": [(0.0, 3.0), (10.0, 2.0), (20.0, 1.9)], "val/loss": [(20.0, 2.5)]}
    second = {"train/loss": [(20.0, 1.8), (30.0, 1.7)]}  # resumed from step 10's checkpoint
    assert continued([first, second, {}]) == {
        "train/loss": [(0.0, 3.0), (10.0, 2.0), (20.0, 1.8), (30.0, 1.7)]
    }  # val/loss at 20 belonged to the lost launch: dropped with it
    assert continued([]) == {}
