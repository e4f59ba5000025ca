"""Spectral utilities and WAV I/O (distill.spectral)."""

import math

import pytest
import torch

from distill.spectral import (
    average_power_spectrum,
    estimate_pitch,
    log_mel_spectrogram,
    log_power_loss,
    log_spectral_distance,
    loudness_loss,
    mel_filterbank,
    power_loss,
    read_wav,
    semitone_error,
    shape_power_loss,
    stft_magnitude,
    within_semitone_fraction,
    write_wav,
)

RATE = 16000


def tone(hz: float, length: int = 2048, amplitude: float = 0.5, harmonics: int = 1) -> torch.Tensor:
    """A sum of ``harmonics`` sinusoids at multiples of ``hz`` (1 / k amplitudes), ``(T,)``."""
    time = torch.arange(length, dtype=torch.float64) / RATE
    return sum(
        amplitude / k * torch.sin(2 * math.pi * k * hz * time + k) for k in range(1, harmonics + 1)
    )


def test_stft_and_power_spectrum_shapes_follow_the_leading_dimensions():
    x = torch.randn(3, 2, 1000)
    assert stft_magnitude(x, n_fft=256, hop_length=64).shape == (3, 2, 129, 1 + 1000 // 64)
    assert stft_magnitude(x[0, 0]).shape == (257, 1 + 1000 // 128)
    assert average_power_spectrum(x).shape == (3, 2, 257)
    assert average_power_spectrum(x.double()).dtype == torch.float64


def test_a_sinusoid_peaks_at_its_bin_with_half_its_amplitude():
    magnitude = stft_magnitude(tone(1000.0, amplitude=0.8), n_fft=512, hop_length=128)
    middle = magnitude[:, 8]
    assert middle.argmax() == round(1000.0 * 512 / RATE)
    assert middle.max() == pytest.approx(0.4, rel=0.05)


def test_power_loss_is_zero_on_identical_inputs_and_has_gradients_otherwise():
    data = torch.randn(4, 1, 1024)
    assert torch.equal(power_loss(data, data.clone()), torch.zeros(4))
    assert torch.equal(power_loss(data, data.clone(), paired=False), torch.zeros(4))
    samples = (data + 0.1 * torch.randn_like(data)).requires_grad_()
    paired = power_loss(samples, data)
    assert paired.shape == (4,) and (paired > 0).all()
    (gradient,) = torch.autograd.grad(paired.sum(), samples)
    assert torch.isfinite(gradient).all() and gradient.abs().sum() > 0
    # unpaired: batch-averaged spectra, any number of data, one value broadcast to (N,)
    unpaired = power_loss(samples, torch.randn(7, 1, 512), paired=False)
    assert unpaired.shape == (4,) and len(set(unpaired.tolist())) == 1 and unpaired[0] > 0
    (gradient,) = torch.autograd.grad(unpaired.mean(), samples)
    assert gradient.abs().sum() > 0
    with pytest.raises(ValueError, match="paired=False"):
        power_loss(samples, torch.randn(7, 1, 1024))


def test_shape_power_loss_ignores_row_gains_that_keep_the_batch_level():
    data = torch.randn(1, 1, 1024, dtype=torch.float64).expand(2, 1, 1024)
    assert torch.equal(shape_power_loss(data, data.clone()), torch.zeros(2, dtype=torch.float64))
    # rows louder and quieter than their data rows, the batch's average power unchanged
    gains = torch.tensor([0.5, 1.5], dtype=torch.float64).sqrt()[:, None, None]
    rescaled = (gains * data).requires_grad_()
    torch.testing.assert_close(shape_power_loss(rescaled, data), torch.zeros(2).double())
    assert (power_loss(rescaled, data) > 0).all()
    # a change of spectral shape or of the batch's level costs, with gradients
    for samples in (rescaled + 0.3 * torch.randn_like(data), 2.0 * rescaled):
        loss = shape_power_loss(samples, data)
        assert loss.shape == (2,) and (loss > 0).all()
        (gradient,) = torch.autograd.grad(loss.sum(), rescaled)
        assert torch.isfinite(gradient).all() and gradient.abs().sum() > 0
    with pytest.raises(ValueError, match="paired=False"):
        shape_power_loss(data, torch.randn(3, 1, 1024))


def test_log_power_loss_is_zero_on_identical_inputs_scale_free_and_has_gradients():
    data = torch.randn(4, 1, 1024, dtype=torch.float64)
    assert torch.equal(log_power_loss(data, data.clone()), torch.zeros(4, dtype=torch.float64))
    assert torch.equal(
        log_power_loss(data, data.clone(), paired=False).abs().max(), data.new_zeros(())
    )
    samples = (data + 0.1 * torch.randn_like(data)).requires_grad_()
    paired = log_power_loss(samples, data)
    assert paired.shape == (4,) and (paired > 0).all()
    (gradient,) = torch.autograd.grad(paired.sum(), samples)
    assert torch.isfinite(gradient).all() and gradient.abs().sum() > 0
    # the floor follows the data's peak: one gain on both sides changes nothing
    torch.testing.assert_close(log_power_loss(3.0 * samples, 3.0 * data), paired)
    unpaired = log_power_loss(samples, torch.randn(7, 1, 512), paired=False)
    assert unpaired.shape == (4,) and len(set(unpaired.tolist())) == 1 and unpaired[0] > 0
    with pytest.raises(ValueError, match="paired=False"):
        log_power_loss(samples, torch.randn(7, 1, 1024))


def test_log_power_loss_weighs_a_weak_harmonic_as_power_loss_does_not():
    time = torch.arange(1024, dtype=torch.float64) / RATE

    def note(fundamental: float, weak: float) -> torch.Tensor:  # a 200 Hz note, 3rd harmonic
        wave = fundamental * torch.sin(2 * math.pi * 200 * time)
        return (wave + weak * torch.sin(2 * math.pi * 600 * time + 1)).view(1, 1, -1)

    data = note(1.0, 0.1)  # the harmonic 20 dB below the fundamental
    quieter_fundamental, no_harmonic = note(0.5, 0.1), note(1.0, 0.0)
    linear = power_loss(no_harmonic, data) / power_loss(quieter_fundamental, data)
    logarithmic = log_power_loss(no_harmonic, data) / log_power_loss(quieter_fundamental, data)
    assert linear.item() < 0.01  # the missing harmonic is invisible to the power loss
    assert logarithmic.item() > 0.3  # comparable to a 6 dB error at the peak here
    # below the floor (40 dB under the data's peak by default) differences are ignored
    faint = note(1.0, 0.1) + 1e-4 * torch.sin(2 * math.pi * 1400 * time)
    assert log_power_loss(faint, data).item() < 1e-3 * log_power_loss(no_harmonic, data).item()


def test_loudness_loss_matches_the_spread_of_loudness_in_any_order():
    torch.manual_seed(0)
    gains = torch.linspace(0.25, 0.75, 8)[:, None, None]
    data = gains * torch.randn(8, 1, 256, dtype=torch.float64)
    assert loudness_loss(data, data) == 0
    assert loudness_loss(data[torch.randperm(8)], data) == 0  # which row is loud is free
    one_loudness = data / data.square().mean((1, 2), keepdim=True).sqrt() * 0.5
    one_loudness.requires_grad_(True)
    collapsed = loudness_loss(one_loudness, data)
    # the same mean loudness, no spread: the loss is the data's variance of log power
    log_power = data.square().mean((1, 2)).log()
    spread = ((log_power - log_power.mean()) ** 2).mean().item()
    assert collapsed.item() == pytest.approx(spread, rel=0.2)
    collapsed.backward()
    assert one_loudness.grad.abs().sum() > 0
    # unequal counts: the data's quantiles at the samples' ranks
    assert loudness_loss(data[::2], data) < 0.2 * collapsed.item()


def test_log_spectral_distance_is_zero_for_the_same_set_and_grows_with_the_mismatch():
    data = torch.stack([tone(hz) for hz in (200.0, 300.0)]).unsqueeze(1)
    assert log_spectral_distance(data, data).item() == 0.0
    near = log_spectral_distance(data * 1.1, data).item()
    far = log_spectral_distance(torch.randn_like(data) * 0.1, data).item()
    assert near == pytest.approx(20 * math.log10(1.1), rel=1e-3)  # a gain of 1.1 is 0.83 dB
    assert far > 10 * near


def test_pitch_is_the_fundamental_within_a_tenth_of_a_semitone():
    targets = torch.tensor([110.0, 116.5, 155.0, 220.0, 311.0, 440.0])
    pure = torch.stack([tone(hz) for hz in targets.tolist()])
    rich = torch.stack([tone(hz, harmonics=5) for hz in targets.tolist()])
    for waves in (pure, rich, rich.unsqueeze(1)):  # (N, T) and (N, C, T)
        estimated = estimate_pitch(waves, RATE, 80.0, 600.0)
        assert estimated.shape == (6,)
        assert semitone_error(estimated, targets.double()).max() < 0.1
    # a harmonic stronger than the fundamental does not win over it
    strong_second = tone(150.0) + 2 * tone(300.0)
    assert estimate_pitch(strong_second[None], RATE, 80.0, 600.0)[0] == pytest.approx(150, abs=1)


def test_semitone_error_and_within_semitone_fraction():
    target = torch.tensor([100.0, 100.0, 100.0, 100.0])
    estimated = target * 2 ** (torch.tensor([0.0, 0.5, -0.9, 3.0]) / 12)
    assert torch.allclose(semitone_error(estimated, target), torch.tensor([0.0, 0.5, 0.9, 3.0]))
    assert within_semitone_fraction(estimated, target) == 0.75
    assert within_semitone_fraction(estimated, target, tolerance=0.25) == 0.25


def test_log_mel_spectrogram_shape_alignment_and_finiteness():
    x = torch.randn(2, 1, 4096) * 0.1
    mel = log_mel_spectrogram(x, RATE, n_fft=1024, hop_length=256, n_mels=80)
    assert mel.shape == (2, 1, 80, 16) and torch.isfinite(mel).all()
    assert log_mel_spectrogram(torch.zeros(512), RATE).min() == pytest.approx(math.log(1e-5))
    # frame k describes samples around [k * hop, (k + 1) * hop): a burst in frame 10's hop
    burst = torch.zeros(4096)
    burst[10 * 256 : 11 * 256] = torch.randn(256)
    energy = log_mel_spectrogram(burst, RATE, n_fft=512, hop_length=256).exp().sum(0)
    assert energy.argmax() == 10
    x = x.requires_grad_()
    (gradient,) = torch.autograd.grad(log_mel_spectrogram(x, RATE).sum(), x)
    assert torch.isfinite(gradient).all()


def test_mel_filterbank_covers_the_band_in_increasing_order():
    filters = mel_filterbank(RATE, 1024, 80)
    assert filters.shape == (80, 513) and (filters >= 0).all() and (filters <= 1).all()
    assert (filters.argmax(1).diff() >= 0).all() and (filters.sum(1) > 0).all()


@pytest.mark.parametrize("channels", [1, 2])
def test_wav_round_trip_is_exact_to_16_bits(tmp_path, channels):
    x = torch.rand(channels, 3000) * 1.8 - 0.9
    write_wav(tmp_path / "clip.wav", x, 22050)
    back, rate = read_wav(tmp_path / "clip.wav")
    assert rate == 22050 and back.shape == (channels, 3000) and back.dtype == torch.float32
    assert (back - x).abs().max() <= 0.5 / 32768 + 1e-7


def test_write_wav_clips_and_takes_a_mono_vector(tmp_path):
    write_wav(tmp_path / "loud.wav", torch.tensor([-3.0, -1.0, 0.0, 1.0, 3.0]), RATE)
    back, _ = read_wav(tmp_path / "loud.wav")
    assert back.shape == (1, 5)
    assert back[0].tolist() == pytest.approx([-1.0, -1.0, 0.0, 32767 / 32768, 32767 / 32768])


def test_read_wav_names_a_file_it_cannot_read(tmp_path):
    path = tmp_path / "fake.wav"
    path.write_text("not audio")
    with pytest.raises(ValueError, match=r"fake\.wav is not a PCM WAV file"):
        read_wav(path)
