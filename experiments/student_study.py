"""The student study: which distillation loss, initialization, size, step count and learning
rate make an IAF student that matches its MAF teacher without dropping modes.

    python experiments/student_study.py                  # run what is missing, then gather
    python experiments/student_study.py --list           # the runs and their commands
    python experiments/student_study.py --only moons-    # runs whose name contains a string
    python experiments/student_study.py --gather         # only rebuild the tables

Every run is one command line of the package's own entry points (`distill-teacher`,
`distill-student`, `distill`), run one at a time with ``OMP_NUM_THREADS=1`` (the machine is
shared) into ``experiments/runs/<name>/`` (git-ignored). A run whose ``metrics.json`` exists
is skipped (``--force`` re-runs it). The gatherer writes every run's metrics, command and
wall time to ``experiments/results/student_study.json`` and the tables to
``experiments/results/student_study.md``.

Teachers (trained once per data set, then frozen for every student of that data set):
moons and SIGGRAPH: MAF, 5 layers of MADE 128x128, lr 2e-3, 4000 / 5000 steps of 512;
digits: MAF 5 layers 128x128, AdamW weight decay 1e-4, lr 1e-3, early stopping on val NLL.

Targets (the "IAF student" issue): on moons and SIGGRAPH, 1%-trimmed KL(student || teacher)
<= 0.05 nats, coverage loss <= 1%, student held-out NLL within 5% of the teacher's; on
digits (D = 64), NLL within 2% and sampling >= 32x faster than the teacher at N = 1,000.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from distill.dashboard import load_run, markdown_table
from distill.dashboard.runs import read_csv_curves

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RUNS = HERE / "runs"
RESULTS = HERE / "results"
BIN = Path(sys.executable).parent

COMMON = ["logger=csv"]

# Teachers, trained once and frozen for every student of their data set: name -> overrides.
# The `*-exp` teachers are the teacher-quality study's tuned settings (`experiment=<data>`,
# sharper and deeper): the default student recipe must hold for them too.
TEACHERS = {
    "moons": ["data=moons", "teacher.optim.lr=2e-3", "teacher.trainer.max_steps=4000"],
    "siggraph": ["data=siggraph", "teacher.optim.lr=2e-3", "teacher.trainer.max_steps=5000"],
    "digits": [
        "data=digits",
        "flow@teacher.flow=maf",  # pinned: the stage default is now a spline MAF
        "optim@teacher.optim=adamw",
        "teacher.optim.lr=1e-3",
        "teacher.trainer.max_steps=6000",
        "teacher.trainer.check_val_every_n_epoch=5",
        "callbacks@teacher.callbacks=early_stopping",
        "teacher.callbacks.early_stopping.patience=10",
    ],
    "moons-exp": ["experiment=moons"],
    "siggraph-exp": ["experiment=siggraph"],
}


@dataclass
class Run:
    name: str
    command: str  # distill-teacher | distill-student | distill
    data: str
    overrides: list[str] = field(default_factory=list)
    group: str = ""
    threads: int = 1
    teacher: str = ""  # a key of TEACHERS (default: the data set's name)

    @property
    def directory(self) -> Path:
        return RUNS / self.name

    def argv(self) -> list[str]:
        args = [str(BIN / self.command)]
        if self.command == "distill-student":
            checkpoint = RUNS / f"teacher-{self.teacher or self.data}" / "checkpoints" / "best.ckpt"
            args += [f"teacher.ckpt={checkpoint}", f"data={self.data}"]
        if self.command != "distill":
            args += COMMON
        return [*args, *self.overrides, f"hydra.run.dir={self.directory}"]


def student(data: str, tag: str, group: str, *overrides: str, teacher: str = "") -> Run:
    return Run(f"{data}-{tag}", "distill-student", data, list(overrides), group, teacher=teacher)


def registry() -> list[Run]:
    runs = [
        Run(f"teacher-{name}", "distill-teacher", name.split("-")[0], overrides, "teacher")
        for name, overrides in TEACHERS.items()
    ]
    for data in ("moons", "siggraph"):
        for lr in ("1e-4", "3e-4", "1e-3"):
            for loss in ("reverse_kl", "mixed"):
                runs.append(
                    student(
                        data,
                        f"{loss}-teacher-lr{lr}",
                        "learning rate (init=teacher, 1000 steps)",
                        f"loss@student.loss={loss}",
                        "student.init=teacher",
                        f"student.optim.lr={lr}",
                        "student.trainer.max_steps=1000",
                    )
                )
    for data in ("moons", "siggraph"):
        for tag, overrides in LOSSES.items():
            runs.append(
                student(
                    data,
                    f"{tag}-teacher",
                    "loss (init=teacher, lr 3e-4, 1000 steps)",
                    *overrides,
                    "student.init=teacher",
                    "student.optim.lr=3e-4",
                    "student.trainer.max_steps=1000",
                )
            )
        for tag, overrides in LOSSES.items():
            runs.append(
                student(
                    data,
                    f"{tag}-identity",
                    "loss (init=identity, lr 1e-3, 2000 steps)",
                    *overrides,
                    "student.init=identity",
                    "student.optim.lr=1e-3",
                    "student.trainer.max_steps=2000",
                )
            )
    for data in ("moons", "siggraph"):
        for tag in STRESSED:
            runs.append(
                student(
                    data,
                    f"{tag}-teacher-lr1e-3-3000",
                    "stress: lr 1e-3, 3000 steps (init=teacher)",
                    *LOSSES[tag],
                    "student.init=teacher",
                    "student.optim.lr=1e-3",
                    "student.trainer.max_steps=3000",
                )
            )
        for tag in ("reverse_kl", "mixed0.1", "reverse_kl+regression"):
            for steps in (40, 300, 3000):
                runs.append(
                    student(
                        data,
                        f"{tag}-teacher-{steps}",
                        "steps (init=teacher, lr 3e-4)",
                        *LOSSES[tag],
                        "student.init=teacher",
                        "student.optim.lr=3e-4",
                        f"student.trainer.max_steps={steps}",
                    )
                )
    for data in ("moons", "siggraph"):
        for tag, overrides in REGULARIZED.items():
            runs.append(
                student(
                    data,
                    f"{tag}-teacher-lr1e-3-3000",
                    "clip and EMA (init=teacher, lr 1e-3, 3000 steps)",
                    *overrides,
                    "student.init=teacher",
                    "student.optim.lr=1e-3",
                    "student.trainer.max_steps=3000",
                )
            )
    for data in ("moons", "siggraph"):
        for weight in ("0.1", "0.3"):
            for seed in (1, 2):
                runs.append(
                    student(
                        data,
                        f"mixed{weight}-teacher-seed{seed}",
                        SEEDS,
                        *LOSSES[f"mixed{weight}"],
                        "student.init=teacher",
                        "student.optim.lr=3e-4",
                        "student.trainer.max_steps=1000",
                        f"seed={seed}",
                    )
                )
                runs.append(
                    student(
                        data,
                        f"mixed{weight}-identity-seed{seed}",
                        SEEDS,
                        *LOSSES[f"mixed{weight}"],
                        "student.init=identity",
                        "student.optim.lr=1e-3",
                        "student.trainer.max_steps=2000",
                        f"seed={seed}",
                    )
                )
    for tag, overrides in DIGITS_LOSSES.items():
        runs.append(
            student(
                "digits",
                f"{tag}-teacher",
                "digits: loss (init=teacher, lr 3e-4, 1000 steps)",
                *overrides,
                *DIGITS,
                "student.init=teacher",
                "student.optim.lr=3e-4",
                "student.trainer.max_steps=1000",
            )
        )
    for tag in ("reverse_kl", "reverse_kl+regression", "mixed0.1"):
        runs.append(
            student(
                "digits",
                f"{tag}-identity",
                "digits: init=identity (lr 1e-3, 2000 steps)",
                *LOSSES[tag],
                *DIGITS,
                "student.init=identity",
                "student.optim.lr=1e-3",
                "student.trainer.max_steps=2000",
            )
        )
    for tag, overrides in SMALL_STUDENTS.items():
        runs.append(
            student(
                "digits",
                f"reverse_kl+regression-{tag}",
                "digits: smaller students for speed (init=identity, lr 1e-3, 2000 steps)",
                *LOSSES["reverse_kl+regression"],
                *overrides,
                *DIGITS,
                "student.init=identity",
                "student.optim.lr=1e-3",
                "student.trainer.max_steps=2000",
            )
        )
    for tag in ("reverse_kl", "reverse_kl+regression", "mixed0.1"):
        for steps in (300, 3000):
            runs.append(
                student(
                    "digits",
                    f"{tag}-teacher-{steps}",
                    "digits: steps (init=teacher, lr 3e-4)",
                    *LOSSES[tag],
                    *DIGITS,
                    "student.init=teacher",
                    "student.optim.lr=3e-4",
                    f"student.trainer.max_steps={steps}",
                )
            )
    return runs


# Digits: 9 training batches per epoch; validate (a sequential student inverse) every 90 steps.
# The affine IAF the rows were measured with, pinned (the stage default is now a spline IAF).
DIGITS = ["student.trainer.check_val_every_n_epoch=10", "flow@student.flow=iaf"]
DIGITS_LOSSES = {
    "reverse_kl": ["loss@student.loss=reverse_kl"],
    "reverse_kl+regression": ["loss@student.loss=reverse_kl", "+student.loss.terms.regression=1.0"],
    "regression": ["loss@student.loss=regression"],
    "mixed0.1": ["loss@student.loss=mixed", "student.loss.terms.forward_kl=0.1"],
    "forward_kl": ["loss@student.loss=forward_kl"],
}
SMALL_STUDENTS = {
    "iaf5x64": ["student.flow.hidden_features=[64,64]"],
    "iaf3x128": ["student.flow.num_layers=3"],
    "iaf2x64": ["student.flow.num_layers=2", "student.flow.hidden_features=[64,64]"],
}
REGULARIZED = {
    "reverse_kl-clip10": ["loss@student.loss=reverse_kl", "student.loss.clip=10"],
    "reverse_kl-ema0.99": ["loss@student.loss=reverse_kl", "student.ema_decay=0.99"],
    "mixed0.1-ema0.99": [
        "loss@student.loss=mixed",
        "student.loss.terms.forward_kl=0.1",
        "student.ema_decay=0.99",
    ],
}

SEEDS = "seeds 1, 2 (init=teacher: lr 3e-4, 1000 steps; init=identity: lr 1e-3, 2000 steps)"
STRESSED = ("reverse_kl", "mixed0.1", "mixed0.3", "forward_kl", "reverse_kl+regression")
LOSSES = {
    "reverse_kl": ["loss@student.loss=reverse_kl"],
    "mixed0.05": ["loss@student.loss=mixed", "student.loss.terms.forward_kl=0.05"],
    "mixed0.1": ["loss@student.loss=mixed", "student.loss.terms.forward_kl=0.1"],
    "mixed0.3": ["loss@student.loss=mixed", "student.loss.terms.forward_kl=0.3"],
    "forward_kl": ["loss@student.loss=forward_kl"],
    "regression": ["loss@student.loss=regression"],
    "reverse_kl+regression": ["loss@student.loss=reverse_kl", "+student.loss.terms.regression=1.0"],
}


# ------------------------------------------------------------------------------------------
# Running


def run(entry: Run, force: bool) -> None:
    metrics = entry.directory / "metrics.json"
    if metrics.exists() and not force:
        return
    entry.directory.mkdir(parents=True, exist_ok=True)
    env = {
        **os.environ,
        "OMP_NUM_THREADS": str(entry.threads),
        "MKL_NUM_THREADS": str(entry.threads),
        # Busy-waiting OpenMP threads are many times slower on a shared machine (PITFALLS.md).
        "OMP_WAIT_POLICY": "PASSIVE",
        "WANDB_SILENT": "true",
    }
    argv = entry.argv()
    print(f"[{time.strftime('%H:%M:%S')}] {entry.name}: {shlex.join(argv)}", flush=True)
    start = time.perf_counter()
    with open(entry.directory / "run.log", "w") as log:
        result = subprocess.run(argv, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    wall = time.perf_counter() - start
    (entry.directory / "wall_time.json").write_text(
        json.dumps(
            {
                "wall_s": wall,
                "returncode": result.returncode,
                "threads": entry.threads,
                "revision": revision(),
            }
        )
    )
    status = "ok" if result.returncode == 0 else f"FAILED ({result.returncode})"
    print(f"    {status} in {wall:.0f} s", flush=True)


def revision() -> str:
    """The commit of the `distill` package the commands import: a ``REVISION`` file next to
    it (a ``git archive`` snapshot put first on PYTHONPATH), else this checkout's HEAD."""
    import distill

    snapshot = Path(distill.__file__).resolve().parents[1] / "REVISION"
    if snapshot.exists():
        return snapshot.read_text().strip() + " (snapshot)"
    head = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True
    ).stdout.strip()
    dirty = subprocess.run(
        ["git", "status", "--porcelain", "distill"], cwd=ROOT, capture_output=True, text=True
    ).stdout.strip()
    return head + (" (dirty)" if dirty else "")


