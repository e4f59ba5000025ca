"""Gather finished (and failed) runs from disk: metrics, settings, figures and curves.

A run is a directory holding ``.hydra/`` (Hydra's record of the job); it finished if it also
holds ``metrics.json``, and failed otherwise. Its figures are ``plots/*.png`` in the run
directory or in a subfolder of it; its logger output is in the run directory itself
(``distill-teacher``, ``distill-student``) or in its stage subfolders, ``teacher/`` and
``student/`` (``distill``).
"""

from __future__ import annotations

import csv
import json
import math
import os
import re
import subprocess
import sys
from collections.abc import Iterable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from distill.wandb_setup import read_history

# A curve: (step, value) pairs in logging order.
Curve = list[tuple[float, float]]
CURVE_PREFIXES = ("train/", "val/")
WANDB_READ_TIMEOUT_S = 60


@dataclass
class Run:
    """One run directory: what it was asked to do (``settings``) and what it measured."""

    path: Path
    job: str  # hydra.job.name: distill, teacher, student
    metrics: dict[str, object]  # metrics.json; empty if the run failed
    settings: dict[str, object]  # group choices and command-line overrides: key -> value
    config: dict[str, object]  # the saved config, flattened to dotted keys
    error: str = ""  # why the run failed, if it did
    name: str = ""  # short display name, unique among the gathered runs
    # Seconds from the start (config saved) to the end (metrics.json written), from file times.
    wall_time_s: float | None = None
    figures: list[Path] = field(default_factory=list)  # PNG files

    @property
    def failed(self) -> bool:
        return not self.metrics

    def stages(self) -> list[tuple[str, Path]]:
        """``(stage name, directory)`` of each folder holding logger output: the run
        directory itself, named after its job, and its subfolders, named after themselves."""
        folders = [(self.job, self.path)] + [
            (child.name, child)
            for child in sorted(self.path.iterdir())
            if child.is_dir() and not child.name.startswith(".")
        ]
        return [(name, folder) for name, folder in folders if _holds_logs(folder)]

    def value(self, key: str) -> object:
        """The setting ``key`` of this run: its override or group choice, else its saved
        config value, else None."""
        if key in self.settings:
            return self.settings[key]
        return self.config.get(key)


def _holds_logs(directory: Path) -> bool:
    return any((directory / name).is_dir() for name in ("csv", "wandb", "tensorboard"))


def find_runs(roots: Iterable[str | Path], exclude: Path | None = None) -> list[Run]:
    """Every run under ``roots`` (a run directory itself, a sweep, or any folder of them), in
    natural path order (``2`` before ``10``), each with a unique short ``name``. Folders
    inside a run (its stages) are not searched; ``exclude`` (the report's own folder) is
    skipped."""
    found: dict[Path, None] = {}
    for root in roots:
        root = Path(root).resolve()
        if not root.is_dir():
            raise FileNotFoundError(f"{root}: no such directory")
        for directory, subdirectories, _ in os.walk(root):
            here = Path(directory)
            if (here / ".hydra").is_dir():
                found[here] = None
                subdirectories.clear()
            else:
                subdirectories[:] = [
                    d
                    for d in subdirectories
                    if not d.startswith(".") and (exclude is None or here / d != exclude)
                ]
    runs = [load_run(path) for path in sorted(found, key=_natural_key)]
    for run, name in zip(runs, _short_names([run.path for run in runs]), strict=True):
        run.name = name
    return runs


def _natural_key(path: Path) -> list:
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", str(path))]


def _short_names(paths: list[Path]) -> list[str]:
    """Each path relative to the deepest folder common to all (a single run: its own name)."""
    if len(paths) <= 1:
        return [path.name for path in paths]
    common = Path(os.path.commonpath(paths))
    return [path.relative_to(common).as_posix() for path in paths]


