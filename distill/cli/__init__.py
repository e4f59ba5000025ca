"""Command-line entry points: thin Hydra wrappers around `distill.stages`."""
