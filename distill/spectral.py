"""Spectra of waveforms in torch, and WAV files.

Waveforms are tensors ``(..., T)``: every leading dimension (batch, channels) is a batch
dimension, so ``(N, C, T)`` gives one spectrum per waveform and channel. Everything follows the
input's device and dtype and is differentiable (except `estimate_pitch` and the WAV I/O).

Spectra are scaled by ``1 / sum(window)``: a sinusoid of amplitude ``a`` peaks at magnitude
``a / 2`` whatever ``n_fft``, so losses and log-mels do not change scale with the window.
"""

from __future__ import annotations

import math
import wave
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

_SEMITONES_PER_OCTAVE = 12.0


def _frames(x: Tensor, n_fft: int, hop_length: int, center: bool) -> Tensor:
    """The complex STFT of ``x`` ``(..., T)`` -> ``(..., n_fft // 2 + 1, frames)``, Hann
    window, scaled by ``1 / sum(window)``. ``center``: frame k centred at sample ``k * hop``
    (zero padding, ``1 + T // hop`` frames); else frame k starts at ``k * hop``."""
    if x.dim() < 1:
        raise ValueError(f"expected a waveform (..., T), got a {x.dim()}-D tensor")
    window = torch.hann_window(n_fft, periodic=True, dtype=x.dtype, device=x.device)
    flat = x.reshape(-1, x.shape[-1])
    spectrum = torch.stft(
        flat,
        n_fft,
        hop_length=hop_length,
        window=window,
        center=center,
        pad_mode="constant",
        return_complex=True,
    )
    return (spectrum / window.sum()).reshape(*x.shape[:-1], *spectrum.shape[-2:])


def stft_magnitude(x: Tensor, n_fft: int = 512, hop_length: int = 128) -> Tensor:
    """``|STFT(x)|`` of waveforms ``(..., T)`` (e.g. ``(N, C, T)``: one per waveform and
    channel) -> ``(..., n_fft // 2 + 1, 1 + T // hop_length)``; Hann window, frames centred at
    multiples of ``hop_length`` (zero padding at the ends), scaled by ``1 / sum(window)``."""
    return _frames(x, n_fft, hop_length, center=True).abs()


def average_power_spectrum(x: Tensor, n_fft: int = 512, hop_length: int = 128) -> Tensor:
    """``|STFT(x)|^2`` averaged over frames: ``(..., T)`` -> ``(..., n_fft // 2 + 1)``."""
    spectrum = _frames(x, n_fft, hop_length, center=True)
    return (spectrum.real.square() + spectrum.imag.square()).mean(-1)


def _batch_spectra(samples: Tensor, data: Tensor, paired: bool, name: str) -> tuple[Tensor, Tensor]:
    """The shape checks of the spectral losses: ``samples`` ``(N, ..., T)``, ``data`` of the
    same shape when ``paired``, else ``(M, ..., T')``."""
    if paired and samples.shape != data.shape:
        raise ValueError(
            f"paired {name} needs samples and data of one shape, got {tuple(samples.shape)} "
            f"and {tuple(data.shape)}: pass paired=False to compare batch-averaged spectra"
        )
    if samples.dim() < 2 or samples.shape[1:-1] != data.shape[1:-1]:
        raise ValueError(
            f"{name} takes batches (N, ..., T) with the same middle dimensions, got "
            f"{tuple(samples.shape)} and {tuple(data.shape)}"
        )
    return samples, data.to(samples)


def power_loss(
    samples: Tensor,
    data: Tensor,
    n_fft: int = 512,
    hop_length: int = 128,
    paired: bool = True,
) -> Tensor:
    """Parallel WaveNet's power loss ``||phi(samples) - phi(data)||^2``, with ``phi`` the
    `average_power_spectrum`, the squared distance summed over frequencies and channels.

    ``samples`` ``(N, ..., T)``. ``paired=True``: ``data`` has the same shape and sample i is
    compared with data i (e.g. generated from data i's conditioning) -> ``(N,)``.
    ``paired=False``: ``data`` ``(M, ..., T')`` is any other set; the spectra are first averaged
    over each batch and the one scalar is returned broadcast to ``(N,)`` (its mean is the loss).
    Zero on identical inputs; differentiable w.r.t. ``samples``.
    """
    sample_power, data_power = _compared_spectra(
        samples, data, paired, "power_loss", n_fft, hop_length
    )
    terms = (sample_power - data_power).square().flatten(1).sum(1)
    return terms.expand(len(samples))