def load_run(path: str | Path) -> Run:
    """Read one run directory: ``metrics.json``, ``.hydra/{config,overrides,hydra}.yaml``,
    the failure message if any, and its figures."""
    path = Path(path)
    hydra_dir = path / ".hydra"
    hydra = _read_yaml(hydra_dir / "hydra.yaml").get("hydra", {})
    job = str(hydra.get("job", {}).get("name", "") or path.name)
    choices = {
        key: value
        for key, value in (hydra.get("runtime", {}).get("choices") or {}).items()
        if not key.startswith("hydra")  # Hydra's own groups: launcher, sweeper, logging
    }
    overrides = _read_yaml(hydra_dir / "overrides.yaml") or []
    settings: dict[str, object] = dict(choices)
    settings.update(parse_overrides(overrides))
    metrics_path = path / "metrics.json"
    metrics = json.loads(metrics_path.read_text()) if metrics_path.is_file() else {}
    run = Run(
        path=path,
        job=job,
        metrics=metrics,
        settings=settings,
        config=flatten(_read_yaml(hydra_dir / "config.yaml")),
        error="" if metrics else failure_message(path),
    )
    config_path = hydra_dir / "config.yaml"
    if metrics and config_path.is_file():
        elapsed = metrics_path.stat().st_mtime - config_path.stat().st_mtime
        # A copy that did not keep modification times can make this meaningless.
        run.wall_time_s = elapsed if elapsed > 0 else None
    run.figures = sorted(path.glob("plots/*.png")) + sorted(path.glob("*/plots/*.png"))
    return run


def _read_yaml(path: Path) -> dict | list:
    if not path.is_file():
        return {}
    return yaml.safe_load(path.read_text()) or {}


def parse_overrides(overrides: Iterable[str]) -> dict[str, object]:
    """Hydra command-line overrides as ``key -> value``: ``+a.b=1`` and ``++a.b=1`` give
    ``a.b -> 1``, ``~a.b`` gives ``a.b -> "(deleted)"``; ``hydra.*`` keys (output folders and
    the like) are left out. Numbers become numbers, so ``1e-3`` and ``0.001`` compare equal."""
    parsed: dict[str, object] = {}
    for override in overrides:
        override = str(override)
        if override.startswith("~"):
            key, value = override[1:].split("=", 1)[0], "(deleted)"
        elif "=" in override:
            key, value = override.lstrip("+").split("=", 1)
            value = parse_value(value)
        else:
            continue
        if key != "hydra" and not key.startswith("hydra."):
            parsed[key] = value
    return parsed


def parse_value(text: str) -> object:
    """A number, bool or None if ``text`` reads as one (as Hydra would read it), else the
    text itself."""
    words = {"true": True, "false": False, "null": None}
    if text.lower() in words:
        return words[text.lower()]
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def flatten(config: Mapping | list, prefix: str = "") -> dict[str, object]:
    """A nested config as dotted keys (``{"optim": {"lr": 1}}`` -> ``{"optim.lr": 1}``);
    lists stay values."""
    flat: dict[str, object] = {}
    if not isinstance(config, Mapping):
        return flat
    for key, value in config.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            flat.update(flatten(value, dotted + "."))
        else:
            flat[dotted] = value
    return flat


def failure_message(path: Path) -> str:
    """Why a run without ``metrics.json`` failed: the ``message``/``error`` of
    ``error.json``, else the last line of ``error.txt``, else a generic note."""
    error_json = path / "error.json"
    if error_json.is_file():
        try:
            record = json.loads(error_json.read_text())
        except json.JSONDecodeError:
            record = {}
        if isinstance(record, Mapping):
            for key in ("message", "error"):
                if record.get(key):
                    return str(record[key])[:300]
    error_txt = path / "error.txt"
    if error_txt.is_file():
        lines = [line for line in error_txt.read_text().splitlines() if line.strip()]
        if lines:
            return lines[-1].strip()[:300]
    return "no metrics.json (failed or still running)"


# ------------------------------------------------------------------------------------------
# Training curves


def continued(launches: Iterable[Mapping[str, Curve]]) -> dict[str, Curve]:
    """One stage's curves from its launches in order (a resumed run logs into a new CSV
    version or W&B folder). A launch replaces the points an earlier one logged at or after its
    own first step: after a hard kill, training resumes from the last saved step and logs the
    steps after it again, and those, not the lost run's, belong to the curve."""
    curves: dict[str, Curve] = {}
    for launch in launches:
        steps = [x for points in launch.values() for x, _ in points]
        if not steps:
            continue
        start = min(steps)
        curves = {key: [(x, y) for x, y in points if x < start] for key, points in curves.items()}
        for key, points in launch.items():
            curves.setdefault(key, []).extend(points)
    return {key: points for key, points in curves.items() if points}