# ------------------------------------------------------------------------------------------
# Gathering


def load(entry: Run) -> dict | None:
    run = load_run(entry.directory) if entry.directory.is_dir() else None
    if run is None or run.failed:
        return None
    record = {
        "name": entry.name,
        "group": entry.group,
        "data": entry.data,
        "command": shlex.join([entry.command, *entry.argv()[1:]]).replace(str(ROOT) + "/", ""),
        "threads": entry.threads,
        "teacher": f"teacher-{entry.teacher or entry.data}"
        if entry.command == "distill-student"
        else "",
        "metrics": run.metrics,
    }
    wall = entry.directory / "wall_time.json"
    if wall.exists():
        timing = json.loads(wall.read_text())
        record["wall_s"] = timing["wall_s"]
        record["revision"] = timing.get("revision", "")
    record["last_validation"] = last_validation(entry.directory)
    return record


def last_validation(directory: Path) -> dict[str, float]:
    """The last logged ``val/*`` values: the state training ended in, which the tables show
    next to the evaluated (best val/nll) checkpoint, so a late collapse cannot hide."""
    curves = read_csv_curves(directory)
    return {key: points[-1][1] for key, points in curves.items() if key.startswith("val/")}


def targets(data: str, m: dict) -> bool | None:
    if "student/kl_trimmed_mean" not in m:
        return None
    gap = m["student/nll_relative_gap"]
    if data == "digits":
        return gap <= 0.02 and m["sampling/speedup"] >= 32
    return (
        m["student/kl_trimmed_mean"] <= 0.05
        and m["student/coverage_loss"] <= 0.01
        and (gap <= 0.05)
    )


