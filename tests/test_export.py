"""distill-export: a student shipped as a standalone sampler gives the module's own samples for
the same noise, at any batch size (and, for a WaveNet student over sequences, any length, with
a global or a local context); loads and runs with torch alone; says what it is in its JSON; and
refuses a checkpoint that is not a student's with one line."""

import hashlib
import itertools
import json
import subprocess
import sys

import lightning as L
import pytest
import torch

import distill
from distill.cli.export import main
from distill.export import export_program, metadata_path, sampler_signature, trace_program
from distill.flows import (
    Chain,
    MaskedAutoregressiveWaveNet,
    SequenceFlow,
    StandardizeSequence,
    build_iaf,
    build_wavenet_iaf,
    in_data_space,
)
from distill.models import StudentModule, TeacherModule
from tests.test_sequences import notes

FEATURES = 3
TEACHER = {
    "flow": {
        "_target_": "distill.flows.build_maf",
        "features": FEATURES,
        "num_layers": 1,
        "hidden_features": [8],
    },
    "preprocessing": {"_target_": "distill.flows.build_preprocessing", "features": FEATURES},
    "data": {"name": "moons", "features": FEATURES},
}
IAF = {
    "_target_": "distill.flows.build_iaf",
    "features": FEATURES,
    "num_layers": 2,
    "hidden_features": [16, 16],
}
LOSS = {"terms": {"reverse_kl": 1.0}, "num_samples": 8}
STUDENTS = {
    "affine": (IAF, TEACHER["preprocessing"]),
    "spline": ({**IAF, "transform": "spline"}, TEACHER["preprocessing"]),
    # the digits' preprocessing: standardize, then logit onto [0, 17]
    "logit": (IAF, {**TEACHER["preprocessing"], "logit_upper": 17.0}),
}
BATCH_SIZES = (1, 7, 1000)
# WaveNet students over the synthetic notes (128 steps, frames of 32 steps), one per conditioning:
# none, pitch (a global context (N, 1)), pitch_track (a local context (N, 1, T / 32))
SEQUENCE_TEACHER = {
    "_target_": "distill.flows.build_wavenet_maf",
    "layers_per_flow": [1],
    "residual_channels": 4,
    "skip_channels": 4,
}
SEQUENCE_STUDENT = {
    "_target_": "distill.flows.build_wavenet_iaf",
    "layers_per_flow": [2, 2],
    "residual_channels": 4,
    "skip_channels": 4,
}
CONDITIONINGS = ("none", "pitch", "pitch_track")
SEQUENCE_BATCH_SIZES = (1, 7, 32)
LENGTHS = (64, 256)  # neither the training length (128) nor the 3 frames export traces with