def read_csv_curves(directory: Path) -> dict[str, Curve]:
    """The ``train/*`` and ``val/*`` curves of Lightning's CSV logger under ``directory``
    (``csv/version_*/metrics.csv``, versions in order: a resumed run continues in the next
    one, see `continued`), x = the ``step`` column."""
    launches = []
    for path in sorted(directory.glob("csv/version_*/metrics.csv"), key=_natural_key):
        curves: dict[str, Curve] = {}
        with open(path, newline="") as file:
            for row in csv.DictReader(file):
                step = row.get("step")
                if not step:
                    continue
                for key, text in row.items():
                    if key and key.startswith(CURVE_PREFIXES) and text:
                        curves.setdefault(key, []).append((float(step), float(text)))
        launches.append(curves)
    return continued(launches)


def read_wandb_curves(run_file: Path) -> dict[str, Curve]:
    """The ``train/*`` and ``val/*`` curves of an offline W&B run file (``run-*.wandb``), x =
    Lightning's ``trainer/global_step`` (else W&B's ``_step``). Read in-process
    (`distill.wandb_setup.read_history`); if that fails (a format this reader does not know),
    by W&B's own reader, ``wandb leet inspect --json`` (no network). Raises RuntimeError if
    both fail."""
    try:
        rows = list(read_history(run_file))
    except Exception:  # any parse failure: the slower official reader decides
        rows = list(_wandb_history_by_leet(run_file))
    curves: dict[str, Curve] = {}
    for item in rows:
        step = item.get("trainer/global_step", item.get("_step"))
        if not isinstance(step, int | float):
            continue
        for key, value in item.items():
            if key.startswith(CURVE_PREFIXES) and isinstance(value, int | float):
                curves.setdefault(key, []).append((float(step), float(value)))
    return curves


def _wandb_history_by_leet(run_file: Path) -> Iterator[dict[str, object]]:
    command = [sys.executable, "-m", "wandb", "leet", "inspect", "--json", str(run_file)]
    # Offline mode also keeps the reader from sending its own telemetry.
    environment = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true"}
    done = subprocess.run(
        command, capture_output=True, text=True, env=environment, timeout=WANDB_READ_TIMEOUT_S
    )
    if done.returncode != 0:
        message = (done.stderr.strip().splitlines() or ["no message"])[-1]
        raise RuntimeError(f"`wandb leet inspect` failed on {run_file}: {message}")
    for line in done.stdout.splitlines():
        if '"history"' in line:
            yield json.loads(line).get("history", {}).get("item", {})


def read_curves(runs: Iterable[Run]) -> tuple[dict[str, dict[str, dict[str, Curve]]], list[str]]:
    """Training curves of every finished run: ``{stage: {curve key: {run name: curve}}}``,
    from the CSV logger where a stage has one, else from its offline W&B run files (read in
    parallel). Also returns notes on the curves that could not be read."""
    curves: dict[str, dict[str, dict[str, Curve]]] = {}
    notes: list[str] = []
    wandb_jobs: list[tuple[str, str, Path]] = []
    for run in runs:
        if run.failed:
            continue
        for stage, directory in run.stages():
            stage_curves = read_csv_curves(directory)
            if stage_curves:
                _add(curves, stage, run.name, stage_curves)
            else:
                wandb_jobs += [
                    (stage, run.name, file)
                    for file in sorted(directory.glob("wandb/offline-run-*/run-*.wandb"))
                ]
    if wandb_jobs:
        with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
            results = list(pool.map(_try_read_wandb, [file for _, _, file in wandb_jobs]))
        launches: dict[tuple[str, str], list[dict[str, Curve]]] = {}
        for (stage, name, _), (stage_curves, note) in zip(wandb_jobs, results, strict=True):
            if note:
                notes.append(f"{name} ({stage}): curves skipped, {note}")
            launches.setdefault((stage, name), []).append(stage_curves)
        for (stage, name), stage_launches in launches.items():
            _add(curves, stage, name, continued(stage_launches))
    return curves, notes


def _try_read_wandb(run_file: Path) -> tuple[dict[str, Curve], str]:
    try:
        return read_wandb_curves(run_file), ""
    except (OSError, RuntimeError, ValueError, subprocess.TimeoutExpired) as error:
        return {}, str(error)


def _add(curves: dict, stage: str, name: str, stage_curves: dict[str, Curve]) -> None:
    for key, points in stage_curves.items():
        finite = [(x, y) for x, y in points if math.isfinite(y)]
        if finite:
            curves.setdefault(stage, {}).setdefault(key, {}).setdefault(name, []).extend(finite)
