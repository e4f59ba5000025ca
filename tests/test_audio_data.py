"""Sequence data (distill.data.audio): synthetic notes and crops of WAV files."""

import math

import pytest
import torch
from torch.utils.data import DataLoader, DistributedSampler

import distill.data.audio as audio
from distill.data import NotesDataModule, WaveformDataModule, build_datamodule
from distill.spec import plain
from distill.spectral import (
    estimate_pitch,
    log_mel_spectrogram,
    within_semitone_fraction,
    write_wav,
)

RATE = 16000
SMALL = {"num_train": 64, "num_val": 32, "num_test": 32, "batch_size": 16}


def notes(**options) -> NotesDataModule:
    module = build_datamodule("notes", **{**SMALL, **options})
    module.setup("fit")
    return module


def write_clip(path, seconds: float, channels: int = 1, rate: int = RATE, seed: int = 0):
    """A noisy 220 Hz tone of ``seconds`` (channels x samples), written as 16-bit PCM."""
    generator = torch.Generator().manual_seed(seed)
    samples = round(seconds * rate)
    time = torch.arange(samples) / rate
    x = 0.5 * torch.sin(2 * math.pi * 220 * time) + 0.05 * torch.randn(
        channels, samples, generator=generator
    )
    write_wav(path, x, rate)
    return x


def waveform(path, **options) -> WaveformDataModule:
    module = build_datamodule("waveform", path=str(path), **{"batch_size": 4, **options})
    module.setup("fit")
    return module


# ---- the contract shared by every sequence data set ----