def _compared_spectra(
    samples: Tensor, data: Tensor, paired: bool, name: str, n_fft: int, hop_length: int
) -> tuple[Tensor, Tensor]:
    """The average power spectra of ``samples`` and ``data`` (no gradient: the data are
    fixed) that `power_loss` and `log_power_loss` compare: per row when ``paired``, else
    averaged over each batch (one row each)."""
    samples, data = _batch_spectra(samples, data, paired, name)
    sample_power = average_power_spectrum(samples, n_fft, hop_length)
    data_power = average_power_spectrum(data, n_fft, hop_length).detach()
    if not paired:
        sample_power, data_power = sample_power.mean(0, keepdim=True), data_power.mean(0, True)
    return sample_power, data_power


def shape_power_loss(
    samples: Tensor, data: Tensor, n_fft: int = 512, hop_length: int = 128
) -> Tensor:
    """The paired power loss without each row's loudness: the squared distance between the
    `average_power_spectrum` of sample i and of data i, each divided by its own total power
    (its spectral shape; scaled back by the data's mean total power, so the units are
    `power_loss`'s), plus the unpaired `power_loss` of the batch-averaged spectra (the level).

    Why: when the context does not fix a row's loudness (the notes' amplitude and decay are
    random given the pitch), the paired `power_loss` has expectation
    ``|E phi_s - E phi_d|^2 + Var phi_s + Var phi_d``: it also rewards a student whose rows
    all have the same power. Here a row's gain costs nothing; the batch's level still does.

    ``samples`` and ``data`` ``(N, ..., T)`` of one shape -> ``(N,)``; zero on identical inputs
    (and on rows that differ from theirs by gains that keep the batch's average spectrum);
    differentiable w.r.t. ``samples``.
    """
    sample_power, data_power = _compared_spectra(
        samples, data, True, "shape_power_loss", n_fft, hop_length
    )
    sample_total = sample_power.sum(-1, keepdim=True).clamp_min(torch.finfo(samples.dtype).tiny)
    data_total = data_power.sum(-1, keepdim=True).clamp_min(torch.finfo(samples.dtype).tiny)
    shape = (sample_power / sample_total - data_power / data_total) * data_total.mean()
    level = (sample_power.mean(0) - data_power.mean(0)).square().sum()
    return shape.square().flatten(1).sum(1) + level


def log_power_loss(
    samples: Tensor,
    data: Tensor,
    n_fft: int = 512,
    hop_length: int = 128,
    floor_db: float = -40.0,
    paired: bool = True,
) -> Tensor:
    """The mean over frequencies (and channels) of the squared difference of log average power
    spectra, each floored relative to the data's peak:
    ``mean_f (log(phi_s(f) + e) - log(phi_d(f) + e))^2``, ``e = 10^(floor_db / 10) max_f
    phi_d(f)`` (per data row and channel, no gradient), ``phi`` the `average_power_spectrum`.

    Where `power_loss` weighs each frequency by the data's power squared, so that its value is
    set by the loudest peak, this one weighs every frequency above the floor alike: a harmonic
    or a sub-harmonic rumble at a tenth of the peak's power (what decides `estimate_pitch`)
    costs as much as a mismatch at the peak; below ``floor_db`` (relative to the data's
    strongest bin) differences are ignored. Shapes and ``paired`` as `power_loss`: ``(N,)``.
    Zero on identical inputs; differentiable w.r.t. ``samples``.
    """
    sample_power, data_power = _compared_spectra(
        samples, data, paired, "log_power_loss", n_fft, hop_length
    )
    floor = 10.0 ** (floor_db / 10.0) * data_power.amax(-1, keepdim=True)
    floor = floor.clamp_min(torch.finfo(floor.dtype).tiny)
    terms = ((sample_power + floor).log() - (data_power + floor).log()).square()
    return terms.flatten(1).mean(1).expand(len(samples))


