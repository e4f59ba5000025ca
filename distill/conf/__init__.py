"""Hydra configs of distill, shipped inside the package (found by `pkg://distill.conf`)."""
