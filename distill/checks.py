"""One validation pass over a composed config before any training: types, ranges and
combinations, each error naming its key and the fix, so a bad value costs seconds rather than a
trained teacher. The builders check their own arguments again when they run; this pass only
moves the failure to the start."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from distill.losses import LOSSES, SPECTRAL, DistillationObjective
from distill.models.optim import OPTIMIZERS, SCHEDULES


class ConfigError(ValueError):
    """A config value that cannot work, named by its key."""


def _get(cfg: DictConfig, key: str) -> Any:
    return OmegaConf.select(cfg, key, throw_on_missing=False)


def _integer(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


# key (relative to its stage node, or absolute with a leading "/") -> (test, what it must be)
Rule = tuple[Callable[[Any], bool], str]
STAGE_RULES: dict[str, Rule] = {
    "optim.lr": (lambda v: _number(v) and v > 0, "a positive number, e.g. 1e-3"),
    "optim.weight_decay": (lambda v: _number(v) and v >= 0, "a number >= 0"),
    "optim.warmup_steps": (lambda v: _integer(v) and v >= 0, "an integer >= 0"),
    "optim.min_lr_ratio": (lambda v: _number(v) and 0 <= v <= 1, "a number in [0, 1]"),
    "optim.name": (lambda v: v in OPTIMIZERS, f"one of {', '.join(OPTIMIZERS)}"),
    "optim.schedule": (lambda v: v in SCHEDULES, f"one of {', '.join(SCHEDULES)}"),
    "trainer.max_steps": (
        lambda v: _integer(v) and v > 0,
        "a positive integer (the schedule needs a finite horizon; -1 and 0 train nothing useful)",
    ),
    "flow.num_layers": (lambda v: _integer(v) and v >= 1, "an integer >= 1"),
    "flow.hidden_features": (
        lambda v: isinstance(v, Iterable) and len(v) > 0 and all(_integer(w) and w > 0 for w in v),
        "a non-empty list of positive integers, e.g. [128,128]",
    ),
}
STUDENT_RULES: dict[str, Rule] = {
    "loss.num_samples": (lambda v: _integer(v) and v >= 1, "an integer >= 1"),
    "loss.teacher_reuse": (lambda v: _integer(v) and v >= 1, "an integer >= 1"),
    "evaluation.num_kl_samples": (lambda v: _integer(v) and v >= 1, "an integer >= 1"),
    "evaluation.num_timing_samples": (lambda v: _integer(v) and v >= 1, "an integer >= 1"),
    "evaluation.cpu_threads": (
        lambda v: v == "all" or (_integer(v) and v >= 1),
        "all or an integer >= 1 (null: the run's cpu_threads)",
    ),
    "ema_decay": (lambda v: _number(v) and 0 <= v < 1, "a number in [0, 1)"),
    "init": (lambda v: v in ("teacher", "identity"), "teacher or identity"),
    "loss.terms": (
        lambda v: (
            bool(v) and set(v) <= set(LOSSES) and all(_number(w) and w >= 0 for w in v.values())
        ),
        f"a mapping of loss names ({', '.join(LOSSES)}) to weights >= 0",
    ),
}
GLOBAL_RULES: dict[str, Rule] = {
    "seed": (lambda v: _integer(v) and 0 <= v < 2**32, "an integer in [0, 2^32)"),
    "data.batch_size": (lambda v: _integer(v) and v > 0, "a positive integer"),
}


def _check(cfg: DictConfig, key: str, rule: Rule) -> None:
    value = _get(cfg, key)
    if value is None:
        return  # absent here (e.g. a flow without hidden_features): the builder's default
    test, expected = rule
    if isinstance(value, DictConfig | list) or hasattr(value, "_content"):
        value = OmegaConf.to_container(value) if not isinstance(value, list) else value
    if not test(value):
        raise ConfigError(f"{key}={value!r} is not valid: it must be {expected}")


def _per_step_flows(cfg: DictConfig, term: str, affine: bool) -> None:
    """The per-step losses need a MAF teacher and an IAF student sharing one ordering (no
    permutations, no BatchNorm; WaveNet flows over time always qualify), and ClariNet's closed
    form affine ones."""
    for stage, builders in (
        ("teacher", ("build_maf", "build_wavenet_maf")),
        ("student", ("build_iaf", "build_wavenet_iaf")),
    ):
        flow = cfg[stage].flow
        target = str(flow.get("_target_", ""))
        over_time = target.endswith(builders[1])
        fits = (
            target.endswith(builders)
            and (over_time or flow.get("permutation") == "none")
            and (not affine or flow.get("transform", "affine") == "affine")
            and not flow.get("batch_norm", False)
        )
        if not fits:
            kind = "an affine" if affine else "a"
            raise ConfigError(
                f"student.loss.terms.{term} needs {kind} MAF teacher and {kind} IAF student "
                "with one shared ordering: use flow@teacher.flow=maf_fixed_order "
                "flow@student.flow=iaf_fixed_order (or the WaveNet flows over time), or "
                "another loss"
            )


#: Evaluation settings read only by sequence (WaveNet) students.
SEQUENCE_EVALUATION = ("num_nll_sequences", "timing_seconds", "timing_rounds")


def _sequence_student(cfg: DictConfig) -> bool:
    """Whether the student is a WaveNet flow over sequences."""
    return "wavenet" in str(cfg.student.flow.get("_target_", ""))


def _evaluation_keys(cfg: DictConfig) -> None:
    """A sequence student's evaluation needs its keys; a vector student's must not get them
    (they would be silently unused)."""
    evaluation = cfg.student.get("evaluation") or {}
    if _sequence_student(cfg):
        missing = [key for key in SEQUENCE_EVALUATION if evaluation.get(key) is None]
        if missing:
            raise ConfigError(
                f"a WaveNet student's evaluation needs student.evaluation.{missing[0]} (set "
                f"{', '.join(SEQUENCE_EVALUATION)}, as experiment=notes does)"
            )
        checks = {
            "num_nll_sequences": (lambda v: _integer(v) and v >= 1, "an integer >= 1"),
            "timing_seconds": (lambda v: _number(v) and v >= 0, "a number >= 0 (0: no timing)"),
            "timing_rounds": (lambda v: _integer(v) and v >= 1, "an integer >= 1"),
        }
        for key, rule in checks.items():
            _check(cfg, f"student.evaluation.{key}", rule)
        if evaluation.get("num_timing_samples") is not None:
            raise ConfigError(
                "student.evaluation.num_timing_samples is read only for students over vectors; "
                "a WaveNet student is timed on timing_seconds of audio at batch 1 and 16: set "
                "num_timing_samples=null"
            )
        return
    unused = [key for key in SEQUENCE_EVALUATION if evaluation.get(key) is not None]
    if unused:
        raise ConfigError(
            f"student.evaluation.{unused[0]} is read only for WaveNet students over sequences; "
            "this student is a flow over vectors: remove it"
        )


def validate(cfg: DictConfig, stages: Iterable[str]) -> None:
    """Raise a `ConfigError` naming the first invalid value of ``cfg`` for the ``stages`` a
    command runs ("teacher", "student"; the student alone distills ``teacher.ckpt``), before
    anything is trained."""
    if "teacher" not in stages and _get(cfg, "teacher.ckpt") is None:
        raise ConfigError(
            "distill-student needs a trained teacher: pass teacher.ckpt=<path to a .ckpt "
            "written by distill-teacher> (e.g. <run dir>/checkpoints/best.ckpt)"
        )
    for key, rule in GLOBAL_RULES.items():
        _check(cfg, key, rule)
    _check_optimized_metric(cfg, stages)
    for stage in stages:
        rules = {**STAGE_RULES, **(STUDENT_RULES if stage == "student" else {})}
        for key, rule in rules.items():
            _check(cfg, f"{stage}.{key}", rule)
        resume = cfg[stage].get("resume")
        if resume is not None and resume != "last" and not Path(str(resume)).is_file():
            raise ConfigError(
                f"{stage}.resume={resume} is not a file: pass a checkpoint written by this "
                f"stage, or `last` with hydra.run.dir=<the run's directory>"
            )
    if "student" in stages:
        _check_schedule(cfg)
        _evaluation_keys(cfg)
        _check_objective(cfg)
        terms = cfg.student.loss.terms
        for term in ("reverse_kl_closed_form", "log_std_regularizer"):
            if term in terms:
                _per_step_flows(cfg, term, affine=True)
        if "reverse_kl_per_step" in terms:
            _per_step_flows(cfg, "reverse_kl_per_step", affine=False)


def _check_objective(cfg: DictConfig) -> None:
    """``student.loss`` as `DistillationObjective` takes it (each of its refusals, such as a
    teacher bank smaller than a step's samples, now rather than after the teacher), and the
    spectral terms only where they have spectra: sequences, and for ``shape_power`` a context
    to pair each sample with its data row."""
    loss = OmegaConf.to_container(cfg.student.loss, resolve=True)
    try:
        DistillationObjective(**loss)
    except TypeError as error:  # a key the objective does not take
        raise ConfigError(f"student.loss has a key the objective does not read: {error}") from None
    except ValueError as error:
        raise ConfigError(f"student.{error}") from None
    used = {term for term, weight in loss["terms"].items() if weight}
    if not _sequence_student(cfg):
        spectral = sorted(used & SPECTRAL)
        if spectral:
            raise ConfigError(
                f"student.loss.terms.{spectral[0]} compares power spectra of sequences, but the "
                "student is a flow over vectors: remove the term (it is for WaveNet flows over "
                "time, e.g. experiment=notes)"
            )
    elif "shape_power" in used and _get(cfg, "data.conditioning") in (None, "none"):
        raise ConfigError(
            "student.loss.terms.shape_power pairs each sample with the data row of its context, "
            "but data.conditioning=none: use student.loss.terms.power, or a conditioning"
        )


def _check_optimized_metric(cfg: DictConfig, stages: Iterable[str]) -> None:
    """``optimized_metric`` must be a metric the command reports: ``data/...``, ``teacher/...``
    (the student stage reports its teacher's figures too) or ``student/...`` when the student
    runs. Which keys exist within a namespace is known only after the run, which checks it."""
    key = _get(cfg, "optimized_metric")
    if key is None:
        return
    namespaces = {"data", "teacher", *stages}
    namespace = str(key).split("/", 1)[0]
    if "/" not in str(key) or namespace not in namespaces:
        raise ConfigError(
            f"optimized_metric={key} is not a metric this command reports: it must start "
            f"with one of {', '.join(f'{n}/' for n in sorted(namespaces))} "
            "(e.g. teacher/test_nll, student/kl_trimmed_mean)"
        )


def _check_schedule(cfg: DictConfig) -> None:
    """``student.loss.schedule``: term -> ``[[progress, factor], ...]``, each term one of
    ``loss.terms``, progress increasing in [0, 1], factors >= 0."""
    schedule = _get(cfg, "student.loss.schedule")
    if not schedule:
        return
    schedule = OmegaConf.to_container(schedule)
    terms = set(cfg.student.loss.terms)
    for term, knots in schedule.items():
        progress = [knot[0] for knot in knots] if isinstance(knots, list) else []
        valid = (
            term in terms
            and progress
            and all(isinstance(k, list) and len(k) == 2 and all(map(_number, k)) for k in knots)
            and all(0 <= p <= 1 for p in progress)
            and all(a < b for a, b in zip(progress, progress[1:], strict=False))
            and all(k[1] >= 0 for k in knots)
        )
        if not valid:
            raise ConfigError(
                f"student.loss.schedule.{term}={knots!r} is not valid: it must name a term of "
                f"student.loss.terms ({', '.join(sorted(terms))}) and list [progress, factor] "
                "pairs with progress increasing in [0, 1] and factors >= 0"
            )
