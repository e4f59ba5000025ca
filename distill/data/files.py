"""The user's own data: an (N, D) array in a ``.npy`` or ``.csv`` file, validated on load."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from distill.data.datamodule import SplitDataModule
from distill.data.validation import check_matrix, split_sizes


def _is_number(cell: str) -> bool:
    try:
        float(cell)
    except ValueError:
        return False
    return True


def _read_csv(path: Path) -> np.ndarray:
    """Rows of numbers, after an optional header (a first row with no number in it); an empty
    cell reads as NaN (a missing value), any other non-number is an error naming its column."""
    with path.open(newline="") as file:
        reader = csv.reader(file)
        lines = [(reader.line_num, row) for row in reader if any(cell.strip() for cell in row)]
    if not lines:
        raise ValueError(f"{path} holds no rows: write one sample per row, comma-separated")
    names = [f"column {index}" for index in range(len(lines[0][1]))]
    if not any(_is_number(cell) for cell in lines[0][1]):
        header = [name.strip() for name in lines[0][1]]
        names = [f"column {name!r}" for name in header]
        lines = lines[1:]
        if not lines:
            raise ValueError(
                f"{path} holds a header ({','.join(header)}) but no rows: write one sample per "
                "row below it, comma-separated"
            )
    data = np.empty((len(lines), len(names)))
    for row_index, (line, row) in enumerate(lines):
        if len(row) != len(names):
            raise ValueError(
                f"{path} line {line} has {len(row)} values but the file has {len(names)} "
                "columns: every row needs one value per column"
            )
        for column, (name, cell) in enumerate(zip(names, row, strict=True)):
            if not cell.strip():
                data[row_index, column] = np.nan
            elif _is_number(cell):
                data[row_index, column] = float(cell)
            else:
                raise ValueError(
                    f"{path}: {name} is not numeric (line {line} holds {cell!r}): drop the "
                    "column or encode it as numbers"
                )
    return data


def load_matrix(path: str | Path) -> np.ndarray:
    """The (N, D) array in ``path`` (``.npy`` or ``.csv``), checked to be 2-D and finite.

    Raises FileNotFoundError for a missing file and a one-line ValueError for anything else
    that is wrong, naming the file and, where it applies, the rows or the column.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(
            f"data file {path} not found (resolved to {path.resolve()}): check the path"
        )
    suffix = path.suffix.lower()
    if suffix == ".npy":
        if path.stat().st_size == 0:
            raise ValueError(
                f"{path} is an empty file (0 bytes): save an (N, D) float array into it with "
                "numpy.save"
            )
        try:
            data = np.load(path, allow_pickle=False)
        except (ValueError, EOFError) as error:  # EOFError: a file cut short
            raise ValueError(
                f"{path} is not a numeric .npy array ({error}): save it with numpy.save from "
                "a float array"
            ) from None
    elif suffix == ".csv":
        data = _read_csv(path)
    else:
        raise ValueError(f"{path} is neither .npy nor .csv: save the data in one of those")
    check_matrix(data, str(path))
    return data


class FileDataModule(SplitDataModule):
    """Data from the user's ``.npy`` or ``.csv`` file of shape (N, D), loaded and validated at
    construction, split into disjoint train/val/test rows by ``seed``; standardized."""

    name = "file"

    def __init__(self, path: str, **splits: Any):
        data = load_matrix(path)
        super().__init__(data.shape[1], **splits)
        split_sizes(len(data), self.val_fraction, self.test_fraction, str(path))
        self.path = str(path)
        self.rows = torch.as_tensor(data, dtype=torch.float32)

    def _rows(self) -> Tensor:
        return self.rows
