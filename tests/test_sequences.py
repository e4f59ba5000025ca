"""Sequence runs end to end: distill-teacher and distill-student on the synthetic notes write
per-step metrics, a spectrogram figure, WAV files in the run directory and audio in an offline
W&B run; the sequence evaluation reports what the issue asks for."""

import json

import pytest
import torch

from distill.cli.student import run as run_student
from distill.cli.teacher import run as run_teacher
from distill.data import build_datamodule
from distill.evaluate_sequences import evaluate_sequence_distillation, sampling_times
from distill.flows import build_wavenet_iaf, build_wavenet_maf

TINY_NOTES = [
    "experiment=notes",
    "data.num_train=32",
    "data.num_val=8",
    "data.num_test=8",
    "data.length=256",
    "data.batch_size=8",
    "teacher.flow.layers_per_flow=[3]",
    "student.flow.layers_per_flow=[2,2]",
    "teacher.trainer.max_steps=2",
    "student.trainer.max_steps=2",
    "student.loss.num_samples=4",
    "student.evaluation.num_kl_samples=8",
    "student.evaluation.num_nll_sequences=4",
    "student.evaluation.timing_seconds=0.01",
    "student.evaluation.timing_rounds=1",
]


def test_teacher_then_student_write_audio_figures_and_offline_wandb(compose_config, tmp_path):
    teacher_dir, student_dir = tmp_path / "teacher", tmp_path / "student"
    cfg = compose_config("teacher", [*TINY_NOTES, "logger=wandb"], output_dir=teacher_dir)
    teacher_metrics = run_teacher(cfg)
    assert teacher_metrics["teacher/test_nll_per_step"] == pytest.approx(
        teacher_metrics["teacher/test_nll"] / 256
    )
    assert sorted(p.name for p in (teacher_dir / "audio").glob("*.wav")) == [
        *(f"data_{i}.wav" for i in range(4)),
        *(f"teacher_{i}.wav" for i in range(4)),
    ]
    assert (teacher_dir / "plots" / "spectrograms.png").is_file()
    offline_audio = list(teacher_dir.glob("wandb/offline-run-*/files/media/audio/**/*.wav"))
    assert len(offline_audio) == 8  # data and teacher, 4 each

    ckpt = teacher_metrics["teacher/checkpoint"]
    cfg = compose_config(
        "student", [*TINY_NOTES, "logger=csv", f"teacher.ckpt={ckpt}"], output_dir=student_dir
    )
    metrics = run_student(cfg)
    for key in (
        "student/kl_per_step_trimmed_mean",
        "student/kl_per_step_p99",
        "student/kl_per_step_nonfinite_fraction",
        "student/test_nll_per_step",
        "student/nll_relative_gap",
        "student/log_spectral_distance",
        "student/pitch_within_semitone",
        "teacher/pitch_within_semitone",
        "sampling/b1_speedup",
        "sampling/b16_speedup",
    ):
        assert key in metrics, key
    on_disk = json.loads((student_dir / "metrics.json").read_text())
    assert on_disk["sampling/b1_speedup"] == pytest.approx(metrics["sampling/b1_speedup"])
    report = (student_dir / "report.md").read_text()
    assert "held-out NLL per step" in report and "audio/student_0.wav" in report
    assert len(list((student_dir / "audio").glob("student_*.wav"))) == 4


def test_a_vector_teacher_is_refused_for_sequence_data(compose_config, tmp_path):
    cfg = compose_config("teacher", ["data=moons", "teacher.trainer.max_steps=2", "logger=none"])
    ckpt = run_teacher(cfg)["teacher/checkpoint"]
    cfg = compose_config("student", [*TINY_NOTES, "logger=none", f"teacher.ckpt={ckpt}"])
    with pytest.raises(ValueError, match="trained on data `moons`"):
        run_student(cfg)


def notes(conditioning: str):
    datamodule = build_datamodule(
        "notes",
        num_train=16,
        num_val=4,
        num_test=8,
        length=128,
        conditioning=conditioning,
        hop_length=32,
        batch_size=4,
    )
    datamodule.setup()
    return datamodule


@pytest.mark.parametrize("conditioning", ["none", "pitch", "pitch_track"])
def test_sequence_evaluation_for_every_conditioning(conditioning):
    datamodule = notes(conditioning)
    shape = {"channels": 1, "length": 128, "residual_channels": 8, "skip_channels": 8}
    if conditioning == "pitch":
        shape["global_features"] = 1
    elif conditioning == "pitch_track":
        shape.update(local_features=1, hop_length=32)
    teacher = build_wavenet_maf(layers_per_flow=[2], **shape).eval()
    student = build_wavenet_iaf(layers_per_flow=[1, 1], **shape).eval()
    metrics, samples = evaluate_sequence_distillation(
        student, teacher, datamodule, 6, 3, 5, timing_seconds=0.004, timing_rounds=1
    )
    assert {role: x.shape for role, x in samples.items()} == {
        role: (5, 1, 128) for role in ("data", "teacher", "student")
    }
    assert metrics["data/log_spectral_distance"] >= 0
    assert ("student/pitch_within_semitone" in metrics) == (conditioning != "none")
    assert metrics["sampling/b1_rounds"] == 1 and metrics["sampling/b16_speedup"] > 0
    assert all(torch.isfinite(torch.tensor(v)) for v in metrics.values() if isinstance(v, float))


def test_local_context_timing_uses_whole_frames():
    datamodule = notes("pitch_track")
    shape = {"channels": 1, "length": 128, "local_features": 1, "hop_length": 32}
    teacher = build_wavenet_maf(layers_per_flow=[1], **shape).eval()
    student = build_wavenet_iaf(layers_per_flow=[1], **shape).eval()
    metrics = sampling_times(
        teacher, student, 16000, datamodule.test_context, (1,), seconds=0.005, rounds=1
    )
    assert metrics["sampling/seconds_of_audio"] == pytest.approx(64 / 16000)  # 80 -> 2 frames
    assert metrics["sampling/b1_cpu_threads"] == torch.get_num_threads()  # said with the ratio


@pytest.mark.parametrize("conditioning", ["none", "pitch", "pitch_track"])
def test_timing_draws_the_asked_seconds_of_audio(monkeypatch, conditioning):
    import distill.evaluate_sequences as evaluation

    datamodule = notes(conditioning)
    shape = {"channels": 1, "length": 128, "residual_channels": 4, "skip_channels": 4}
    if conditioning == "pitch":
        shape["global_features"] = 1
    elif conditioning == "pitch_track":
        shape.update(local_features=1, hop_length=32)
    teacher = build_wavenet_maf(layers_per_flow=[1], **shape).eval()
    student = build_wavenet_iaf(layers_per_flow=[1], **shape).eval()
    drawn, warmed = [], []

    def record(teacher_sampler, student_sampler, count, rounds, warmups):
        drawn.extend(sampler(count).shape for sampler in (teacher_sampler, student_sampler))
        warmed.extend(warmup().shape for warmup in warmups)
        return {"sampling/speedup": 1.0}

    monkeypatch.setattr(evaluation, "paired_sampling_times", record)
    context = getattr(datamodule, "test_context", None)
    sampling_times(teacher, student, 16000, context, (1, 3), seconds=0.02, rounds=1)
    assert drawn == [(1, 1, 320)] * 2 + [(3, 1, 320)] * 2  # 0.02 s = 320 steps, 10 frames of 32
    # the teacher warms up on a sixteenth (whole frames: one), the student on the whole length
    short = 32 if conditioning == "pitch_track" else 20
    assert warmed == [(1, 1, short), (1, 1, 320), (3, 1, short), (3, 1, 320)]
