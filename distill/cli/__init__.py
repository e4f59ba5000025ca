"""Command-line entry points (thin Hydra wrappers)."""

import os

# Busy-waiting OpenMP threads slow the small matrix products of flows many-fold on shared
# CPUs; set before torch starts its thread pool. Export OMP_WAIT_POLICY to choose otherwise.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
