"""The `LightningDataModule` shared by every data set, and its two ways of making splits:
drawing each split from a generator (toys) or splitting a fixed array (digits, files).

Batches are plain float32 tensors ``(B, D)`` in the data's own space (no labels). The fitted
`preprocessing` bijector maps model space -> data space (forward); composing it after a flow
keeps every log-likelihood in data space.
"""

from __future__ import annotations

import math

import lightning as L
import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from distill.data.preprocessing import fit_preprocessing
from distill.data.validation import check_matrix, split_sizes
from distill.flows.base import Chain


class Rows(Dataset):
    """The rows of a ``(N, D)`` tensor as a map-style dataset, fetched a whole batch at a
    time: ``__getitems__`` indexes the tensor once per batch instead of once per row
    (DataLoader uses it when present; DDP's distributed sampler still shards the indices)."""

    def __init__(self, rows: Tensor):
        self.rows = rows

    def __len__(self) -> int:
        return len(self.rows)

    def transform(self, batch: Tensor) -> Tensor:
        """Applied to every fetched ``(B, D)`` batch; the identity here."""
        return batch

    def __getitem__(self, index: int) -> Tensor:
        return self.transform(self.rows[index : index + 1])[0]

    def __getitems__(self, indices: list[int]) -> Tensor:
        return self.transform(self.rows[torch.as_tensor(indices)])


def _batch(rows: Tensor) -> Tensor:
    """The collate function of `Rows` loaders: a fetched batch is already one tensor."""
    return rows


def to_bits_per_dim(nll: float | Tensor, features: int) -> float | Tensor:
    """A negative log-likelihood in nats per sample -> bits per dimension."""
    return nll / (features * math.log(2))