@pytest.mark.parametrize(
    ("conditioning", "context_shape"),
    [("none", None), ("pitch", (1,)), ("pitch_track", (1, 2048 // 256))],
)
def test_notes_attributes_and_batches(conditioning, context_shape):
    module = notes(conditioning=conditioning)
    assert (module.name, module.sample_rate, module.length, module.channels) == (
        "notes",
        16000,
        2048,
        1,
    )
    assert module.event_shape == (1, 2048) and module.context_shape == context_shape
    assert module.features is None and module.image_shape is None and not module.bits_per_dim
    assert module.preprocessing_config == {"channels": 1}
    standardized, _ = module.preprocessing.inverse(module.train_data)  # data -> model space
    assert abs(standardized.mean().item()) < 1e-4 and abs(standardized.std().item() - 1) < 1e-3
    assert module.entropy is None and module.in_support(module.test_data) is None
    assert module.spec == {
        "_target_": "distill.data.build_datamodule",
        "name": "notes",
        "conditioning": conditioning,
        **SMALL,
    }
    for split, size in (("train", 64), ("val", 32), ("test", 32)):
        data, context = getattr(module, f"{split}_data"), getattr(module, f"{split}_context")
        assert data.shape == (size, 1, 2048) and data.dtype == torch.float32
        assert data.abs().max() < 1.0
        if context_shape is None:
            assert context is None
        else:
            assert context.shape == (size, *context_shape) and context.dtype == torch.float32
            assert 0 <= context.min() and context.max() <= 1
    assert len(list(module.train_dataloader())) == 4  # 64 / 16
    for loader in (module.train_dataloader(), module.val_dataloader(), module.test_dataloader()):
        batch = next(iter(loader))
        if context_shape is None:
            assert isinstance(batch, torch.Tensor) and batch.shape == (16, 1, 2048)
        else:
            x, context = batch
            assert x.shape == (16, 1, 2048) and context.shape == (16, *context_shape)
            assert x.dtype == context.dtype == torch.float32
    # val batches come in order; each context travels with its own sequence
    batch = next(iter(module.val_dataloader()))
    if context_shape is None:
        assert torch.equal(batch, module.val_data[:16])
    else:
        assert torch.equal(batch[0], module.val_data[:16])
        assert torch.equal(batch[1], module.val_context[:16])


def test_a_distributed_sampler_shards_whole_batches():
    module = notes(conditioning="pitch")
    dataset = module.train_dataloader().dataset
    seen = []
    for rank in (0, 1):
        sampler = DistributedSampler(dataset, num_replicas=2, rank=rank, shuffle=True, seed=3)
        loader = DataLoader(dataset, batch_size=8, sampler=sampler, collate_fn=lambda b: b)
        for x, context in loader:
            assert x.shape == (8, 1, 2048) and context.shape == (8, 1)
            seen.append(x)
    assert torch.cat(seen).unique(dim=0).shape[0] == 64
    x, context = dataset[5]
    assert torch.equal(x, module.train_data[5]) and torch.equal(context, module.train_context[5])


def test_unknown_options_and_conditionings_are_refused_by_name(tmp_path):
    with pytest.raises(ValueError, match=r"'notes' has no option\(s\) \['n_mels'\]: its options"):
        build_datamodule("notes", n_mels=80)
    with pytest.raises(ValueError, match=r"'waveform' has no option\(s\) \['num_train'\]"):
        build_datamodule("waveform", path=str(tmp_path), num_train=10)
    with pytest.raises(ValueError, match="'notes' has no conditioning 'mel': choose one of none"):
        build_datamodule("notes", conditioning="mel")
    with pytest.raises(ValueError, match="'waveform' has no conditioning 'pitch'"):
        build_datamodule("waveform", path=str(tmp_path), conditioning="pitch")


@pytest.mark.parametrize(("name", "conditioning"), [("notes", "pitch_track"), ("waveform", "mel")])
def test_a_length_that_is_not_a_multiple_of_hop_length_is_refused(tmp_path, name, conditioning):
    options = {"path": str(tmp_path)} if name == "waveform" else {}
    with pytest.raises(ValueError, match="length=2000 is not a multiple of hop_length=256.*1792"):
        build_datamodule(name, length=2000, conditioning=conditioning, **options)
    # without local contexts the frames do not matter
    assert build_datamodule("notes", length=2000, conditioning="pitch").length == 2000


# ---- notes ----


def test_notes_are_deterministic_per_seed_and_the_splits_differ():
    first, again, other = notes(seed=1), notes(seed=1), notes(seed=2)
    assert torch.equal(first.train_data, again.train_data)
    assert torch.equal(first.test_data, again.test_data)
    assert not torch.equal(first.train_data, other.train_data)
    assert not torch.equal(first.val_data, first.test_data)
    # the same notes, with or without their pitch as context
    assert torch.equal(notes(seed=1, conditioning="pitch").train_data, first.train_data)


def test_notes_sound_at_the_pitch_their_context_asks_for():
    module = notes(conditioning="pitch", num_test=200)
    target = module.pitch_of(module.test_context)
    assert target.shape == (200,)
    assert 110 <= target.min() and target.max() <= 440
    # log-uniform over two octaves: each octave holds about half the notes
    assert 0.35 < (target < 220).double().mean() < 0.65
    estimated = estimate_pitch(module.test_data, RATE, 80.0, 600.0)
    assert within_semitone_fraction(estimated, target) >= 0.95


def test_pitch_track_notes_move_as_their_track_says():
    module = notes(conditioning="pitch_track", num_test=200)
    data, context = module.test_data, module.test_context
    frames = context.shape[-1]
    assert (context.amax(-1) - context.amin(-1)).max() > 0.1  # > 2.4 semitones

    def hz(normalized):
        return 110.0 * 4.0**normalized

    # each half of a note sounds at its half of the track
    halves = data.tensor_split(2, dim=-1)
    tracks = context[:, 0].tensor_split(2, dim=-1)
    for half, track in zip(halves, tracks, strict=True):
        estimated = estimate_pitch(half, RATE, 80.0, 600.0)
        assert within_semitone_fraction(estimated, hz(track.double().mean(-1))) >= 0.9
    # and the movement between the halves is heard: the estimated change follows the track's
    heard = 12 * torch.log2(
        estimate_pitch(halves[1], RATE, 80, 600) / estimate_pitch(halves[0], RATE, 80, 600)
    )
    asked = 12 * 2 * (tracks[1].mean(-1) - tracks[0].mean(-1))
    assert torch.corrcoef(torch.stack([heard, asked.double()]))[0, 1] > 0.9
    assert frames == 8
    # the pitch a track asks for is its median frame's
    asked_hz = module.pitch_of(context)
    assert asked_hz.shape == (200,)
    assert torch.allclose(asked_hz, hz(context[:, 0].double().quantile(0.5, dim=-1)))


def test_pitch_of_needs_a_context():
    with pytest.raises(ValueError, match="conditioning='none' has no contexts"):
        notes().pitch_of(torch.zeros(3, 1))


def test_notes_options_are_checked():
    with pytest.raises(ValueError, match="min_pitch < max_pitch"):
        build_datamodule("notes", min_pitch=500.0, max_pitch=400.0)
    with pytest.raises(ValueError, match="num_val must be a positive integer"):
        build_datamodule("notes", num_val=0)
    with pytest.raises(ValueError, match="batch_size=128 exceeds the 64 training sequences"):
        notes(batch_size=128)


# ---- waveform ----


def test_one_file_is_cut_in_time_into_fixed_val_and_test_crops(tmp_path):
    x = write_clip(tmp_path / "clip.wav", seconds=2.0)  # 32000 samples
    module = waveform(tmp_path, length=1024)
    assert module.context_shape is None and module.event_shape == (1, 1024)
    # 32000 samples: 25600 train, 3200 val, 3200 test -> 25, 3 and 3 whole crops
    assert module.train_data.shape == (25, 1, 1024)
    assert module.val_data.shape == (3, 1, 1024) and module.test_data.shape == (3, 1, 1024)
    quantized = torch.round(x * 32768).clamp(-32768, 32767) / 32768
    assert torch.equal(module.val_data[0, 0], quantized[0, 25600 : 25600 + 1024])
    assert torch.equal(module.test_data[2, 0], quantized[0, 28800 + 2048 : 28800 + 3072])
    again = waveform(tmp_path, length=1024)
    assert torch.equal(again.val_data, module.val_data)
    # training crops are drawn afresh every epoch, from the training audio only
    first, second = (next(iter(module.train_dataloader())) for _ in range(2))
    assert first.shape == (4, 1, 1024) and first.dtype == torch.float32
    assert not torch.equal(first, second)
    train_audio = quantized[0, :25600]
    for crop in first[:, 0]:
        windows = train_audio.unfold(0, 1024, 1)
        assert (windows == crop).all(1).any()


def test_mel_contexts_are_the_frames_of_each_crop(tmp_path):
    x = write_clip(tmp_path / "clip.wav", seconds=2.0)
    module = waveform(tmp_path, length=1024, conditioning="mel", n_mels=40)
    assert module.context_shape == (40, 4)
    assert module.val_context.shape == (len(module.val_data), 40, 4)
    quantized = torch.round(x * 32768).clamp(-32768, 32767) / 32768
    # boundaries on whole frames: 125 frames -> 99 train, 13 val, 13 test (rounded half up)
    val_audio = quantized[0, 99 * 256 : 112 * 256]
    expected = log_mel_spectrogram(val_audio, RATE, 1024, 256, 40)
    assert torch.allclose(module.val_context[1], expected[:, 4:8], atol=1e-5)
    assert torch.equal(module.val_data[1, 0], val_audio[1024:2048])
    crops, contexts = next(iter(module.train_dataloader()))
    assert crops.shape == (4, 1, 1024) and contexts.shape == (4, 40, 4)
    assert torch.isfinite(contexts).all()


def test_enough_files_are_held_out_whole_and_stereo_is_averaged(tmp_path):
    for index in range(6):
        write_clip(tmp_path / f"clip{index}.wav", seconds=0.25, channels=2, seed=index)
    module = waveform(tmp_path, length=1024, val_fraction=0.2, test_fraction=0.2)
    # 6 files: 4 train, 1 val, 1 test, each 4000 samples = 3 crops
    assert [len(module.train_data), len(module.val_data), len(module.test_data)] == [12, 3, 3]
    held_out = torch.cat([module.val_data, module.test_data])
    assert not (module.train_data[:, None] == held_out[None]).all(-1).all(-1).any()
    assert module.train_data.shape[1] == 1


def test_a_single_wav_file_can_be_the_path(tmp_path):
    write_clip(tmp_path / "clip.wav", seconds=1.0)
    assert waveform(tmp_path / "clip.wav", length=1024).val_data.shape == (1, 1, 1024)


def _with_nan(read):
    """``read_wav`` returning NaN samples for files called nan.wav (PCM cannot hold NaN)."""

    def read_with_nan(path):
        x, rate = read(path)
        return (torch.full_like(x, float("nan")), rate) if path.name == "nan.wav" else (x, rate)

    return read_with_nan


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("missing", r"missing does not exist .*set data\.path to a folder of WAV files"),
        ("empty", r"empty holds no WAV files: put mono 16-bit PCM \.wav files at 16000 Hz"),
        ("not_wav", r"readme\.txt is not a \.wav file: .*move it out"),
        ("unreadable", r"broken\.wav is not a PCM WAV file .*convert it to 16-bit PCM"),
        ("short", r"short\.wav holds 1000 samples, fewer than one crop \(data\.length=2048\)"),
        ("rate", r"fast\.wav is sampled at 22050 Hz but data\.sample_rate=16000: resample"),
        ("nan", r"nan\.wav has NaN or Inf samples: fix or remove the file"),
    ],
)
def test_bad_input_is_a_one_line_error_naming_the_file(tmp_path, monkeypatch, case, message):
    folder = tmp_path / case
    folder.mkdir()
    write_clip(folder / "good.wav", seconds=1.0)
    if case == "missing":
        folder = folder / "missing"
    elif case == "empty":
        (folder / "good.wav").unlink()
        (folder / ".hidden").write_text("skipped")
    elif case == "not_wav":
        (folder / "readme.txt").write_text("notes")
    elif case == "unreadable":
        (folder / "broken.wav").write_bytes(b"RIFF\x00\x00")
    elif case == "short":
        write_clip(folder / "short.wav", seconds=1000 / RATE)
    elif case == "rate":
        write_clip(folder / "fast.wav", seconds=0.5, rate=22050)
    elif case == "nan":
        write_clip(folder / "nan.wav", seconds=0.5)
        monkeypatch.setattr(audio, "read_wav", _with_nan(audio.read_wav))
    with pytest.raises(ValueError, match=message) as error:
        waveform(folder)
    assert "\n" not in str(error.value)


def test_too_little_audio_for_a_split_is_refused(tmp_path):
    write_clip(tmp_path / "clip.wav", seconds=0.2)  # 3200 samples: val and test regions < 2048
    with pytest.raises(ValueError, match="leave no val crop of data.length=2048 samples"):
        waveform(tmp_path)


def test_the_data_configs_compose_and_build(compose_config, tmp_path):
    write_clip(tmp_path / "clip.wav", seconds=3.0)
    for overrides in (
        ["data=notes", "data.num_train=32", "data.conditioning=pitch"],
        ["data=waveform", f"data.path={tmp_path}", "data.conditioning=mel", "data.batch_size=8"],
    ):
        spec = plain(compose_config("teacher", overrides).data)
        module = build_datamodule(**{k: v for k, v in spec.items() if k != "_target_"})
        module.setup("fit")
        assert module.spec == spec and len(module.train_data) >= module.batch_size
