"""Data sets as LightningDataModules, with their fitted preprocessing as fixed bijectors.

Batches are float32 ``(B, D)`` tensors in data space. Each module's ``preprocessing`` maps
model space -> data space (forward), so ``Chain([flow_bijector, preprocessing])`` gives
log-likelihoods and samples in data space; ``entropy`` is the true entropy (nats) when known.
Sequence data sets (`distill.data.audio`: notes, waveform) batch waveforms ``(B, C, T)``, with
their contexts when conditional, and have no preprocessing.
"""

from distill.data.audio import (
    CONDITIONINGS,
    NotesDataModule,
    SequenceDataModule,
    WaveformDataModule,
)
from distill.data.datamodule import DensityDataModule, GeneratedDataModule, to_bits_per_dim
from distill.data.digits import DigitsDataModule
from distill.data.files import FileDataModule, load_matrix
from distill.data.preprocessing import fit_preprocessing, fit_standardize
from distill.data.registry import DATASETS, build_datamodule
from distill.data.siggraph import Glyphs, SiggraphDataModule
from distill.data.toys import TOYS, MoonsDataModule, ToyDataModule

__all__ = [
    "CONDITIONINGS",
    "DATASETS",
    "TOYS",
    "DensityDataModule",
    "DigitsDataModule",
    "FileDataModule",
    "GeneratedDataModule",
    "Glyphs",
    "MoonsDataModule",
    "NotesDataModule",
    "SequenceDataModule",
    "SiggraphDataModule",
    "ToyDataModule",
    "WaveformDataModule",
    "build_datamodule",
    "fit_preprocessing",
    "fit_standardize",
    "load_matrix",
    "to_bits_per_dim",
]
