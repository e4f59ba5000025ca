"""Optimizer and learning-rate schedule from plain hyper-parameters (shared by both models)."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

import torch

OPTIMIZERS = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW}


def _cosine(progress: float, floor: float) -> float:
    return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


def _constant(progress: float, floor: float) -> float:
    return 1.0


#: Learning-rate factor after warm-up, by name: ``(progress in [0, 1], floor) -> factor``.
SCHEDULES = {"cosine": _cosine, "constant": _constant}


def build_optimizer(
    parameters: Iterable[torch.nn.Parameter], optim: Mapping[str, Any], total_steps: int
) -> dict[str, Any]:
    """Lightning's ``configure_optimizers`` answer for ``optim``:

    ``name`` (adam | adamw), ``lr``, ``weight_decay``, ``schedule`` (cosine | constant),
    ``warmup_steps`` (linear warm-up), ``min_lr_ratio`` (the cosine's floor, as a fraction of
    ``lr``). The schedule steps once per optimizer step over ``total_steps``.
    """
    name = optim.get("name", "adam")
    if name not in OPTIMIZERS:
        raise ValueError(f"optim.name must be one of {', '.join(OPTIMIZERS)}, got {name!r}")
    schedule = optim.get("schedule", "cosine")
    if schedule not in SCHEDULES:
        raise ValueError(f"optim.schedule must be one of {', '.join(SCHEDULES)}, got {schedule!r}")
    lr = float(optim.get("lr", 1e-3))
    if lr <= 0:
        raise ValueError(f"optim.lr must be positive, got {lr}")
    optimizer = OPTIMIZERS[name](
        parameters, lr=lr, weight_decay=float(optim.get("weight_decay", 0.0))
    )
    warmup = int(optim.get("warmup_steps", 0))
    floor = float(optim.get("min_lr_ratio", 0.0))
    total = max(int(total_steps), 1)

    after_warmup = SCHEDULES[schedule]

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return after_warmup(min((step - warmup) / max(total - warmup, 1), 1.0), floor)

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
    return {
        "optimizer": optimizer,
        "lr_scheduler": {"scheduler": scheduler, "interval": "step", "frequency": 1},
    }
