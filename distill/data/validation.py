"""Checks on data before training, with errors that say what is wrong and how to fix it."""

from __future__ import annotations

import itertools
import math

import numpy as np
from torch import Tensor

FLOAT32_MAX = float(np.finfo(np.float32).max)


def _first_rows(rows: np.ndarray, limit: int = 5) -> str:
    """``"3, 8, 12"`` or ``"3, 8, 12, 20, 31 (first 5 of 9)"``."""
    shown = ", ".join(str(int(row)) for row in rows[:limit])
    return shown if len(rows) <= limit else f"{shown} (first {limit} of {len(rows)})"


def check_matrix(data: np.ndarray | Tensor, source: str) -> None:
    """Raise a one-line ValueError unless ``data`` is a non-empty 2-D (N, D) array of finite
    numbers within float32's range (training runs in float32).

    ``source`` names the data in the message (a file, a split); rows are 0-based.
    """
    data = data.numpy() if isinstance(data, Tensor) else np.asarray(data)
    if data.size == 0:
        raise ValueError(
            f"{source} holds no data (shape {data.shape}): provide an (N, D) array with one "
            "sample per row and at least one column"
        )
    if data.ndim != 2:
        raise ValueError(
            f"{source} has shape {data.shape}, but data must be a 2-D array (N rows, "
            f"D columns): reshape it to (N, D), e.g. flatten each sample into one row"
        )
    if not np.issubdtype(data.dtype, np.number) or np.issubdtype(data.dtype, np.complexfloating):
        raise ValueError(
            f"{source} holds {data.dtype} values, but data must be real numbers: convert it"
        )
    bad = np.flatnonzero(~np.isfinite(data).all(axis=1))
    if len(bad):
        raise ValueError(
            f"{source} has NaN or Inf values in rows {_first_rows(bad)} (0-based): "
            "drop or impute those rows"
        )
    # training runs in float32: a finite float64 beyond its range would become Inf there
    overflow = np.abs(data) > FLOAT32_MAX
    if overflow.any():
        columns = np.flatnonzero(overflow.any(axis=0)).tolist()
        raise ValueError(
            f"{source} has values that overflow float32 (|x| > 3.4e38) in rows "
            f"{_first_rows(np.flatnonzero(overflow.any(axis=1)))} (0-based), column(s) "
            f"{columns}: rescale those columns (e.g. divide by a power of ten) or drop the rows"
        )


def split_sizes(
    num_rows: int, val_fraction: float, test_fraction: float, source: str
) -> tuple[int, int, int]:
    """Row counts ``(train, val, test)`` for disjoint splits of ``num_rows`` rows, with val and
    test the fractions rounded half up; every split must be non-empty and train needs 2 rows (a
    standard deviation)."""
    if not (0 < val_fraction < 1 and 0 < test_fraction < 1 and val_fraction + test_fraction < 1):
        raise ValueError(
            f"val_fraction={val_fraction} and test_fraction={test_fraction} must be in (0, 1) "
            "with a sum below 1, leaving rows for training"
        )

    def sizes(n: int) -> tuple[int, int, int]:
        val, test = math.floor(n * val_fraction + 0.5), math.floor(n * test_fraction + 0.5)
        return n - val - test, val, test

    def enough(n: int) -> bool:
        train, val, test = sizes(n)
        return train >= 2 and val >= 1 and test >= 1

    if not enough(num_rows):
        needed = next(n for n in itertools.count(num_rows + 1) if enough(n))
        raise ValueError(
            f"{source} has {num_rows} rows, too few for train/val/test splits with "
            f"val_fraction={val_fraction} and test_fraction={test_fraction}: provide at least "
            f"{needed} rows or raise the fractions"
        )
    return sizes(num_rows)