def save(module: L.LightningModule, path) -> None:
    trainer = L.Trainer(
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.strategy.connect(module)
    trainer.save_checkpoint(path)


@torch.no_grad()
def perturb(module: StudentModule, generator: torch.Generator) -> None:
    """Move the student's weights away from their near-identity start."""
    for parameter in module.student.parameters():
        parameter.add_(0.3 * torch.randn(parameter.shape, generator=generator))


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """Paths of a student checkpoint of each kind in `STUDENTS` (weights and preprocessing
    statistics perturbed away from the identity) and of a teacher checkpoint."""
    folder = tmp_path_factory.mktemp("checkpoints")
    torch.manual_seed(0)  # the initial weights: not those of whichever test asked first
    generator = torch.Generator().manual_seed(0)
    paths = {}
    for name, (student, preprocessing) in STUDENTS.items():
        module = StudentModule(
            student=student, teacher={**TEACHER, "preprocessing": preprocessing}, loss=LOSS
        )
        perturb(module, generator)
        with torch.no_grad():
            standardize = module.preprocessing.bijectors[0]
            standardize.mean.copy_(torch.tensor([0.5, -1.0, 2.0]))
            standardize.std.copy_(torch.tensor([2.0, 0.5, 1.5]))
        paths[name] = folder / f"{name}.ckpt"
        save(module, paths[name])
    paths["teacher"] = folder / "teacher.ckpt"
    save(TeacherModule(**TEACHER), paths["teacher"])
    return paths


@pytest.fixture(scope="module")
def sequence_checkpoints(tmp_path_factory):
    """Paths of a WaveNet IAF student checkpoint for each of `CONDITIONINGS`, built as
    distill-student builds one (the teacher from the notes' data module, with its fitted
    standardization; the student of the teacher's shape), weights perturbed, untrained."""
    folder = tmp_path_factory.mktemp("sequence_checkpoints")
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(0)
    paths = {}
    for conditioning in CONDITIONINGS:
        teacher = TeacherModule.from_datamodule(notes(conditioning), SEQUENCE_TEACHER)
        # a conditioning network where there is a context to read
        hidden = {} if conditioning == "none" else {"context_hidden": 8}
        module = StudentModule.from_teacher(
            teacher, student={**SEQUENCE_STUDENT, **hidden, **teacher.flow_shape}, loss=LOSS
        )
        perturb(module, generator)
        paths[conditioning] = folder / f"{conditioning}.ckpt"
        save(module, paths[conditioning])
    return paths


@pytest.fixture(scope="module")
def exported_sequences(sequence_checkpoints):
    """The float64 pt2 export of each sequence student: conditioning -> the program's path."""
    paths = {}
    for conditioning, checkpoint in sequence_checkpoints.items():
        paths[conditioning] = checkpoint.with_suffix(".pt2")
        assert main([str(checkpoint), "--dtype", "float64"]) == 0
    return paths


def module_samples(
    module: StudentModule,
    count: int,
    seed: int,
    context: torch.Tensor | None = None,
    length: int | None = None,
) -> torch.Tensor:
    """``count`` samples of the module's student in data space, drawn from ``seed`` (with a
    context, its batch is the count; ``length``: sequences only)."""
    torch.manual_seed(seed)
    flow = in_data_space(module.inference_student, module.preprocessing)
    return flow.sample((count,) if context is None else (), context, length)


def program_samples(
    program, shape: tuple[int, ...], seed: int, dtype: torch.dtype, context=None
) -> torch.Tensor:
    """``program``'s samples for noise of ``shape`` drawn from ``seed``: the same draws as the
    module's base distribution."""
    torch.manual_seed(seed)
    noise = torch.randn(*shape, dtype=dtype)
    return program(noise) if context is None else program(noise, context)


def sequence_context(module: StudentModule, count: int, length: int) -> torch.Tensor | None:
    """A random float64 context of the module's student for ``count`` sequences of ``length``
    steps: None, global ``(count, G)`` or local ``(count, L, length / hop)``."""
    shape = module.hparams["student"]
    if shape.get("global_features"):
        return torch.randn(count, shape["global_features"], dtype=torch.float64)
    if shape.get("local_features"):
        frames = length // shape["hop_length"]
        return torch.randn(count, shape["local_features"], frames, dtype=torch.float64)
    return None


@pytest.mark.parametrize("kind", STUDENTS)
def test_exported_sampler_gives_the_modules_samples_in_float64(kind, checkpoints, tmp_path):
    out = tmp_path / "student.pt2"
    assert main([str(checkpoints[kind]), "--dtype", "float64", "--out", str(out)]) == 0
    program = torch.export.load(out).module()
    module = StudentModule.load_from_checkpoint(checkpoints[kind], map_location="cpu").double()
    for count in BATCH_SIZES:
        expected = module_samples(module, count, seed=count)
        got = program_samples(program, (count, FEATURES), seed=count, dtype=torch.float64)
        assert got.dtype == torch.float64 and got.shape == (count, FEATURES)
        torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)
    if kind == "logit":
        assert (expected > -1).all() and (expected < 18).all()  # data space: around [0, 17]


