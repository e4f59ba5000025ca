"""Torch's intra-op threads on CPU, as the configs set them (``cpu_threads``, and
``student.evaluation.cpu_threads`` for the evaluation after training)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch


def usable_cores() -> int:
    """The CPUs this process may run on (its affinity where the platform has one: SLURM and
    ``taskset`` set it)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def thread_count(value: Any, key: str, accepted: str) -> int:
    """``all`` -> `usable_cores`; an integer >= 1 -> itself; anything else is refused by
    ``key``, saying what it ``accepted``."""
    if value == "all":
        return usable_cores()
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{key}={value!r} is not valid: it must be {accepted}")
    return value


def set_cpu_threads(value: Any) -> None:
    """Torch's intra-op threads on CPU (``cpu_threads``): an integer >= 1; ``auto``: one
    thread unless the environment sets ``OMP_NUM_THREADS`` (then torch's reading of it); or
    ``all``: one per core this process may use (in DDP on one machine, every process takes
    them all).

    The flows over vectors are small (a few 128-wide layers on batches of 512): on 2 cores the
    default job took 571 s with torch's default of one thread per core and 266 s with one
    (with idle OpenMP threads that slept at once; see `distill/__init__.py`). The WaveNets of
    the notes are larger: with idle threads spinning briefly, a student's training step on
    this 2-core machine took 0.134 s on two threads and 0.206 s on one, alone; with another
    process on one core, 0.367 s on two and 0.205 s on one (experiments/results/
    notes_session10.md). More threads pay only on cores nothing else uses."""
    if value == "auto":
        if "OMP_NUM_THREADS" not in os.environ:
            torch.set_num_threads(1)
        return
    torch.set_num_threads(thread_count(value, "cpu_threads", "auto, all or an integer >= 1"))


@contextmanager
def cpu_threads(value: Any, key: str = "student.evaluation.cpu_threads") -> Iterator[None]:
    """Torch's intra-op threads set to ``value`` (`thread_count`) inside the block, restored
    after; ``None`` leaves them as they are."""
    if value is None:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(thread_count(value, key, "all or an integer >= 1 (null: the run's)"))
    try:
        yield
    finally:
        torch.set_num_threads(before)
