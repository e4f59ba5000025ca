"""distill-export: a student shipped as a standalone sampler gives the module's own samples for
the same noise, at any batch size; loads and runs with torch alone; says what it is in its
JSON; and refuses a checkpoint that is not a student's with one line."""

import hashlib
import json
import subprocess
import sys

import lightning as L
import pytest
import torch

import distill
from distill.cli.export import main
from distill.export import export_program, metadata_path, trace_program
from distill.flows import build_iaf, in_data_space
from distill.models import StudentModule, TeacherModule

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


def save(module: L.LightningModule, path) -> None:
    trainer = L.Trainer(
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.strategy.connect(module)
    trainer.save_checkpoint(path)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """Paths of a student checkpoint of each kind in `STUDENTS` (weights and preprocessing
    statistics perturbed away from the identity) and of a teacher checkpoint."""
    folder = tmp_path_factory.mktemp("checkpoints")
    generator = torch.Generator().manual_seed(0)
    paths = {}
    for name, (student, preprocessing) in STUDENTS.items():
        module = StudentModule(
            student=student, teacher={**TEACHER, "preprocessing": preprocessing}, loss=LOSS
        )
        with torch.no_grad():
            for parameter in module.student.parameters():
                parameter.add_(0.3 * torch.randn(parameter.shape, generator=generator))
            standardize = module.preprocessing.bijectors[0]
            standardize.mean.copy_(torch.tensor([0.5, -1.0, 2.0]))
            standardize.std.copy_(torch.tensor([2.0, 0.5, 1.5]))
        paths[name] = folder / f"{name}.ckpt"
        save(module, paths[name])
    paths["teacher"] = folder / "teacher.ckpt"
    save(TeacherModule(**TEACHER), paths["teacher"])
    return paths


def module_samples(module: StudentModule, count: int, seed: int) -> torch.Tensor:
    torch.manual_seed(seed)
    return in_data_space(module.inference_student, module.preprocessing).sample((count,))


def program_samples(program, count: int, seed: int, dtype: torch.dtype) -> torch.Tensor:
    torch.manual_seed(seed)  # the same draws as the module's StandardNormal
    return program(torch.randn(count, FEATURES, dtype=dtype))


@pytest.mark.parametrize("kind", STUDENTS)
def test_exported_sampler_gives_the_modules_samples_in_float64(kind, checkpoints, tmp_path):
    out = tmp_path / "student.pt2"
    assert main([str(checkpoints[kind]), "--dtype", "float64", "--out", str(out)]) == 0
    program = torch.export.load(out).module()
    module = StudentModule.load_from_checkpoint(checkpoints[kind], map_location="cpu").double()
    for count in BATCH_SIZES:
        expected = module_samples(module, count, seed=count)
        got = program_samples(program, count, seed=count, dtype=torch.float64)
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
        got = program_samples(program, count, seed=count, dtype=torch.float32)
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


STANDALONE = """
import importlib.abc, json, sys

class NoDistill(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "distill":
            raise ImportError("distill is not importable here")

sys.meta_path.insert(0, NoDistill())
import torch

program = torch.export.load(sys.argv[1]).module()
torch.manual_seed(0)
samples = program(torch.randn(7, {features}))
assert "distill" not in sys.modules and not any(m.startswith("distill.") for m in sys.modules)
print(json.dumps(samples.tolist()))
"""


def test_sampler_loads_and_samples_with_torch_alone(exported, checkpoints, tmp_path):
    result = subprocess.run(
        [sys.executable, "-I", "-c", STANDALONE.format(features=FEATURES), str(exported)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    samples = torch.tensor(json.loads(result.stdout))
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


def test_a_sequence_student_is_refused_with_what_to_do_instead(tmp_path):
    from distill.export import export_sampler
    from distill.flows import build_wavenet_iaf

    student = build_wavenet_iaf(channels=1, length=16, layers_per_flow=[1])
    with pytest.raises(ValueError, match="WaveNet student over sequences is not exported yet"):
        export_sampler(student, None, tmp_path / "student.pt2")