def overrides_text(record: dict) -> str:
    words = shlex.split(record["command"])[1:]
    # trainer.enable_progress_bar=false: in COMMON when the kept records were run
    skip = ("teacher.ckpt=", "hydra.run.dir=", "trainer.enable_progress_bar=", *COMMON)
    return " ".join(w for w in words if not w.startswith(skip))


COLUMNS = (
    ("KL trim", "student/kl_trimmed_mean", "{:.3f}"),
    ("KL mean", "student/kl_mean", "{:.3g}"),
    ("tail>10", "student/kl_tail_fraction", "{:.2%}"),
    ("cover loss", "student/coverage_loss", "{:.2%}"),
    ("NLL T", "teacher/test_nll", "{:.4g}"),
    ("NLL S", "student/test_nll", "{:.4g}"),
    ("gap", "student/nll_relative_gap", "{:+.1%}"),
    ("speedup", "sampling/speedup", "{:.1f}x"),
    ("train s", "student/train_time_s", "{:.0f}"),
)
LAST = (("last val KL", "val/kl", "{:.3g}"), ("last val NLL", "val/nll", "{:.4g}"))


def table(records: list[dict]) -> list[str]:
    head = ["run", "settings", *(c[0] for c in COLUMNS), *(c[0] for c in LAST), "targets"]
    rows = []
    for record in records:
        m = record["metrics"]
        cells = [f"`{record['name']}`", overrides_text(record) or "(defaults)"]
        cells += [fmt.format(m[key]) if key in m else "—" for _, key, fmt in COLUMNS]
        last = record["last_validation"]
        cells += [fmt.format(last[key]) if key in last else "—" for _, key, fmt in LAST]
        met = targets(record["data"], m)
        cells.append("—" if met is None else ("yes" if met else "no"))
        rows.append(cells)
    return markdown_table(head, rows)


