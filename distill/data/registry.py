"""Data sets by name: `DATASETS` and `build_datamodule`."""

from __future__ import annotations

import inspect

from distill.data.audio import NotesDataModule, WaveformDataModule
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
    "notes": NotesDataModule,
    "waveform": WaveformDataModule,
}

#: The names `build_datamodule` accepts.
DATASETS = tuple(_MODULES)


def _options(module: type) -> list[str]:
    """The keyword arguments ``module`` accepts, following ``**kwargs`` passed on to its bases."""
    options: list[str] = []
    for cls in module.__mro__:
        if "__init__" not in vars(cls):
            continue
        parameters = list(inspect.signature(cls.__init__).parameters.values())[1:]
        options += [p.name for p in parameters if p.kind is not p.VAR_KEYWORD]
        if not any(p.kind is p.VAR_KEYWORD for p in parameters):
            break
    return list(dict.fromkeys(options))


def build_datamodule(name: str, **kwargs) -> DensityDataModule:
    """The data module called ``name`` (one of `DATASETS`), built with ``kwargs`` (plain
    values: sizes, seed, batch_size, ...; see each module's signature)."""
    if name not in _MODULES:
        raise ValueError(f"unknown data set {name!r}: choose one of {', '.join(DATASETS)}")
    module = _MODULES[name]
    # the name selects the module, the dimension is the data set's own: neither is an option
    options = [key for key in _options(module) if key not in ("name", "features")]
    unknown = sorted(set(kwargs) - set(options))
    if unknown:
        raise ValueError(
            f"data set {name!r} has no option(s) {unknown}: its options are {', '.join(options)}"
        )
    datamodule = module(name, **kwargs) if module is ToyDataModule else module(**kwargs)
    # How to build it again (plain values), e.g. for a distilled student's test data.
    datamodule.spec = {"_target_": "distill.data.build_datamodule", "name": name, **kwargs}
    return datamodule
