"""`distill`: the main job. Trains a teacher (or takes ``teacher.ckpt``), distills a student,
writes one report (Hydra entry point; config: distill.yaml).

The run directory holds ``teacher/`` and ``student/`` (each stage's checkpoints and logger
output; the teacher's metrics, figures and report once it is finished) and, at the top,
``metrics.json``, ``plots/`` and ``report.md``. In a multirun sweep
the teachers live in ``<sweep dir>/teachers/<hash of the teacher's config>/``: jobs that differ
only in student settings train their teacher once and share it.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from distill.checks import validate
from distill.cli.common import entry_point
from distill.models import TeacherModule
from distill.report import append_overrides_history, key_settings, write_run
from distill.stages import distill_student, load_teacher, train_teacher
from distill.training import run_overrides, sweep_dir

log = logging.getLogger(__name__)


def teacher_key(cfg: DictConfig) -> str:
    """A hash of everything that determines the trained teacher: the data, the teacher node
    (but its ``ckpt`` and ``resume``) and the seed."""
    teacher = OmegaConf.to_container(cfg.teacher, resolve=True)
    teacher.pop("ckpt", None), teacher.pop("resume", None)
    facts = {"data": OmegaConf.to_container(cfg.data, resolve=True), "teacher": teacher}
    facts["seed"] = cfg.seed
    return hashlib.sha256(json.dumps(facts, sort_keys=True).encode()).hexdigest()[:12]


def finished_teacher(cfg: DictConfig, directory: Path) -> tuple[TeacherModule, dict[str, Any]]:
    """The teacher of ``cfg`` in ``directory``, trained there (or resumed, with
    ``teacher.resume``) by the first job that needs it, under a file lock that parallel
    launchers wait on; a finished one (its ``metrics.json`` written) is loaded instead: by the
    other jobs of a sweep, or when the student stage of a run is resumed."""
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        done = directory / "metrics.json"
        if done.is_file():
            metrics = json.loads(done.read_text())
            log.info("reusing the teacher trained in %s", directory)
            return load_teacher(metrics["teacher/checkpoint"]), metrics
        trained = train_teacher(cfg, directory, student_flow=cfg.student.flow)
        if trained.is_global_zero:
            settings = key_settings(cfg, ("teacher",))
            trained.write(directory, run_overrides(), settings)
        return trained.module, trained.metrics


def run(cfg: DictConfig) -> dict[str, Any] | None:
    """Both stages into ``cfg.paths.output_dir``; the merged metrics (None off rank zero)."""
    validate(cfg, ("student",) if cfg.teacher.ckpt is not None else ("teacher", "student"))
    run_dir = Path(cfg.paths.output_dir)
    append_overrides_history(run_dir, run_overrides())
    sweep = sweep_dir()
    if cfg.teacher.ckpt is not None:
        teacher, metrics = load_teacher(cfg.teacher.ckpt), {"teacher/checkpoint": cfg.teacher.ckpt}
    else:
        directory = run_dir / "teacher" if sweep is None else sweep / "teachers" / teacher_key(cfg)
        teacher, metrics = finished_teacher(cfg, directory)
    student = distill_student(cfg, teacher, run_dir / "student")
    if not student.is_global_zero:
        return None
    metrics = {**metrics, **student.metrics}
    settings = key_settings(cfg, ("teacher", "student"))
    write_run(
        run_dir,
        metrics,
        student.figures,
        run_overrides(),
        settings,
        student.audio,
    )
    return metrics


main = entry_point(
    "distill",
    run,
    "teacher test NLL {teacher/test_nll:.4f}, student {student/test_nll:.4f}; student KL "
    "{student/kl_trimmed_mean:.4f} nats; sampling {sampling/speedup:.1f}x faster; "
    "run dir {run_dir}",
    "teacher test NLL {teacher/test_nll_per_step:.4f} nats per step, student "
    "{student/test_nll_per_step:.4f}; student KL {student/kl_per_step_trimmed_mean:.4f} nats per "
    "step; one second of audio sampled {sampling/b1_speedup:.1f}x faster; run dir {run_dir}",
)