def loudness_loss(samples: Tensor, data: Tensor) -> Tensor:
    """The squared 1-D Wasserstein distance between the loudness of the sample rows and that of
    the data rows: each row's log mean power (nats, over its channels and steps), sorted, the
    mean squared difference of the sorted values (of the data's quantiles at the samples' ranks
    if the counts differ). ``(N, ..., T)`` and ``(M, ..., T)`` -> a scalar; zero when both hold
    the same loudnesses in any order; differentiable w.r.t. ``samples``.

    The level and the spread of loudness at once. A reverse-KL student of notes whose gain is
    drawn once per note plays every note at one loudness (its spread 0.2-0.4 dB against the
    data's 2.4): the per-step KL charges a few thousandths of a nat a step for it, the NLL of
    data every step (experiments/results/notes_session6.md)."""

    def loudness(x: Tensor) -> Tensor:
        power = x.square().flatten(1).mean(1)
        return power.clamp_min(torch.finfo(power.dtype).tiny).log()

    sample_loudness = loudness(samples).sort().values
    data_loudness = loudness(data.to(samples)).sort().values
    if len(data_loudness) != len(sample_loudness):
        levels = (
            torch.arange(len(samples), dtype=samples.dtype, device=samples.device) + 0.5
        ) / len(samples)
        data_loudness = torch.quantile(data_loudness, levels)
    return (sample_loudness - data_loudness).square().mean()


def log_spectral_distance(
    samples: Tensor,
    data: Tensor,
    n_fft: int = 512,
    hop_length: int = 128,
    floor_db: float = -100.0,
) -> Tensor:
    """The distance (dB) between two sets of waveforms ``(N, ..., T)`` and ``(M, ..., T)``:
    the root mean square over frequencies (and channels) of the difference of their average
    power spectra (averaged over frames and waveforms) in dB, each floored at ``floor_db``.
    A scalar tensor; 0 for identical sets."""
    floor = 10.0 ** (floor_db / 10.0)

    def decibels(x: Tensor) -> Tensor:
        power = average_power_spectrum(x, n_fft, hop_length).mean(0)
        return 10.0 * torch.log10(power.clamp_min(floor))

    return (decibels(samples) - decibels(data.to(samples))).square().mean().sqrt()


