"""A checkpoint is data: loading one builds only distill's own builders (`distill.spec`).

Each case saves a real checkpoint, edits its hyper-parameters the way an attacker would (plain
dicts and strings, which ``torch.load(weights_only=True)`` accepts) and loads it back.
"""

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader

from distill.models import StudentModule, TeacherModule
from distill.spec import BUILDERS, build_from_spec

FEATURES = 2
TINY_MAF = {
    "_target_": "distill.flows.build_maf",
    "features": FEATURES,
    "num_layers": 1,
    "hidden_features": [8],
}
TINY_IAF = {**TINY_MAF, "_target_": "distill.flows.build_iaf"}
PREPROCESSING = {"_target_": "distill.flows.build_preprocessing", "features": FEATURES}


def save_after_one_step(module: L.LightningModule, path) -> None:
    trainer = L.Trainer(
        max_steps=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(module, DataLoader(torch.randn(16, FEATURES), batch_size=8))
    trainer.save_checkpoint(path)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """Paths of a real teacher and a real student checkpoint, one training step each."""
    folder = tmp_path_factory.mktemp("checkpoints")
    hparams = {"flow": TINY_MAF, "preprocessing": PREPROCESSING, "data": {"name": "noise"}}
    save_after_one_step(TeacherModule(**hparams), folder / "teacher.ckpt")
    student = StudentModule(
        student=TINY_IAF, teacher=hparams, loss={"terms": {"reverse_kl": 1.0}, "num_samples": 8}
    )
    save_after_one_step(student, folder / "student.ckpt")
    return {"teacher": folder / "teacher.ckpt", "student": folder / "student.ckpt"}


def tampered(source, destination, edit) -> str:
    checkpoint = torch.load(source, weights_only=True)
    edit(checkpoint["hyper_parameters"])
    torch.save(checkpoint, destination)
    return str(destination)


def savetxt(path) -> dict:
    """A spec that writes ``path`` if anything instantiates it."""
    return {"_target_": "numpy.savetxt", "fname": str(path), "X": [[1.0]]}


def test_untampered_checkpoints_load(checkpoints):
    TeacherModule.load_from_checkpoint(checkpoints["teacher"])
    StudentModule.load_from_checkpoint(checkpoints["student"])


def test_teacher_with_a_foreign_target_is_refused_before_it_runs(checkpoints, tmp_path):
    pwned = tmp_path / "pwned.txt"
    path = tampered(
        checkpoints["teacher"],
        tmp_path / "evil.ckpt",
        lambda hparams: hparams.update(preprocessing=savetxt(pwned)),
    )
    with pytest.raises(ValueError) as refused:
        TeacherModule.load_from_checkpoint(path)
    message = str(refused.value)
    assert "\n" not in message
    assert "`preprocessing`" in message and "numpy.savetxt" in message
    assert "distill.flows.build_preprocessing" in message  # what is allowed
    assert not pwned.exists()


def test_teacher_with_a_nested_target_is_refused(checkpoints, tmp_path):
    pwned = tmp_path / "pwned.txt"
    path = tampered(
        checkpoints["teacher"],
        tmp_path / "evil.ckpt",
        lambda hparams: hparams["flow"].update(hidden_features=[savetxt(pwned)]),
    )
    with pytest.raises(ValueError, match=r"flow\.hidden_features\[0\]\._target_") as refused:
        TeacherModule.load_from_checkpoint(path)
    assert "\n" not in str(refused.value)
    assert not pwned.exists()


def test_student_with_a_foreign_teacher_preprocessing_is_refused(checkpoints, tmp_path):
    pwned = tmp_path / "pwned.txt"
    path = tampered(
        checkpoints["student"],
        tmp_path / "evil.ckpt",
        lambda hparams: hparams["teacher"].update(preprocessing=savetxt(pwned)),
    )
    with pytest.raises(ValueError, match=r"`_target_: numpy\.savetxt`.*use one of") as refused:
        StudentModule.load_from_checkpoint(path)
    assert "\n" not in str(refused.value)
    assert not pwned.exists()


@pytest.mark.parametrize(
    "spec, refused",
    [
        ({"_target_": "os.system", "_args_": ["true"]}, "os.system"),
        ({"_target_": "builtins.open", "file": "x", "mode": "w"}, "builtins.open"),
        ({"_target_": "distill.flows.made.MADE"}, "distill.flows.made.MADE"),  # ours, not a spec
        ({"_target_": ["distill.flows.build_maf"]}, "['distill.flows.build_maf']"),
        ({**TINY_MAF, "_partial_": True}, "flow._partial_"),
        ({**TINY_MAF, "_args_": [2]}, "flow._args_"),
        ({**TINY_MAF, "_recursive_": False}, "flow._recursive_"),
        ({**TINY_MAF, "extra": {"inner": {"_target_": "builtins.print"}}}, "flow.extra.inner"),
    ],
)
def test_build_from_spec_refuses(spec, refused):
    with pytest.raises(ValueError, match="config `flow`") as error:
        build_from_spec(spec, "flow")
    assert refused in str(error.value)


def test_every_allowed_builder_is_the_callable_its_name_says():
    for name, builder in BUILDERS.items():
        module, _, attribute = name.rpartition(".")
        assert getattr(__import__(module, fromlist=[attribute]), attribute) is builder


def test_builder_errors_stay_one_line_and_name_the_key():
    with pytest.raises(ValueError, match=r"invalid config `student` .*num_layers must be >= 1"):
        build_from_spec({**TINY_IAF, "num_layers": 0}, "student")


def test_settings_written_before_the_builders_refused_them_are_dropped_with_a_warning(
    checkpoints, tmp_path
):
    """A checkpoint from before the refusals holds settings its flows never read (a spline's
    ``bins`` beside an affine MAF): it loads, warns with their paths, and is the same flow."""

    def add_unread(hparams):
        hparams["student"] = {**hparams["student"], "bins": 32, "tail_bound": 4.0}
        hparams["teacher"]["flow"] = {**hparams["teacher"]["flow"], "log_scale_bound": None}
        hparams["teacher"]["flow"]["bins"] = 16

    path = tampered(checkpoints["student"], tmp_path / "old.ckpt", add_unread)
    with pytest.warns(UserWarning, match=r"student.bins, student.tail_bound, teacher.flow.bins"):
        old = StudentModule.load_from_checkpoint(path)
    current = StudentModule.load_from_checkpoint(checkpoints["student"])
    x = torch.randn(5, FEATURES)
    torch.testing.assert_close(old.student.log_prob(x), current.student.log_prob(x))
    torch.testing.assert_close(old.teacher.log_prob(x), current.teacher.log_prob(x))
    with pytest.raises(ValueError, match="bins=32, tail_bound=4.0 is not read by the affine"):
        build_from_spec({**TINY_IAF, "bins": 32, "tail_bound": 4.0}, "student.flow")


@pytest.mark.parametrize(
    ("spec", "unread"),
    [
        ({"_target_": "distill.flows.build_wavenet_iaf", "context_hidden": 8}, ["context_hidden"]),
        ({"_target_": "distill.flows.build_wavenet_maf", "hop_length": 4}, ["hop_length"]),
        (
            {"_target_": "distill.flows.build_wavenet_maf", "transform": "spline", "bins": 4},
            [],
        ),
        (
            {
                "_target_": "distill.flows.build_realnvp",
                "transform": "spline",
                "log_scale_bound": 3,
            },
            ["log_scale_bound"],
        ),
        ({"_target_": "distill.flows.build_nice", "tail_bound": 2.0}, ["tail_bound"]),
        ({"_target_": "distill.flows.build_flow", "layer": "maf", "bins": 8}, ["bins"]),
    ],
)
def test_unread_settings_are_what_the_builders_refuse(spec, unread):
    from distill.flows.builders import unread_settings
    from distill.spec import without_unread

    shape = {"features": FEATURES} if "wavenet" not in spec["_target_"] else {"length": 8}
    assert unread_settings(spec["_target_"], spec) == unread
    if unread:
        with pytest.raises(ValueError, match=f"{unread[0]}="):
            build_from_spec({**spec, **shape}, "flow")
    cleaned, dropped = without_unread({"flow": {**spec, **shape}})
    assert dropped == [f"flow.{key}" for key in unread]
    build_from_spec(cleaned["flow"], "flow")
