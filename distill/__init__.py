"""distill: probability density distillation of normalizing flows (MAF teacher -> IAF student)."""

import os

# Busy-waiting OpenMP threads slow the small matrix products of flows many-fold on shared CPUs
# (PITFALLS.md); this must be set before torch starts its thread pool, so importing distill
# before torch sets it. Export OMP_WAIT_POLICY to choose otherwise.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"
