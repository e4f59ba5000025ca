"""What every entry point shares: user errors as one line instead of a traceback, failed jobs
of a sweep recorded instead of ending it, and the value a sweep optimizes."""

from __future__ import annotations

import errno
import functools
import json
import logging
import math
import os
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import hydra
from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from distill.models.base import NonFiniteTrainingError
from distill.threads import set_cpu_threads
from distill.training import requeued, run_overrides, sweep_dir

USER_ERRORS = (ValueError, FileNotFoundError, NonFiniteTrainingError)
# Errors of the run's own disk: a full disk, a read-only or forbidden directory.
DISK_ERRORS = (errno.ENOSPC, errno.EROFS, errno.EACCES, errno.EDQUOT)


def _is_user_error(error: BaseException) -> bool:
    if isinstance(error, USER_ERRORS):
        return True
    return isinstance(error, OSError) and error.errno in DISK_ERRORS


FAILURES = "failures.jsonl"
log = logging.getLogger("distill")  # in a sweep's directory: one line per failed job


def exit_on_user_error(task: Callable[[DictConfig], Any]) -> Callable[[DictConfig], Any]:
    """Print a user error (bad config value, bad data, bad checkpoint, non-finite training)
    as one line, instead of a traceback, and exit 1; in a multirun, record it in the job's
    directory (``error.json``) and the sweep's ``failures.jsonl`` and let the sweep go on.
    DISTILL_TRACEBACK=1 shows the trace."""

    @functools.wraps(task)
    def wrapper(cfg: DictConfig) -> Any:
        logging.captureWarnings(True)  # warnings go to the run's log file too
        try:
            return task(cfg)
        except Exception as error:
            if os.environ.get("DISTILL_TRACEBACK") or not _is_user_error(error):
                raise
            print(f"error: {error}", file=sys.stderr)
            sweep = sweep_dir()
            if sweep is None:
                sys.exit(1)
            record_failure(Path(cfg.paths.output_dir), sweep, error)
            return math.nan

    return wrapper


def record_failure(run_dir: Path, sweep: Path, error: BaseException) -> None:
    """``run_dir/error.json`` and a line of ``sweep/failures.jsonl`` for a failed sweep job."""
    record = {
        "run_dir": str(run_dir),
        "overrides": run_overrides(),
        "type": type(error).__name__,
        "error": str(error),
    }
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "error.json").write_text(json.dumps(record, indent=2) + "\n")
    with open(sweep / FAILURES, "a") as failures:
        failures.write(json.dumps(record) + "\n")


class RunDirectoryGuard(Callback):
    """Refuses, before Hydra writes anything into it, a run directory that cannot be written,
    or that already holds a run (its metrics, checkpoints or stages) unless the command
    resumes a stage: two runs in one directory would mix their configs, metrics and
    checkpoints."""

    HELD = ("metrics.json", "checkpoints", "teacher", "student", "report.md")

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        run_dir = Path(config.hydra.run.dir)
        existing = next(p for p in (run_dir, *run_dir.absolute().parents) if p.exists())
        if not os.access(existing, os.W_OK | os.X_OK):
            print(
                f"error: cannot write the run directory {run_dir} ({existing} is read-only or "
                "not yours): pass hydra.run.dir=<a writable directory>",
                file=sys.stderr,
            )
            sys.exit(1)
        held = [name for name in self.HELD if (run_dir / name).exists()]
        resuming = requeued() or any(
            config.get(stage, {}).get("resume") for stage in ("teacher", "student")
        )
        if held and not resuming:
            print(
                f"error: run directory {run_dir} already holds a run ({', '.join(held)}): "
                "resume it with teacher.resume=last (or student.resume=last), or choose another "
                "hydra.run.dir",
                file=sys.stderr,
            )
            sys.exit(1)


class SweepSummary(Callback):
    """At the end of a multirun: one line saying how many jobs failed and where their errors
    are, and exit status 1 if any did (so ``&&`` chains and schedulers see the failure)."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        path = Path(config.hydra.sweep.dir) / FAILURES
        if not path.is_file():
            return
        failed = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        print(
            f"error: {len(failed)} job(s) of the sweep failed; their errors are in {path} "
            f"and in each job's error.json (first: {failed[0]['error']})",
            file=sys.stderr,
        )
        sys.exit(1)


def entry_point(
    config_name: str,
    run: Callable[[DictConfig], Mapping[str, Any] | None],
    *summaries: str,
) -> Callable[[], Any]:
    """The Hydra ``main`` of a command: compose ``config_name``, ``run`` it (user errors as one
    line), log a summary (the first of ``summaries``, format strings over the metrics and
    ``run_dir``, whose metrics the run has: vector and sequence runs report different ones) and
    return the ``optimized_metric`` to a sweeper; other ranks of a distributed run return
    None."""

    @hydra.main(version_base="1.3", config_path="pkg://distill.conf", config_name=config_name)
    @exit_on_user_error
    def main(cfg: DictConfig) -> float | None:
        set_cpu_threads(cfg.get("cpu_threads", "auto"))
        metrics = run(cfg)
        if metrics is None:
            return None
        values = {"run_dir": cfg.paths.output_dir, **metrics}
        for summary in summaries:
            try:
                log.info(summary.format_map(values))
                break
            except KeyError:
                continue
        return optimized_metric(cfg, metrics)

    return main


def optimized_metric(cfg: DictConfig, metrics: Mapping[str, Any]) -> float:
    """The value a sweep optimizes: ``metrics[cfg.optimized_metric]``."""
    key = cfg.optimized_metric
    if key not in metrics:
        raise ValueError(
            f"optimized_metric={key} is not a metric of this run: choose one of "
            + ", ".join(sorted(k for k, v in metrics.items() if isinstance(v, int | float)))
        )
    return float(metrics[key])
