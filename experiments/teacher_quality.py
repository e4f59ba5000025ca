"""Held-out quality of the MAF teacher on each data set's named experiment.

    python experiments/teacher_quality.py                  # all five, one after the other
    python experiments/teacher_quality.py --only siggraph  # one; its row replaces the old one

Each experiment runs through the real entry point, in a subprocess, exactly as a user would:

    distill-teacher experiment=NAME hydra.run.dir=experiments/runs/teacher/NAME logger=csv

(plus ``trainer.enable_progress_bar=false``, which only keeps the captured log readable). The
run's ``metrics.json`` gives the held-out NLL (nats, data space, best-validation checkpoint),
the true entropy and the excess NLL, bits/dim for digits, the training wall time and the
number of steps; the best checkpoint gives the step it was saved at. Results go to
``experiments/results/teacher_quality.{json,md}``.

Trainings use ``--threads`` torch/OpenMP threads (1 by default: the machine is shared) with
``OMP_WAIT_POLICY=PASSIVE`` (busy-waiting OpenMP threads make small matrix products many
times slower on a loaded machine, see PITFALLS.md), and those settings are recorded.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

from distill.dashboard import load_run, markdown_table

ROOT = Path(__file__).resolve().parents[1]
EXPERIMENTS = ("moons", "siggraph", "8gaussians", "checkerboard", "digits")
RUNS = ROOT / "experiments" / "runs" / "teacher"
RESULTS = ROOT / "experiments" / "results"
ENTRY_POINT = Path(sys.executable).parent / "distill-teacher"


def command(name: str, run_dir: Path) -> list[str]:
    return [
        str(ENTRY_POINT) if ENTRY_POINT.exists() else "distill-teacher",
        f"experiment={name}",
        f"hydra.run.dir={run_dir.relative_to(ROOT)}",
        "logger=csv",
        "trainer.enable_progress_bar=false",
    ]


def environment(threads: int) -> dict[str, str]:
    env = dict(os.environ)
    for key in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        env[key] = str(threads)
    env["OMP_WAIT_POLICY"] = "PASSIVE"
    return env


def torch_threads(env: dict[str, str]) -> int:
    """The intra-op thread count torch starts with under ``env`` (as the runs see it)."""
    probe = "import torch; print(torch.get_num_threads())"
    out = subprocess.run(
        [sys.executable, "-c", probe], env=env, capture_output=True, text=True, check=True
    )
    return int(out.stdout.strip())


def children_cpu_time() -> float:
    """User + system CPU seconds of the finished child processes so far."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def best_checkpoint_step(path: str | None) -> int | None:
    """The global step at which the best-validation checkpoint (the one tested) was saved."""
    if not path or not Path(path).is_file():
        return None
    import torch

    return int(torch.load(path, map_location="cpu", weights_only=True)["global_step"])


