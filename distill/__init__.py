"""distill: probability density distillation of normalizing flows (MAF teacher -> IAF student)."""

import os

# How long an idle OpenMP thread of torch's pool (GNU libgomp, Linux wheels) spins before it
# sleeps. Read once, when torch loads: importing distill before torch sets it. It matters only
# on more than one thread (cpu_threads; the default is one). A flow's operations are small and
# follow each other within microseconds: a thread that sleeps at once (OMP_WAIT_POLICY=PASSIVE,
# this package's setting until session 10) is woken by the kernel for each of them, and a notes
# student's step on two threads took 0.212 s, no faster than on one (0.206 s); spinning about
# 3,000 rounds took it to 0.134 s. Long spins hurt when another process holds a core: then 2
# threads took 0.367 s at 3,000 rounds, 0.95 s at 30,000 and 0.270 s passive, against 0.205 s
# on one thread (experiments/results/notes_session10.md). Exporting OMP_WAIT_POLICY or
# GOMP_SPINCOUNT chooses otherwise.
if "OMP_WAIT_POLICY" not in os.environ:
    os.environ.setdefault("GOMP_SPINCOUNT", "3000")

__version__ = "0.1.0"
