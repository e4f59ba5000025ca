"""distill: probability density distillation of normalizing flows (MAF teacher -> IAF student)."""

__version__ = "0.1.0"