@pytest.fixture(scope="module")
def exported(checkpoints):
    """The default export (pt2, float32) of the logit student: the path of its program."""
    assert main([str(checkpoints["logit"])]) == 0
    return checkpoints["logit"].with_suffix(".pt2")


def test_default_export_is_float32_beside_the_checkpoint(exported, checkpoints):
    program = torch.export.load(exported).module()
    module = StudentModule.load_from_checkpoint(checkpoints["logit"], map_location="cpu")
    for count in BATCH_SIZES:
        got = program_samples(program, (count, FEATURES), seed=count, dtype=torch.float32)
        assert got.dtype == torch.float32
        # the same operations in the same order as the module's; tolerance for float32 kernels
        torch.testing.assert_close(
            got, module_samples(module, count, seed=count), rtol=0, atol=1e-5
        )


def test_json_describes_the_sampler(exported, checkpoints):
    description = json.loads(metadata_path(exported).read_text())
    assert metadata_path(exported).name == "logit.pt2.json"
    assert description["format"] == "pt2" and description["file"] == "logit.pt2"
    assert description["inputs"] == [
        {
            "name": "noise",
            "shape": ["batch", FEATURES],
            "dtype": "float32",
            "distribution": "standard normal N(0, I): torch.randn(N, D)",
        }
    ]
    [output] = description["outputs"]
    assert output["name"] == "samples" and output["shape"] == ["batch", FEATURES]
    assert description["dynamic_dims"] == {"batch": {"min": 1, "max": None}}
    assert description["dtype"] == "float32" and description["features"] == FEATURES
    assert description["context_features"] is None
    assert description["noise"] == {"distribution": "standard_normal", "mean": 0.0, "std": 1.0}
    assert description["distill_version"] == distill.__version__
    checkpoint = checkpoints["logit"]
    assert description["checkpoint"] == {
        "path": str(checkpoint.resolve()),
        "sha256": hashlib.sha256(checkpoint.read_bytes()).hexdigest(),
    }
    assert description["student"] == IAF and description["loss"] == LOSS
    assert description["ema_decay"] == 0.0 and description["teacher_data"] == "moons"


# a user's script: the inputs drawn from the JSON's shapes, their dynamic dims given in argv
STANDALONE = """
import importlib.abc, json, sys

class NoDistill(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "distill":
            raise ImportError("distill is not importable here")

sys.meta_path.insert(0, NoDistill())
import torch

path, sizes = sys.argv[1], json.loads(sys.argv[2])
description = json.load(open(path + ".json"))
program = torch.export.load(path).module()
torch.manual_seed(0)
inputs = [
    torch.randn(*[sizes.get(n, n) for n in spec["shape"]], dtype=getattr(torch, spec["dtype"]))
    for spec in description["inputs"]
]
samples = program(*inputs)
assert "distill" not in sys.modules and not any(m.startswith("distill.") for m in sys.modules)
print(json.dumps(samples.tolist()))
"""


