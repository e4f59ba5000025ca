"""Sequences (audio) as data: synthetic notes, or crops of the user's WAV files.

A data set of sequences holds tensors ``(N, C, T)`` (C channels of T samples; C = 1, mono).
Batches are float32 ``(B, C, T)``, or, for conditional data, tuples ``(x, context)`` with
``context`` ``(B, *context_shape)``: ``(G,)`` for a global context (one vector per sequence),
``(L, T // hop_length)`` for a local one (one L-vector per frame of ``hop_length`` samples,
frame k describing the samples around ``[k * hop, (k + 1) * hop)``).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from distill.data.datamodule import DensityDataModule, split_rng
from distill.data.preprocessing import fit_sequence_preprocessing
from distill.data.validation import split_sizes
from distill.spectral import log_mel_spectrogram, read_wav

#: Each conditioning's kind of context: None (unconditional), "global" or "local".
CONDITIONINGS = {"none": None, "pitch": "global", "pitch_track": "local", "mel": "local"}


class Sequences(Dataset):
    """Sequences ``(N, C, T)`` and their contexts ``(N, ...)`` (or None) as a map-style dataset
    fetched a whole batch at a time (``__getitems__``: one indexing per batch; a distributed
    sampler still shards the indices). Items are ``x`` or ``(x, context)``."""

    def __init__(self, data: Tensor, context: Tensor | None = None):
        self.data, self.context = data, context

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, index: int) -> Tensor | tuple[Tensor, Tensor]:
        batch = self.__getitems__([index])
        return batch[0] if self.context is None else (batch[0][0], batch[1][0])

    def __getitems__(self, indices: list[int]) -> Tensor | tuple[Tensor, Tensor]:
        index = torch.as_tensor(indices)
        return self.data[index] if self.context is None else (self.data[index], self.context[index])


def _whole_batch(batch):
    """The collate function: a fetched batch is already a tensor or a tuple of tensors."""
    return batch


class SequenceDataModule(DensityDataModule):
    """Train/val/test sequences ``(N, C, T)`` for density estimation over time.

    After construction: ``name``, ``spec`` (set by `distill.data.build_datamodule`),
    ``sample_rate`` (Hz), ``length`` (T), ``channels`` (1), ``event_shape`` ``(C, T)``,
    ``conditioning`` (a key of `CONDITIONINGS` the module supports), ``context_shape`` (None,
    ``(G,)`` or ``(L, T // hop_length)``), ``hop_length``, ``batch_size``, ``num_workers``;
    ``features``, ``image_shape`` and ``entropy`` are None and ``bits_per_dim`` False (nothing
    matrix-specific applies); ``preprocessing_config`` builds a per-channel standardization
    of sequences (`distill.flows.StandardizeSequence`).

    After ``setup()``: ``train_data``, ``val_data``, ``test_data`` ``(N, C, T)`` float32 and,
    when conditional, ``train_context``, ``val_context``, ``test_context``
    ``(N, *context_shape)``, all checked finite; ``preprocessing``, the standardization fitted
    to the train split.

    Subclasses set ``name``, ``conditionings`` and ``context_features`` (G or L) and implement
    ``_sequence_splits``; ``_train_dataset`` defaults to the rows of the train split.
    """

    channels: int = 1
    conditionings: tuple[str, ...] = ("none",)

    def __init__(
        self,
        length: int,
        sample_rate: int,
        conditioning: str = "none",
        hop_length: int = 256,
        batch_size: int = 32,
        num_workers: int = 0,
    ):
        super().__init__(None, batch_size, num_workers)
        for key, value in (
            ("length", length),
            ("sample_rate", sample_rate),
            ("hop_length", hop_length),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{key} must be a positive integer, got {value!r}")
        if conditioning not in self.conditionings:
            raise ValueError(
                f"data set {self.name!r} has no conditioning {conditioning!r}: choose one of "
                f"{', '.join(self.conditionings)}"
            )
        if CONDITIONINGS[conditioning] == "local" and length % hop_length:
            fits = max(length // hop_length, 1) * hop_length
            raise ValueError(
                f"length={length} is not a multiple of hop_length={hop_length}, which local "
                f"conditioning ({conditioning!r}) needs (one context frame per hop_length "
                f"samples): set length to a multiple, e.g. {fits}"
            )
        self.length, self.sample_rate = length, sample_rate
        self.conditioning, self.hop_length = conditioning, hop_length
        self.train_context: Tensor | None = None
        self.val_context: Tensor | None = None
        self.test_context: Tensor | None = None

    @property
    def event_shape(self) -> tuple[int, int]:
        return (self.channels, self.length)

    @property
    def context_features(self) -> int:
        """G (global) or L (local): the size of the context of one sequence or frame."""
        raise NotImplementedError

    @property
    def context_shape(self) -> tuple[int, ...] | None:
        kind = CONDITIONINGS[self.conditioning]
        if kind is None:
            return None
        if kind == "global":
            return (self.context_features,)
        return (self.context_features, self.length // self.hop_length)

    @property
    def preprocessing_config(self) -> dict:
        """Plain arguments of `distill.flows.build_preprocessing`: a per-channel
        standardization of sequences (`StandardizeSequence`), fitted in ``setup``."""
        return {"channels": self.channels}

    def _sequence_splits(self) -> list[tuple[Tensor, Tensor | None]]:
        """``(data (N, C, T), context (N, *context_shape) or None)`` of train, val and test."""
        raise NotImplementedError

    def _check_split(self, data: Tensor, context: Tensor | None, split: str) -> None:
        source = f"the {self.name} {split} split"
        if data.dim() != 3 or tuple(data.shape[1:]) != self.event_shape or not len(data):
            raise ValueError(
                f"{source} has shape {tuple(data.shape)}, expected (N >= 1, *{self.event_shape})"
            )
        shape = None if context is None else tuple(context.shape[1:])
        if shape != self.context_shape or (context is not None and len(context) != len(data)):
            raise ValueError(
                f"{source} has contexts of shape {None if context is None else context.shape}, "
                f"expected ({len(data)}, *{self.context_shape})"
            )
        for what, values in (("sequences", data), ("contexts", context)):
            if values is None:
                continue
            bad = torch.nonzero(~torch.isfinite(values.flatten(1)).all(1)).flatten()
            if len(bad):
                raise ValueError(
                    f"{source} has NaN or Inf values in {len(bad)} {what} (first: "
                    f"{bad[:5].tolist()}, 0-based): fix the data that produced them"
                )

    def setup(self, stage: str | None = None) -> None:
        """Make (once) and check the splits."""
        if self.train_data is not None:
            return
        splits = []
        for split, (data, context) in zip(
            ("train", "val", "test"), self._sequence_splits(), strict=True
        ):
            data = torch.as_tensor(data, dtype=torch.float32)
            context = None if context is None else torch.as_tensor(context, dtype=torch.float32)
            self._check_split(data, context, split)
            splits.append((data, context))
        if len(splits[0][0]) < self.batch_size:
            raise ValueError(
                f"batch_size={self.batch_size} exceeds the {len(splits[0][0])} training "
                f"sequences of {self.name}: lower the batch size or provide more data"
            )
        (self.train_data, self.train_context), (self.val_data, self.val_context) = splits[:2]
        self.test_data, self.test_context = splits[2]
        self.preprocessing = fit_sequence_preprocessing(self.train_data)

    def _train_dataset(self) -> Dataset:
        return Sequences(self.train_data, self.train_context)

    def _loader(self, dataset: Dataset, train: bool) -> DataLoader:
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            collate_fn=_whole_batch,
            shuffle=train,
            drop_last=train,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        """Shuffled batches ``x`` ``(B, C, T)`` or ``(x, context)``; the last incomplete
        batch is dropped."""
        return self._loader(self._train_dataset(), train=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(Sequences(self.val_data, self.val_context), train=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(Sequences(self.test_data, self.test_context), train=False)

    def in_support(self, points: Tensor) -> None:
        """None: the support of audio is not known."""
        return None


# Notes: a pitch track moves by a linear glide of up to +-_MAX_GLIDE / 2 semitones around
# its centre plus a vibrato of up to _MAX_VIBRATO semitones (4-8 Hz).
_NUM_HARMONICS = 6
_MAX_GLIDE = 4.0
_MAX_VIBRATO = 0.5
_VIBRATO_HZ = (4.0, 8.0)
_AMPLITUDE = (0.25, 0.75)
_DECAY_SECONDS = (0.05, 1.0)
_ROLLOFF = (1.0, 2.0)
_CHUNK = 512  # notes synthesized at once (bounds the memory of the (notes, T) temporaries)


def synthesize_notes(
    num_notes: int,
    rng: np.random.RandomState,
    length: int,
    sample_rate: int,
    min_pitch: float,
    max_pitch: float,
    noise_std: float,
    moving: bool,
) -> tuple[np.ndarray, np.ndarray]:
    """``num_notes`` harmonic notes ``(N, T)`` float32 and their pitch tracks ``(N, T)``
    float32 (log2 pitch per sample, normalized to [0, 1] over ``[min_pitch, max_pitch]``).

    A note: ``A exp(-t / tau) sum_k a_k sin(k phi(t) + phi_k) + noise_std * N(0, 1)`` with
    ``k = 1..6`` (harmonics below the Nyquist frequency), ``a_k ∝ k^-p`` summing to 1
    (``p ~ U(1, 2)``), ``A ~ U(0.25, 0.75)``, ``tau`` log-uniform in [0.05, 1] s, random
    phases ``phi_k``, and ``phi`` the integral of ``2 pi f(t)``. The pitch's centre is uniform
    in log-frequency over the range; ``moving``: ``f(t)`` glides linearly by up to +-2
    semitones around it and has a vibrato of up to 0.5 semitone, clipped to the range; else
    ``f`` is the constant centre. The same ``rng`` state gives the same notes whether moving or
    not (only the track differs).
    """
    low, high = math.log2(min_pitch), math.log2(max_pitch)
    centre = rng.uniform(low, high, (num_notes, 1))
    glide = rng.uniform(-_MAX_GLIDE, _MAX_GLIDE, (num_notes, 1)) / 2
    vibrato = rng.uniform(0, _MAX_VIBRATO, (num_notes, 1))
    vibrato_hz = rng.uniform(*_VIBRATO_HZ, (num_notes, 1))
    vibrato_phase = rng.uniform(0, 2 * np.pi, (num_notes, 1))
    amplitude = rng.uniform(*_AMPLITUDE, (num_notes, 1))
    decay = np.exp(rng.uniform(*np.log(_DECAY_SECONDS), (num_notes, 1)))
    rolloff = rng.uniform(*_ROLLOFF, (num_notes, 1))
    phases = rng.uniform(0, 2 * np.pi, (num_notes, _NUM_HARMONICS))
    harmonics = np.arange(1, _NUM_HARMONICS + 1)
    weights = harmonics**-rolloff
    time = np.arange(length) / sample_rate
    waves = np.empty((num_notes, length), np.float32)
    tracks = np.empty((num_notes, length), np.float32)
    for start in range(0, num_notes, _CHUNK):
        rows = slice(start, start + _CHUNK)
        log_pitch = np.repeat(centre[rows], length, axis=1)
        if moving:
            semitones = glide[rows] * (2 * time / time[-1] - 1) if length > 1 else 0
            semitones = semitones + vibrato[rows] * np.sin(
                2 * np.pi * vibrato_hz[rows] * time + vibrato_phase[rows]
            )
            log_pitch = np.clip(log_pitch + semitones / 12, low, high)
        pitch = 2.0**log_pitch
        # phase at sample n: 2 pi sum_{m < n} f_m / sample_rate (2 pi f n / sr for a constant f)
        phase = 2 * np.pi * (np.cumsum(pitch, axis=1) - pitch) / sample_rate
        below_nyquist = harmonics * pitch.max(1, keepdims=True) < sample_rate / 2
        note_weights = np.where(below_nyquist, weights[rows], 0.0)
        note_weights /= note_weights.sum(1, keepdims=True)
        tone = sum(
            note_weights[:, k, None] * np.sin(harmonics[k] * phase + phases[rows, k, None])
            for k in range(_NUM_HARMONICS)
        )
        envelope = amplitude[rows] * np.exp(-time / decay[rows])
        noise = noise_std * rng.standard_normal(tone.shape)
        waves[rows] = envelope * tone + noise
        tracks[rows] = (log_pitch - low) / (high - low)
    return waves, tracks


class NotesDataModule(SequenceDataModule):
    """Synthetic harmonic notes (see `synthesize_notes`): ``length`` samples at
    ``sample_rate`` Hz, pitch log-uniform in ``[min_pitch, max_pitch]`` Hz; nothing is
    downloaded. Split i (train, val, test) is drawn from ``SeedSequence([seed, i])``.

    Conditioning:
      - ``"none"``: batches are ``x`` ``(B, 1, T)``.
      - ``"pitch"`` (global): context ``(1,)``, the note's constant pitch as
        ``(log2 f - log2 min_pitch) / (log2 max_pitch - log2 min_pitch)`` in [0, 1]. The
        waveforms are those of ``"none"`` for the same seed.
      - ``"pitch_track"`` (local): context ``(1, T // hop_length)``, the same normalized log2
        pitch averaged over each frame of ``hop_length`` samples, for notes whose pitch
        moves (a glide of up to +-2 semitones and a vibrato; the waveform's instantaneous
        frequency follows the track).

    `pitch_of` turns contexts back into Hz.
    """

    name = "notes"
    conditionings = ("none", "pitch", "pitch_track")

    def __init__(
        self,
        length: int = 2048,
        sample_rate: int = 16000,
        num_train: int = 4096,
        num_val: int = 512,
        num_test: int = 512,
        min_pitch: float = 110.0,
        max_pitch: float = 440.0,
        noise_std: float = 0.01,
        conditioning: str = "none",
        hop_length: int = 256,
        seed: int = 0,
        batch_size: int = 32,
        num_workers: int = 0,
    ):
        super().__init__(length, sample_rate, conditioning, hop_length, batch_size, num_workers)
        for key, value in (("num_train", num_train), ("num_val", num_val), ("num_test", num_test)):
            if value < 1:
                raise ValueError(f"{key} must be a positive integer, got {value}")
        if not 0 < min_pitch < max_pitch < sample_rate / 2:
            raise ValueError(
                f"need 0 < min_pitch < max_pitch < sample_rate / 2 = {sample_rate / 2} Hz, got "
                f"min_pitch={min_pitch}, max_pitch={max_pitch}"
            )
        if noise_std < 0:
            raise ValueError(f"noise_std must be >= 0, got {noise_std}")
        self.num_train, self.num_val, self.num_test = num_train, num_val, num_test
        self.min_pitch, self.max_pitch, self.noise_std = min_pitch, max_pitch, noise_std
        self.seed = seed

    @property
    def context_features(self) -> int:
        return 1

    def _sequence_splits(self) -> list[tuple[Tensor, Tensor | None]]:
        splits = []
        for index, size in enumerate((self.num_train, self.num_val, self.num_test)):
            waves, tracks = synthesize_notes(
                size,
                split_rng(self.seed, index),
                self.length,
                self.sample_rate,
                self.min_pitch,
                self.max_pitch,
                self.noise_std,
                moving=self.conditioning == "pitch_track",
            )
            data = torch.from_numpy(waves).unsqueeze(1)
            context = None
            if self.conditioning == "pitch":
                context = torch.from_numpy(tracks[:, :1])
            elif self.conditioning == "pitch_track":
                frames = tracks.reshape(size, -1, self.hop_length).mean(-1)
                context = torch.from_numpy(frames).unsqueeze(1)
            splits.append((data, context))
        return splits

    def pitch_of(self, context: Tensor) -> Tensor:
        """The pitch (Hz) that each context ``(N, *context_shape)`` asks for -> ``(N,)``: the
        global pitch, or the median over frames of a pitch track."""
        if self.conditioning == "none":
            raise ValueError("conditioning='none' has no contexts, hence no pitch to read")
        normalized = context.reshape(len(context), -1).double().quantile(0.5, dim=-1)
        return self.min_pitch * (self.max_pitch / self.min_pitch) ** normalized


class RandomCrops(Dataset):
    """``size`` crops of ``length`` samples per epoch, drawn afresh at every fetch (from
    torch's global generator, which each rank offsets by its rank) from regions of one long
    mono signal ``audio`` ``(S,)``: a region is chosen in proportion to its number of start
    positions, a start uniformly among them (multiples of ``unit`` from its ``first``).
    ``mel`` ``(M, S // hop_length)`` (or None) gives each crop its frames as context."""

    def __init__(
        self,
        audio: Tensor,
        mel: Tensor | None,
        first: Tensor,
        counts: Tensor,
        unit: int,
        length: int,
        hop_length: int,
        size: int,
    ):
        self.audio, self.mel, self.first, self.counts = audio, mel, first, counts
        self.unit, self.length, self.hop_length, self.size = unit, length, hop_length, size

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int) -> Tensor | tuple[Tensor, Tensor]:
        batch = self.__getitems__([index])
        return batch[0] if self.mel is None else (batch[0][0], batch[1][0])

    def __getitems__(self, indices: list[int]) -> Tensor | tuple[Tensor, Tensor]:
        region = torch.multinomial(self.counts.double(), len(indices), replacement=True)
        counts = self.counts[region]
        offset = (torch.rand(len(indices), dtype=torch.float64) * counts).long()
        starts = self.first[region] + self.unit * offset.minimum(counts - 1)
        return _crops(self.audio, self.mel, starts, self.length, self.hop_length)


def _crops(
    audio: Tensor, mel: Tensor | None, starts: Tensor, length: int, hop_length: int
) -> Tensor | tuple[Tensor, Tensor]:
    """The crops ``(B, 1, length)`` of ``audio`` ``(S,)`` at ``starts`` ``(B,)``, and their
    frames ``(B, M, length // hop)`` of ``mel`` ``(M, S // hop)`` when given."""
    crops = audio[starts[:, None] + torch.arange(length)].unsqueeze(1)
    if mel is None:
        return crops
    frames = starts[:, None] // hop_length + torch.arange(length // hop_length)
    return crops, mel[:, frames].permute(1, 0, 2)


def list_wav_files(path: str | Path, sample_rate: int) -> list[Path]:
    """The ``.wav`` files of ``path`` (a WAV file, or a folder searched recursively, hidden
    files and folders skipped), sorted; anything else in the folder is an error."""
    root = Path(path).expanduser()
    if not root.exists():
        raise ValueError(
            f"data.path {root} does not exist (resolved to {root.resolve()}): set data.path to a "
            "folder of WAV files"
        )
    if root.is_file():
        files = [root]
    else:
        files = sorted(
            file
            for file in root.rglob("*")
            if file.is_file() and not any(p.startswith(".") for p in file.relative_to(root).parts)
        )
    for file in files:
        if file.suffix.lower() != ".wav":
            raise ValueError(
                f"{file} is not a .wav file: data.path must hold only WAV files; move it out of "
                f"{root}"
            )
    if not files:
        raise ValueError(
            f"{root} holds no WAV files: put mono 16-bit PCM .wav files at {sample_rate} Hz in it"
        )
    return files


class WaveformDataModule(SequenceDataModule):
    """Crops of ``length`` samples of the WAV files under ``path`` (a folder, searched
    recursively, or one file), read with Python's ``wave`` module: PCM (8/16/24/32-bit)
    at ``sample_rate`` Hz; stereo and multi-channel files are averaged to mono.

    Splits: when there are enough files for every split (``val_fraction`` and
    ``test_fraction`` of them, rounded, at least one each; two for training), whole files are
    held out, chosen by a permutation drawn from ``seed``. Otherwise every file is cut in time:
    its last ``test_fraction`` for test, the ``val_fraction`` before that for val, the rest for
    training. ``val_data`` and ``test_data`` are the consecutive non-overlapping crops of their
    audio (fixed). ``train_data`` holds those of the training audio, but the train loader
    draws as many fresh random crops at every epoch, anywhere in the training audio (at
    multiples of ``hop_length`` with "mel" conditioning, so a crop owns whole frames).

    Conditioning: ``"none"``, or ``"mel"``: context ``(n_mels, T // hop_length)``, the
    `distill.spectral.log_mel_spectrogram` of the crop's audio (computed once over each file's
    split region, so frames near a crop's ends see the audio around it; values in about
    [log 1e-5, 0], not standardized).
    """

    name = "waveform"
    conditionings = ("none", "mel")

    def __init__(
        self,
        path: str,
        length: int = 2048,
        sample_rate: int = 16000,
        conditioning: str = "none",
        hop_length: int = 256,
        n_mels: int = 80,
        n_fft: int = 1024,
        val_fraction: float = 0.1,
        test_fraction: float = 0.1,
        seed: int = 0,
        batch_size: int = 32,
        num_workers: int = 0,
    ):
        super().__init__(length, sample_rate, conditioning, hop_length, batch_size, num_workers)
        if not (
            0 < val_fraction < 1 and 0 < test_fraction < 1 and val_fraction + test_fraction < 1
        ):
            raise ValueError(
                f"val_fraction={val_fraction} and test_fraction={test_fraction} must be in (0, 1) "
                "with a sum below 1, leaving audio for training"
            )
        self.path = str(path)
        self.files = list_wav_files(path, sample_rate)
        self.n_mels, self.n_fft = n_mels, n_fft
        self.val_fraction, self.test_fraction, self.seed = val_fraction, test_fraction, seed
        self._train_crops: RandomCrops | None = None

    @property
    def context_features(self) -> int:
        return self.n_mels

    @property
    def _unit(self) -> int:
        """The grid of crop starts and region boundaries: whole frames with mel contexts."""
        return self.hop_length if self.conditioning == "mel" else 1

    def _load(self, file: Path) -> Tensor:
        """The mono audio ``(S,)`` of ``file``, checked."""
        audio, rate = read_wav(file)
        if rate != self.sample_rate:
            raise ValueError(
                f"{file} is sampled at {rate} Hz but data.sample_rate={self.sample_rate}: resample "
                f"it (e.g. ffmpeg -i IN -ar {self.sample_rate} OUT.wav) or set "
                f"data.sample_rate={rate}"
            )
        if not torch.isfinite(audio).all():
            raise ValueError(f"{file} has NaN or Inf samples: fix or remove the file")
        if audio.shape[1] < self.length:
            raise ValueError(
                f"{file} holds {audio.shape[1]} samples, fewer than one crop "
                f"(data.length={self.length}): remove the file or lower data.length"
            )
        return audio.mean(0)

    def _regions(self) -> list[list[Tensor]]:
        """The audio regions ``(S_r,)`` of train, val and test (lengths multiples of the
        unit; regions shorter than a crop dropped)."""
        signals = [self._load(file) for file in self.files]
        regions: list[list[Tensor]] = [[], [], []]
        try:
            sizes = split_sizes(len(signals), self.val_fraction, self.test_fraction, self.path)
        except ValueError:  # too few files to hold whole ones out: cut each in time
            sizes = None
        if sizes is not None:
            order = torch.randperm(len(signals), generator=torch.Generator().manual_seed(self.seed))
            for split, indices in enumerate(order.tensor_split([sizes[0], sizes[0] + sizes[1]])):
                regions[split] = [signals[index] for index in indices.tolist()]
        else:
            for signal in signals:
                units = len(signal) // self._unit
                test = math.floor(units * self.test_fraction + 0.5)
                val = math.floor(units * self.val_fraction + 0.5)
                bounds = np.cumsum([0, units - val - test, val, test]).tolist()
                for split in range(3):
                    regions[split].append(
                        signal[bounds[split] * self._unit : bounds[split + 1] * self._unit]
                    )
        return [
            [region[: len(region) // self._unit * self._unit] for region in split]
            for split in regions
        ]

    def _joined(self, regions: list[Tensor]) -> tuple[Tensor, Tensor | None, Tensor, Tensor]:
        """``regions`` (those at least a crop long) as one signal ``(S,)``, its log-mel frames
        ``(n_mels, S // hop_length)`` (or None), and each region's first sample and length."""
        regions = [region for region in regions if len(region) >= self.length]
        audio = torch.cat(regions)
        mel = None
        if self.conditioning == "mel":
            mel = torch.cat(
                [
                    log_mel_spectrogram(
                        region, self.sample_rate, self.n_fft, self.hop_length, self.n_mels
                    )
                    for region in regions
                ],
                dim=-1,
            )
        lengths = torch.tensor([len(region) for region in regions])
        return audio, mel, torch.cumsum(lengths, 0) - lengths, lengths

    def _sequence_splits(self) -> list[tuple[Tensor, Tensor | None]]:
        splits = []
        for split, regions in zip(("train", "val", "test"), self._regions(), strict=True):
            if not any(len(region) >= self.length for region in regions):
                more = "" if split == "train" else f" raise data.{split}_fraction,"
                raise ValueError(
                    f"the WAV files in {self.path} leave no {split} crop of data.length="
                    f"{self.length} samples: provide more or longer files,{more} or lower "
                    "data.length"
                )
            audio, mel, first, lengths = self._joined(regions)
            # consecutive non-overlapping crops of each region
            starts = torch.cat(
                [
                    start + self.length * torch.arange(size // self.length)
                    for start, size in zip(first.tolist(), lengths.tolist(), strict=True)
                ]
            )
            crops = _crops(audio, mel, starts, self.length, self.hop_length)
            splits.append(crops if mel is not None else (crops, None))
            if split == "train":
                counts = (lengths - self.length) // self._unit + 1
                self._train_crops = RandomCrops(
                    audio, mel, first, counts, self._unit, self.length, self.hop_length, len(starts)
                )
        return splits

    def _train_dataset(self) -> Dataset:
        return self._train_crops