def estimate_pitch(
    x: Tensor,
    sample_rate: int,
    min_hz: float = 55.0,
    max_hz: float = 1000.0,
    threshold: float = 0.1,
) -> Tensor:
    """The pitch (Hz) of each waveform: the lowest strong spectral peak in
    ``[min_hz, max_hz]``.

    ``x``: ``(N, T)``, or ``(N, C, T)`` whose channels are averaged first -> ``(N,)`` (in
    general ``(..., T)`` -> ``(...)``). Spectrum: Hann window, zero-padded to at least 4x the
    length (a 2048-sample window at 16 kHz: 2 Hz bins), refined by parabolic interpolation of
    the log power around the peak. "Strong" means a local maximum with at least ``threshold``
    times the largest power in the range, so a harmonic stronger than a weak fundamental does
    not win (the lowest peak does), and noise peaks below it do not count. A waveform with no
    peak in range gets its range's largest bin.

    Peaks are chosen on the power spectrum high-passed at ``min_hz`` (a fourth-order weight
    ``r^4 / (1 + r^4)``, ``r = f / min_hz``: 0.5 at ``min_hz``, 0.94 an octave above): a DC
    offset or a sub-audio drift, which autoregressive samples accumulate as a random walk whose
    power falls as 1/f^2, would otherwise leak strong peaks into the low end of the range. The
    chosen peak is refined on the unweighted spectrum.
    """
    if x.dim() == 3:
        x = x.mean(-2)
    x = x.detach()
    length = x.shape[-1]
    n_fft = 1 << max(4 * length - 1, 1).bit_length()
    window = torch.hann_window(length, periodic=False, dtype=x.dtype, device=x.device)
    power = torch.fft.rfft(x * window, n=n_fft).abs().square()
    ratio = torch.arange(power.shape[-1], dtype=x.dtype, device=x.device) * (
        sample_rate / n_fft / min_hz
    )
    selection = power * ratio**4 / (1 + ratio**4)
    bin_hz = sample_rate / n_fft
    low, high = max(math.ceil(min_hz / bin_hz), 1), min(math.floor(max_hz / bin_hz), n_fft // 2 - 1)
    if low > high:
        raise ValueError(f"no frequency bin in [{min_hz}, {max_hz}] Hz at {sample_rate} Hz")
    # candidates are bins low..high; their neighbours low-1..high+1 decide local maxima
    band = selection[..., low - 1 : high + 2]
    inner = band[..., 1:-1]
    peaks = (inner > band[..., :-2]) & (inner >= band[..., 2:])
    strong = peaks & (inner >= threshold * inner.amax(-1, keepdim=True))
    # the first strong peak; argmax of the power where there is none
    first = torch.where(strong.any(-1), strong.int().argmax(-1), inner.argmax(-1))
    index = (first + low).unsqueeze(-1)
    log_power = power.clamp_min(torch.finfo(power.dtype).tiny).log()
    left, centre, right = (log_power.gather(-1, index + shift).squeeze(-1) for shift in (-1, 0, 1))
    curvature = left - 2 * centre + right
    offset = torch.where(curvature < 0, 0.5 * (left - right) / curvature, 0.0).clamp(-0.5, 0.5)
    return (index.squeeze(-1) + offset) * bin_hz


def semitone_error(estimated_hz: Tensor, target_hz: Tensor) -> Tensor:
    """``|12 log2(estimated / target)|``, elementwise (semitones)."""
    return (_SEMITONES_PER_OCTAVE * torch.log2(estimated_hz / target_hz)).abs()


def within_semitone_fraction(
    estimated_hz: Tensor, target_hz: Tensor, tolerance: float = 1.0
) -> float:
    """The fraction of estimates within ``tolerance`` semitones of their targets."""
    return float((semitone_error(estimated_hz, target_hz) <= tolerance).double().mean())


def _hz_to_mel(hz: Tensor) -> Tensor:
    return 2595.0 * torch.log10(1.0 + hz / 700.0)


def _mel_to_hz(mel: Tensor) -> Tensor:
    return 700.0 * (10.0 ** (mel / 2595.0) - 1.0)


def mel_filterbank(
    sample_rate: int,
    n_fft: int,
    n_mels: int,
    f_min: float = 0.0,
    f_max: float | None = None,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> Tensor:
    """Triangular filters ``(n_mels, n_fft // 2 + 1)`` of unit peak, centred at points evenly
    spaced on the HTK mel scale ``2595 log10(1 + f / 700)`` between ``f_min`` and ``f_max``
    (default: the Nyquist frequency)."""
    f_max = sample_rate / 2 if f_max is None else f_max
    if not 0 <= f_min < f_max <= sample_rate / 2:
        raise ValueError(f"need 0 <= f_min < f_max <= {sample_rate / 2} Hz, got {f_min}, {f_max}")
    limits = _hz_to_mel(torch.tensor([f_min, f_max], dtype=torch.float64))
    mels = torch.linspace(*limits.tolist(), n_mels + 2, dtype=torch.float64)
    edges = _mel_to_hz(mels)
    bins = torch.linspace(0, sample_rate / 2, n_fft // 2 + 1, dtype=torch.float64)
    lower, centre, upper = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    rising = (bins - lower) / (centre - lower)
    falling = (upper - bins) / (upper - centre)
    return torch.minimum(rising, falling).clamp_min(0).to(dtype=dtype, device=device)


def log_mel_spectrogram(
    x: Tensor,
    sample_rate: int,
    n_fft: int = 1024,
    hop_length: int = 256,
    n_mels: int = 80,
    floor: float = 1e-5,
) -> Tensor:
    """``log(max(mel_filterbank @ |STFT(x)|, floor))``: waveforms ``(..., T)`` ->
    ``(..., n_mels, T // hop_length)``.

    Frame k is centred at sample ``k * hop + hop / 2``, so it describes the samples around
    ``[k * hop, (k + 1) * hop)``, and a crop starting at a multiple of ``hop_length`` owns
    exactly its frames; the ends are zero-padded. Magnitudes as in `stft_magnitude`, so values
    lie in about ``[log(floor), 0]`` for audio within [-1, 1].
    """
    length = x.shape[-1]
    if length < hop_length:
        raise ValueError(f"a log-mel spectrogram needs at least hop_length={hop_length} samples")
    left = (n_fft - hop_length) // 2
    padded = torch.nn.functional.pad(x, (left, n_fft - left))
    magnitude = _frames(padded, n_fft, hop_length, center=False).abs()[..., : length // hop_length]
    filters = mel_filterbank(sample_rate, n_fft, n_mels, dtype=x.dtype, device=x.device)
    return torch.log((filters @ magnitude).clamp_min(floor))


_PCM_SCALE = {1: 128.0, 2: 32768.0, 3: 8388608.0, 4: 2147483648.0}


def write_wav(path: str | Path, x: Tensor, sample_rate: int) -> None:
    """Write ``x`` ``(T,)`` or ``(C, T)`` (values in [-1, 1], clipped) as 16-bit PCM."""
    x = torch.as_tensor(x).detach().cpu().double()
    if x.dim() == 1:
        x = x.unsqueeze(0)
    if x.dim() != 2:
        raise ValueError(f"write_wav takes a waveform (T,) or (C, T), got {tuple(x.shape)}")
    pcm = (x.clamp(-1, 1) * 32768).round().clamp(-32768, 32767).to(torch.int16)
    with wave.open(str(path), "wb") as file:
        file.setnchannels(x.shape[0])
        file.setsampwidth(2)
        file.setframerate(int(sample_rate))
        file.writeframes(pcm.T.contiguous().numpy().astype("<i2").tobytes())


def read_wav(path: str | Path) -> tuple[Tensor, int]:
    """A PCM WAV file (8, 16, 24 or 32 bit, any channel count) -> ``(x, sample_rate)`` with
    ``x`` ``(C, T)`` float32 in [-1, 1]. A file Python's ``wave`` cannot read is a ValueError
    naming it."""
    try:
        with wave.open(str(path), "rb") as file:
            channels, width = file.getnchannels(), file.getsampwidth()
            sample_rate, raw = file.getframerate(), file.readframes(file.getnframes())
    except (wave.Error, EOFError) as error:
        raise ValueError(
            f"{path} is not a PCM WAV file Python's wave module can read ({error}): convert it "
            "to 16-bit PCM WAV (e.g. ffmpeg -i IN -c:a pcm_s16le OUT.wav)"
        ) from None
    if width not in _PCM_SCALE:
        raise ValueError(f"{path} has {8 * width}-bit samples: convert it to 16-bit PCM WAV")
    data = np.frombuffer(raw[: len(raw) // (width * channels) * width * channels], np.uint8)
    if width == 1:  # 8-bit WAV is unsigned, centred at 128
        values = data.astype(np.float64) - 128.0
    elif width == 3:  # little-endian 3-byte integers: sign-extend through the top byte
        bytes3 = data.reshape(-1, 3).astype(np.int32)
        values = (bytes3[:, 0] | (bytes3[:, 1] << 8) | (bytes3[:, 2] << 16)).astype(np.float64)
        values = np.where(values >= 2**23, values - 2**24, values)
    else:
        values = data.view(f"<i{width}").astype(np.float64)
    samples = torch.from_numpy(values / _PCM_SCALE[width]).float()
    return samples.reshape(-1, channels).T.contiguous(), sample_rate