class DensityDataModule(L.LightningDataModule):
    """Train/val/test data for density estimation.

    After construction: ``name``, ``spec`` (the plain ``_target_`` spec that builds it again,
    set by `distill.data.build_datamodule`), ``features`` (D), ``batch_size``, ``num_workers``,
    ``image_shape`` (``(H, W)`` for image data, else None), ``bits_per_dim`` (whether
    likelihoods are reported in bits/dim, see `to_bits_per_dim`) and ``preprocessing_config``
    (plain values: ``distill.flows.build_preprocessing(**preprocessing_config)`` rebuilds the
    structure of the preprocessing for ``load_state_dict``).

    After ``setup()``: ``train_data``, ``val_data``, ``test_data`` (``(N, D)`` float32, data
    space, validated finite), ``preprocessing`` (the fitted `Chain`) and ``entropy`` (the true
    differential entropy in nats, data space, or None when unknown).

    Subclasses set ``name`` and implement ``_splits``; ``_true_entropy``,
    ``_train_dataset`` and ``in_support`` have defaults.
    """

    name: str
    spec: dict | None = None
    image_shape: tuple[int, int] | None = None
    bits_per_dim: bool = False

    def __init__(self, features: int, batch_size: int = 256, num_workers: int = 0):
        super().__init__()
        if batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size}")
        self.features = features
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.train_data: Tensor | None = None
        self.val_data: Tensor | None = None
        self.test_data: Tensor | None = None
        self.preprocessing: Chain | None = None
        self.entropy: float | None = None

    @property
    def preprocessing_config(self) -> dict:
        """Plain keyword arguments of `distill.flows.build_preprocessing` for this data set."""
        return {"features": self.features}

    def _splits(self) -> tuple[Tensor, Tensor, Tensor]:
        """The train, val and test data, each ``(N, D)`` in data space."""
        raise NotImplementedError

    def _true_entropy(self) -> float | None:
        """The differential entropy (nats) of the data's distribution, None when unknown."""
        return None

    def _train_dataset(self) -> Rows:
        """What the train loader draws from; rows of ``train_data`` unless overridden."""
        return Rows(self.train_data)

    def in_support(self, points: Tensor) -> Tensor | None:
        """Whether each of ``points`` ``(N, D)`` (data space) lies inside the support of the
        data's distribution: ``(N,)`` bool, or None where the support is not known (or is
        everything, as for a Gaussian). Data sets with a bounded, known support override it."""
        return None

    def setup(self, stage: str | None = None) -> None:
        """Make (once) the splits, fit the preprocessing to the train split, get the entropy."""
        if self.train_data is not None:
            return
        splits = [torch.as_tensor(split, dtype=torch.float32) for split in self._splits()]
        for split_name, split in zip(("train", "val", "test"), splits, strict=True):
            check_matrix(split, f"the {self.name} {split_name} split")
        if len(splits[0]) < self.batch_size:
            raise ValueError(
                f"batch_size={self.batch_size} exceeds the {len(splits[0])} training rows of "
                f"{self.name}: lower the batch size or provide more data"
            )
        self.train_data, self.val_data, self.test_data = splits
        self.preprocessing = fit_preprocessing(splits[0], **self.preprocessing_config)
        self.entropy = self._true_entropy()

    def _loader(self, dataset: Rows, train: bool) -> DataLoader:
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            collate_fn=_batch,
            shuffle=train,
            drop_last=train,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        """Shuffled ``(B, D)`` batches; the last incomplete batch is dropped."""
        return self._loader(self._train_dataset(), train=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(Rows(self.val_data), train=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(Rows(self.test_data), train=False)


class GeneratedDataModule(DensityDataModule):
    """Data drawn from a generator: split ``i`` (train, val, test) is drawn from its own
    seed ``SeedSequence([seed, i])``, so the splits are independent, disjoint draws and the same
    seed gives the same data. Subclasses implement ``_sample``."""

    def __init__(
        self,
        features: int,
        num_train: int = 20_000,
        num_val: int = 2_000,
        num_test: int = 5_000,
        seed: int = 0,
        batch_size: int = 256,
        num_workers: int = 0,
    ):
        super().__init__(features, batch_size, num_workers)
        for key, value in (("num_train", num_train), ("num_val", num_val), ("num_test", num_test)):
            if value < 1:
                raise ValueError(f"{key} must be a positive integer, got {value}")
        self.num_train, self.num_val, self.num_test = num_train, num_val, num_test
        self.seed = seed

    def _sample(self, num_samples: int, rng: np.random.RandomState) -> np.ndarray:
        """``num_samples`` draws ``(num_samples, D)``."""
        raise NotImplementedError

    def _splits(self) -> tuple[Tensor, Tensor, Tensor]:
        sizes = (self.num_train, self.num_val, self.num_test)
        return tuple(
            torch.as_tensor(self._sample(size, split_rng(self.seed, index)), dtype=torch.float32)
            for index, size in enumerate(sizes)
        )


class SplitDataModule(DensityDataModule):
    """Data from one fixed ``(N, D)`` array (``_rows``), split into disjoint train/val/test
    rows by a permutation drawn from ``seed``; val and test hold the rounded fractions."""

    def __init__(
        self,
        features: int,
        val_fraction: float = 0.1,
        test_fraction: float = 0.1,
        seed: int = 0,
        batch_size: int = 256,
        num_workers: int = 0,
    ):
        super().__init__(features, batch_size, num_workers)
        self.val_fraction, self.test_fraction = val_fraction, test_fraction
        self.seed = seed

    def _rows(self) -> Tensor:
        """All the rows ``(N, D)``, data space."""
        raise NotImplementedError

    def _splits(self) -> tuple[Tensor, Tensor, Tensor]:
        return split_rows(self._rows(), self.val_fraction, self.test_fraction, self.seed, self.name)


def split_rng(seed: int, index: int) -> np.random.RandomState:
    """The random state of split ``index`` (0 train, 1 val, 2 test) for ``seed``."""
    return np.random.RandomState(np.random.MT19937(np.random.SeedSequence([seed, index])))


def split_rows(
    rows: Tensor, val_fraction: float, test_fraction: float, seed: int, source: str
) -> tuple[Tensor, Tensor, Tensor]:
    """Disjoint train/val/test subsets of the rows of ``rows`` (N, D), by a random permutation
    drawn from ``seed``; val and test hold the rounded fractions of the rows."""
    num_train, num_val, _ = split_sizes(len(rows), val_fraction, test_fraction, source)
    order = torch.randperm(len(rows), generator=torch.Generator().manual_seed(seed))
    train, val, test = order.tensor_split([num_train, num_train + num_val])
    return rows[train], rows[val], rows[test]