def run_experiment(name: str, threads: int) -> dict:
    """Train ``experiment=name`` from scratch in its own run directory; its results row."""
    run_dir = RUNS / name
    if run_dir.exists():  # metrics.json is updated in place and checkpoints get versioned
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True)
    cmd = command(name, run_dir)
    env = environment(threads)
    print(f"[{name}] {' '.join(cmd[1:])}", flush=True)
    revision = git_revision()  # the code the run imports: others may commit meanwhile
    start, cpu_start = time.perf_counter(), children_cpu_time()
    with open(run_dir / "stdout.log", "w") as log:
        done = subprocess.run(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    wall, cpu = time.perf_counter() - start, children_cpu_time() - cpu_start
    if done.returncode != 0:
        tail = (run_dir / "stdout.log").read_text().splitlines()[-15:]
        raise SystemExit(f"[{name}] failed (exit {done.returncode}):\n" + "\n".join(tail))
    metrics = load_run(run_dir).metrics
    row = {
        "experiment": name,
        "command": "distill-teacher " + " ".join(cmd[1:4]),
        "test_nll": metrics["teacher/test_nll"],
        "test_nll_median": metrics.get("teacher/test_nll_median"),
        "entropy": metrics.get("data/entropy"),
        "excess_nll": metrics.get("teacher/excess_nll"),
        "test_bpd": metrics.get("teacher/test_bpd"),
        "train_time_s": metrics["teacher/train_time_s"],
        "steps": metrics["teacher/global_step"],
        "best_step": best_checkpoint_step(metrics.get("teacher/checkpoint")),
        "process_wall_s": wall,
        "process_cpu_s": cpu,
        "git": revision,
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "run_dir": str(run_dir.relative_to(ROOT)),
    }
    print(f"[{name}] {summary(row)}", flush=True)
    return row


def summary(row: dict) -> str:
    parts = [f"test NLL {row['test_nll']:.4f}"]
    if row["excess_nll"] is not None:
        parts.append(f"excess {row['excess_nll']:.4f}")
    if row["test_bpd"] is not None:
        parts.append(f"{row['test_bpd']:.3f} bits/dim")
    parts.append(f"{row['train_time_s']:.0f} s, {row['steps']} steps")
    return ", ".join(parts)


def git_revision() -> str | None:
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "distill"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return head + ("+dirty" if dirty else "")


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def number(value: float | None, digits: int) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def markdown(results: dict) -> str:
    setting = results["setting"]
    lines = [
        "# Teacher quality (generated by experiments/teacher_quality.py)",
        "",
        "Held-out NLL in nats (data space, mean over the test split, best-validation "
        "checkpoint), the data's true entropy, excess = NLL - entropy (the KL divergence from "
        "the data to the teacher), bits/dim for digits (dequantized pixel space [0, 17)); "
        "train s: wall time of `Trainer.fit` (validation and figures included); CPU s: CPU "
        "time of the whole `distill-teacher` process (start-up and test included; less "
        "sensitive than wall time to the other jobs on this machine); steps: optimizer steps "
        "run; best: the step of the checkpoint tested.",
        "",
        f"Setting: {setting['threads']} torch thread(s) (OMP_NUM_THREADS={setting['threads']}, "
        f"torch.get_num_threads() = {setting['torch_threads']}), "
        f"OMP_WAIT_POLICY={setting['omp_wait_policy']}, {setting['cpu']} "
        f"({setting['cpu_count']} cores, shared with another engineer's runs), "
        f"torch {setting['torch']}; rev: the distill commit each row ran at.",
        "",
    ]
    header = ["experiment", "test NLL", "entropy", "excess", "bits/dim", "train s", "CPU s"]
    header += ["steps", "best", "rev"]
    rows = [
        [
            f"`{name}`",
            number(row["test_nll"], 4),
            number(row["entropy"], 4),
            number(row["excess_nll"], 4),
            number(row["test_bpd"], 3),
            f"{row['train_time_s']:.0f}",
            f"{row['process_cpu_s']:.0f}",
            str(row["steps"]),
            str(row["best_step"] or "—"),
            row["git"] or "—",
        ]
        for name in EXPERIMENTS
        if (row := results["experiments"].get(name)) is not None
    ]
    lines += markdown_table(header, rows)
    lines += ["", "Commands (from the repository root):", "", "```bash"]
    lines += [
        f"OMP_NUM_THREADS={setting['threads']} OMP_WAIT_POLICY=PASSIVE "
        + results["experiments"][name]["command"]
        for name in EXPERIMENTS
        if name in results["experiments"]
    ]
    lines += ["```", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", choices=EXPERIMENTS, help="run this experiment only")
    parser.add_argument("--threads", type=int, default=1, help="torch/OpenMP threads per run")
    args = parser.parse_args()

    names = [args.only] if args.only else list(EXPERIMENTS)
    json_path = RESULTS / "teacher_quality.json"
    results = json.loads(json_path.read_text()) if json_path.exists() else {"experiments": {}}
    env = environment(args.threads)
    import torch

    results["setting"] = {
        "threads": args.threads,
        "torch_threads": torch_threads(env),
        "omp_wait_policy": env["OMP_WAIT_POLICY"],
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "python": platform.python_version(),
    }
    for name in names:
        results["experiments"][name] = run_experiment(name, args.threads)
        RESULTS.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(results, indent=2) + "\n")
        (RESULTS / "teacher_quality.md").write_text(markdown(results))
    print(markdown(results))


if __name__ == "__main__":
    main()