def standalone_samples(program_path, sizes: dict[str, int], cwd) -> torch.Tensor:
    """The samples of the program at ``program_path`` in a Python that cannot import distill,
    from inputs drawn after ``torch.manual_seed(0)`` in the order and shapes of its JSON, with
    its dynamic dims of ``sizes``."""
    result = subprocess.run(
        [sys.executable, "-I", "-c", STANDALONE, str(program_path), json.dumps(sizes)],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return torch.tensor(json.loads(result.stdout), dtype=torch.float64)


def test_sampler_loads_and_samples_with_torch_alone(exported, checkpoints, tmp_path):
    samples = standalone_samples(exported, {"batch": 7}, tmp_path).float()
    module = StudentModule.load_from_checkpoint(checkpoints["logit"], map_location="cpu")
    torch.testing.assert_close(samples, module_samples(module, 7, seed=0), rtol=0, atol=1e-5)


def test_saved_program_is_frozen(exported):
    """What depends on the weights alone is computed once at export, and each tensor is an
    attribute of the program itself: no per-call walk through the flow's module tree (520
    ``nn.Module.__getattr__`` calls per sample for the default student as traced), no mask
    multiplied into its weight on every call, no tensor that nothing reads."""
    program = torch.export.load(exported)
    module = program.module()
    buffers = dict(module.named_buffers())
    assert not dict(module.named_parameters()) and buffers
    assert all("." not in name for name in buffers)  # one getattr each
    graph = module.graph
    read = {node.target for node in graph.nodes if node.op == "get_attr"}
    assert set(buffers) <= read  # no dead weights (the MADE orders, the permutations)
    operations = [node for node in graph.nodes if node.op == "call_function"]
    for node in operations:  # every operation reads the noise, directly or not
        assert any(source.op != "get_attr" for source in node.all_input_nodes), node
    masked = sum(name.startswith("folded_") for name in buffers)
    assert masked == 2 * 3  # 2 layers of 3 masked linears, each weight * mask once


def test_freezing_keeps_the_samples_and_removes_the_mask_products():
    flow = build_iaf(FEATURES, num_layers=2, hidden_features=(16,)).double().eval()
    traced, frozen = (make(flow, None, torch.float64) for make in (trace_program, export_program))
    noise = torch.randn(50, FEATURES, dtype=torch.float64)
    assert torch.equal(frozen.module()(noise), traced.module()(noise))

    def multiplications(program):
        return sum(node.target == torch.ops.aten.mul.Tensor for node in program.graph.nodes)

    assert multiplications(traced) - multiplications(frozen) == 2 * 2  # 2 masks per layer


def test_conditional_flow_exports_with_a_context_input():
    flow = build_iaf(2, num_layers=2, hidden_features=(16,), context_features=3).double().eval()
    program = export_program(flow, None, torch.float64, context_features=3).module()
    for count in (1, 7):
        context = torch.randn(count, 3, dtype=torch.float64)
        torch.manual_seed(count)
        expected = flow.sample(context=context)
        torch.manual_seed(count)
        got = program(torch.randn(count, 2, dtype=torch.float64), context)
        torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize(
    "context",
    [{}, {"global_features": 2}, {"local_features": 3, "hop_length": 4}],
    ids=["none", "global", "local"],
)
def test_a_sequence_flow_is_described_however_its_wavenets_are_held(context):
    """The sampler's inputs are read from the flow's WaveNets: a Chain of WaveNet layers (the
    builders'), one layer alone, the flow seen in data space (its Chain inside another)."""
    built = build_wavenet_iaf(length=16, layers_per_flow=[1], residual_channels=4, **context)
    expected = sampler_signature(built)
    (layer,) = built.bijector.bijectors
    alone = SequenceFlow(layer, 1, 16, built.context_event_dims, built.hop_length)
    for flow in (alone, in_data_space(built, StandardizeSequence(1))):
        got = sampler_signature(flow)
        assert (got.inputs, got.sizes, got.facts) == (
            expected.inputs,
            expected.sizes,
            expected.facts,
        )


def wavenet_layer(**context) -> MaskedAutoregressiveWaveNet:
    return MaskedAutoregressiveWaveNet(1, num_layers=1, residual_channels=4, **context)


def test_a_sequence_flow_without_wavenets_is_refused_in_one_line():
    """It was an AttributeError, deep in the export, for any bijector but a Chain."""
    no_wavenet = SequenceFlow(StandardizeSequence(1), 1, 16)
    with pytest.raises(ValueError, match="StandardizeSequence bijector.* has no WaveNet;") as error:
        sampler_signature(no_wavenet)
    assert "\n" not in str(error.value)
    mixed = SequenceFlow(Chain([wavenet_layer(), wavenet_layer(global_features=2)]), 1, 16)
    with pytest.raises(ValueError, match="WaveNets reading different contexts"):
        sampler_signature(mixed)


def error_line(capsys) -> str:
    stderr = capsys.readouterr().err
    assert "Traceback" not in stderr
    [line] = stderr.strip().splitlines()
    assert line.startswith("error: ")
    return line


def test_missing_checkpoint_is_a_one_line_error(tmp_path, capsys):
    missing = tmp_path / "nope.ckpt"
    assert main([str(missing)]) == 1
    line = error_line(capsys)
    assert f"{missing} does not exist" in line and "written by distill-student" in line


def test_corrupt_checkpoint_is_a_one_line_error(tmp_path, capsys):
    corrupt = tmp_path / "corrupt.ckpt"
    corrupt.write_bytes(b"not a checkpoint")
    assert main([str(corrupt)]) == 1
    line = error_line(capsys)
    assert f"cannot read checkpoint {corrupt}: it is corrupt" in line
    assert "written by distill-student" in line


def test_teacher_checkpoint_is_refused_with_a_one_line_error(checkpoints, capsys):
    assert main([str(checkpoints["teacher"])]) == 1
    line = error_line(capsys)
    assert f"{checkpoints['teacher']} is a teacher's checkpoint" in line
    assert "written by distill-student" in line


def test_onnx_without_its_packages_names_the_package_and_the_extra(
    checkpoints, tmp_path, capsys, monkeypatch
):
    monkeypatch.setitem(sys.modules, "onnxscript", None)  # find_spec then finds nothing
    assert main([str(checkpoints["affine"]), "--format", "onnx", "--out", str(tmp_path / "s")]) == 1
    line = error_line(capsys)
    assert "needs the `onnxscript` package" in line and 'pip install "distill[onnx]"' in line


def test_onnx_export_runs_in_onnx_runtime(checkpoints, tmp_path):
    pytest.importorskip("onnxscript")
    onnxruntime = pytest.importorskip("onnxruntime")
    out = tmp_path / "student.onnx"
    # the spline student: ONNX has no searchsorted, distill.export translates it
    assert main([str(checkpoints["spline"]), "--format", "onnx", "--out", str(out)]) == 0
    assert json.loads(metadata_path(out).read_text())["format"] == "onnx"
    session = onnxruntime.InferenceSession(str(out))
    module = StudentModule.load_from_checkpoint(checkpoints["spline"], map_location="cpu")
    for count in BATCH_SIZES:
        torch.manual_seed(count)
        noise = torch.randn(count, FEATURES)
        [got] = session.run(None, {"noise": noise.numpy()})
        # another runtime's float32 kernels (exp, softmax, ...): relative 1e-5
        expected = module_samples(module, count, seed=count)
        torch.testing.assert_close(torch.from_numpy(got), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("conditioning", CONDITIONINGS)
def test_exported_sequence_sampler_gives_the_modules_samples_in_float64(
    conditioning, exported_sequences, sequence_checkpoints
):
    program = torch.export.load(exported_sequences[conditioning]).module()
    checkpoint = sequence_checkpoints[conditioning]
    module = StudentModule.load_from_checkpoint(checkpoint, map_location="cpu").double()
    for count, length in itertools.product(SEQUENCE_BATCH_SIZES, LENGTHS):
        context = sequence_context(module, count, length)
        expected = module_samples(module, count, seed=count, context=context, length=length)
        got = program_samples(program, (count, 1, length), count, torch.float64, context)
        assert got.shape == (count, 1, length) and got.dtype == torch.float64
        torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)
    assert expected.std() > 0.1  # data space: the notes' scale (std 0.24), not the noise's


SEQUENCE_CONTEXTS = {
    "none": None,
    "pitch": {"kind": "global", "shape": ["batch", 1]},
    "pitch_track": {"kind": "local", "shape": ["batch", 1, "frames"], "hop_length": 32},
}


@pytest.mark.parametrize("conditioning", CONDITIONINGS)
def test_sequence_json_describes_the_sampler(conditioning, exported_sequences):
    path = exported_sequences[conditioning]
    description = json.loads(metadata_path(path).read_text())
    context = SEQUENCE_CONTEXTS[conditioning]
    assert description["event_shape"] == {"channels": 1, "length": "dynamic"}
    assert description["training_length"] == 128 and description["context"] == context
    noise, *context_input = description["inputs"]
    assert noise == {
        "name": "noise",
        "shape": ["batch", 1, "length"],
        "dtype": "float64",
        "distribution": "standard normal N(0, I): torch.randn(N, C, T)",
    }
    assert context_input == (
        [{"name": "context", "shape": context["shape"], "dtype": "float64"}] if context else []
    )
    [output] = description["outputs"]
    assert output["shape"] == ["batch", 1, "length"] and output["dtype"] == "float64"
    free = {"min": 1, "max": None}
    length = {"min": 32, "max": None, "equals": "32*frames"}
    expected_dims = {"batch": free, "length": free}
    if conditioning == "pitch_track":
        expected_dims = {"batch": free, "length": length, "frames": free}
    assert description["dynamic_dims"] == expected_dims
    assert description["dtype"] == "float64" and description["teacher_data"] == "notes"
    assert description["student"]["_target_"] == "distill.flows.build_wavenet_iaf"
    assert description["student"]["channels"] == 1 and description["student"]["length"] == 128
    assert description["usage"] == (
        f"torch.export.load(path).module()({'noise, context' if context else 'noise'})"
    )


def test_sequence_sampler_loads_and_samples_with_torch_alone(
    exported_sequences, sequence_checkpoints, tmp_path
):
    sizes = {"batch": 3, "frames": 2, "length": 64}
    samples = standalone_samples(exported_sequences["pitch_track"], sizes, tmp_path)
    torch.manual_seed(0)  # the script's draws: the noise, then the context
    torch.randn(3, 1, 64, dtype=torch.float64)
    context = torch.randn(3, 1, 2, dtype=torch.float64)
    checkpoint = sequence_checkpoints["pitch_track"]
    module = StudentModule.load_from_checkpoint(checkpoint, map_location="cpu").double()
    expected = module_samples(module, 3, seed=0, context=context, length=64)
    torch.testing.assert_close(samples, expected, rtol=0, atol=1e-6)


def test_local_context_sampler_refuses_a_length_that_is_not_its_frames(exported_sequences):
    program = torch.export.load(exported_sequences["pitch_track"]).module()
    for length in (64, 100, 128):  # 3 frames are 96 steps
        noise = torch.randn(1, 1, length, dtype=torch.float64)
        with pytest.raises(AssertionError, match="Guard failed") as refused:
            program(noise, torch.randn(1, 1, 3, dtype=torch.float64))
        assert "noise.size()[2]" in str(refused.value)
        assert "32 * context.size()[2]" in str(refused.value)


def test_sequence_onnx_export_runs_in_onnx_runtime(sequence_checkpoints, tmp_path):
    pytest.importorskip("onnxscript")
    onnxruntime = pytest.importorskip("onnxruntime")
    out = tmp_path / "student.onnx"
    checkpoint = sequence_checkpoints["pitch_track"]
    assert main([str(checkpoint), "--format", "onnx", "--out", str(out)]) == 0
    session = onnxruntime.InferenceSession(str(out))
    module = StudentModule.load_from_checkpoint(checkpoint, map_location="cpu")
    for count, length in itertools.product(SEQUENCE_BATCH_SIZES, LENGTHS):
        context = sequence_context(module, count, length).float()
        torch.manual_seed(count)
        noise = torch.randn(count, 1, length)
        [got] = session.run(None, {"noise": noise.numpy(), "context": context.numpy()})
        expected = module_samples(module, count, seed=count, context=context, length=length)
        torch.testing.assert_close(torch.from_numpy(got), expected, rtol=1e-5, atol=1e-5)