def gather(entries: list[Run]) -> None:
    """The tables from every run directory present (a failed run has no row); a run whose
    directory is gone (run dirs are git-ignored) keeps its record from the last gathered
    ``student_study.json``."""
    previous_file = RESULTS / "student_study.json"
    previous = (
        {r["name"]: r for r in json.loads(previous_file.read_text())}
        if previous_file.exists()
        else {}
    )
    records = [
        r
        for r in (load(e) if e.directory.is_dir() else previous.get(e.name) for e in entries)
        if r is not None
    ]
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "student_study.json").write_text(json.dumps(records, indent=1) + "\n")
    lines = [
        "# Student study (generated by experiments/student_study.py)",
        "",
        "KL: KL(student || teacher) in nats on 100,000 student samples (1%-trimmed mean and "
        "mean); tail>10: fraction of samples with a KL term above 10 nats; cover loss: "
        "fraction of test points where the student's NLL exceeds the teacher's by more than "
        "the coverage margin (5 nats at D = 2; 5 sqrt(D / 2) = 28.3 nats at D = 64 in the runs "
        "since the margin was scaled with D, 5 nats in the older ones); "
        "gap: (student NLL - teacher NLL) / |teacher NLL| on the test split; speedup: teacher "
        "sampling time / student sampling time at N = 1,000; train s: student training wall "
        "time (validation included) with OMP_NUM_THREADS=1 on a shared 2-core CPU.",
        "",
    ]
    groups: dict[str, list[dict]] = {}
    for record in records:
        groups.setdefault(record["group"], []).append(record)
    for group, members in groups.items():
        lines += [f"## {group}", ""]
        if group in ("teacher", "pipeline"):
            rows = []
            for r in members:
                m = r["metrics"]
                shown = ", ".join(
                    f"{k} {m[k]:.4g}"
                    for k in (
                        "teacher/test_nll",
                        "teacher/excess_nll",
                        "teacher/train_time_s",
                        "student/test_nll",
                        "student/kl_trimmed_mean",
                        "student/coverage_loss",
                        "student/nll_relative_gap",
                        "sampling/speedup",
                    )
                    if k in m
                )
                wall = f"{r['wall_s']:.0f}" if "wall_s" in r else "—"
                settings = f"{overrides_text(r) or '(defaults)'} (threads {r['threads']})"
                rows.append([f"`{r['name']}`", settings, shown, wall])
            lines += markdown_table(["run", "settings", "metrics", "wall s"], rows)
        else:
            lines += table(members)
        lines.append("")
    (RESULTS / "student_study.md").write_text("\n".join(lines))
    print(f"wrote {RESULTS / 'student_study.json'} and {RESULTS / 'student_study.md'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", action="append", default=[], help="substring of run names")
    parser.add_argument("--force", action="store_true", help="re-run runs that have metrics")
    parser.add_argument("--list", action="store_true", help="print the runs and exit")
    parser.add_argument("--gather", action="store_true", help="only rebuild the tables")
    args = parser.parse_args()
    entries = registry()
    selected = [e for e in entries if not args.only or any(s in e.name for s in args.only)]
    if args.list:
        for entry in selected:
            print(f"{entry.name}: {shlex.join(entry.argv())}")
        return
    if not args.gather:
        for entry in selected:
            run(entry, args.force)
    gather(entries)


if __name__ == "__main__":
    main()
