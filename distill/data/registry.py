"""Data sets by name: `DATASETS` and `build_datamodule`."""

from __future__ import annotations

import inspect

from distill.data.datamodule import DensityDataModule
from distill.data.digits import DigitsDataModule
from distill.data.files import FileDataModule
from distill.data.siggraph import SiggraphDataModule
from distill.data.toys import TOYS, MoonsDataModule, ToyDataModule

_MODULES = {
    "moons": MoonsDataModule,
    "siggraph": SiggraphDataModule,
    **{name: ToyDataModule for name in TOYS},
    "digits": DigitsDataModule,
    "file": FileDataModule,
}

#: The names `build_datamodule` accepts.
DATASETS = tuple(_MODULES)


def build_datamodule(name: str, **kwargs) -> DensityDataModule:
    """The data module called ``name`` (one of `DATASETS`), built with ``kwargs`` (plain
    values: sizes, seed, batch_size, ...; see each module's signature)."""
    if name not in _MODULES:
        raise ValueError(f"unknown data set {name!r}: choose one of {', '.join(DATASETS)}")
    module = _MODULES[name]
    options = [key for key in inspect.signature(module).parameters if key != "name"]
    unknown = sorted(set(kwargs) - set(options))
    if unknown:
        raise ValueError(
            f"data set {name!r} has no option(s) {unknown}: its options are {', '.join(options)}"
        )
    if module is ToyDataModule:
        return module(name, **kwargs)
    return module(**kwargs)
