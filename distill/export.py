"""A trained flow shipped as a standalone sampler: a `torch.export` program (``.pt2``) or an ONNX
model that maps standard normal noise to samples of the noise's shape in the data's own space:
for a flow over vectors, noise ``(N, D)`` (and a context ``(N, C)`` for a conditional flow),
the batch size N free; for a WaveNet flow over sequences (`SequenceFlow`), noise ``(N, C, T)``
(and a global context ``(N, G)`` or a local one ``(N, L, T / hop)``), N and the length T free
(with a local context, T is ``hop`` times the context's frames).

The program is the forward (noise -> data) of ``in_data_space(flow, preprocessing)``: the flow's
forward, then the fixed preprocessing's forward. It holds its weights as frozen tensors, and
loads and runs with torch alone (``torch.export.load(path).module()``), or with any ONNX runtime.
Beside it, ``<path>.json`` says what goes in and what comes out.

The program is frozen before it is saved (`freeze`): what depends on the weights alone (MADE's
``weight * mask``) is computed once, and every tensor is an attribute of the program itself.
Exported as traced, the default student's program ran at half the module's speed for one sample:
``.module()`` fetched each weight through its module path, ~520 ``nn.Module.__getattr__`` calls
per call, and multiplied 15 masks into their weights, as long as the flow's own arithmetic
(`experiments/bench_export.py`).
"""

from __future__ import annotations

import copy
import importlib.util
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, fx, nn
from torch.export import Dim
from torch.export.graph_signature import InputKind, OutputKind

import distill
from distill.flows import Bijector, Flow, SequenceFlow, WaveNet, in_data_space

FORMATS = ("pt2", "onnx")
DTYPES = {"float32": torch.float32, "float64": torch.float64}
# the names of the dynamic dimensions, in the program and in its JSON: the batch size N, a
# sequence's length T and, for a local context, its frames (then T = hop * frames)
BATCH, LENGTH, FRAMES = "batch", "length", "frames"
# --format onnx needs these; the extra that installs them (pip install "distill[onnx]")
ONNX_PACKAGES = ("onnx", "onnxscript")
ONNX_EXTRA = "onnx"


class Sampler(nn.Module):
    """``noise`` [+ ``context``] -> ``samples`` of the noise's shape (``(N, D)``, or ``(N, C,
    T)`` over sequences): the forward (noise -> data) of ``bijector``, its log-det dropped."""

    def __init__(self, bijector: Bijector):
        super().__init__()
        self.bijector = bijector

    def forward(self, noise: Tensor, context: Tensor | None = None) -> Tensor:
        return self.bijector(noise, context)[0]


def sampler(
    flow: Flow, preprocessing: Bijector | None, dtype: torch.dtype = torch.float32
) -> Sampler:
    """A frozen copy (eval mode, no gradients, in ``dtype``) of the data-space forward of
    ``flow``: noise ``(N, D)`` or ``(N, C, T)`` -> the flow's forward -> the preprocessing's
    forward -> data of the same shape. The originals are not touched."""
    bijector = copy.deepcopy(in_data_space(flow, preprocessing).bijector)
    return Sampler(bijector).to(dtype).eval().requires_grad_(False)


@dataclass(frozen=True)
class Signature:
    """What a sampler takes: its inputs by name in call order (``noise``, then ``context`` if
    the flow has one), each shape a tuple of fixed sizes (int) and dynamic dims (their names);
    its samples have the noise's shape. ``dims``: each name's `torch.export.Dim` (a local
    context's length is derived, ``hop * frames``); ``sizes``: its size in the example inputs
    export traces with; ``draw``: the noise's draw, for the JSON; ``facts``: what the JSON
    says of the event and its context."""

    inputs: dict[str, tuple[int | str, ...]]
    dims: dict[str, Any]
    sizes: dict[str, int]
    draw: str
    facts: dict[str, Any]

    def example(self, dtype: torch.dtype) -> tuple[Tensor, ...]:
        """Standard normal inputs of the example sizes, in call order."""
        return tuple(
            torch.randn(*(self.sizes.get(size, size) for size in shape), dtype=dtype)
            for shape in self.inputs.values()
        )

    def dynamic_shapes(self) -> tuple[dict[int, Any], ...]:
        """``torch.export``'s ``dynamic_shapes``: each input's dynamic dims by position."""
        return tuple(
            {axis: self.dims[size] for axis, size in enumerate(shape) if isinstance(size, str)}
            for shape in self.inputs.values()
        )


def sampler_signature(flow: Flow, context_features: int | None = None) -> Signature:
    """The inputs of ``flow``'s sampler: ``noise (N, D)`` [+ ``context (N, C)``, C =
    ``context_features``] over vectors; a `SequenceFlow`'s from its WaveNets
    (`sequence_signature`)."""
    if isinstance(flow, SequenceFlow):
        return sequence_signature(flow)
    inputs: dict[str, tuple[int | str, ...]] = {"noise": (BATCH, flow.features)}
    if context_features:
        inputs["context"] = (BATCH, context_features)
    return Signature(
        inputs,
        dims={BATCH: Dim(BATCH, min=1)},
        sizes={BATCH: 2},
        draw="torch.randn(N, D)",
        facts={"features": flow.features, "context_features": context_features},
    )


def sequence_signature(flow: SequenceFlow) -> Signature:
    """The inputs of the sampler of a WaveNet flow over sequences: ``noise (N, C, T)`` of any
    length T, traced at the training length, and its context: none, global ``(N, G)``, or
    local ``(N, L, frames)`` (then T is ``hop * frames``, traced at 3 frames)."""
    global_features, local_features, hop = wavenet_context(flow)
    inputs: dict[str, tuple[int | str, ...]] = {"noise": (BATCH, flow.channels, LENGTH)}
    dims = {BATCH: Dim(BATCH, min=1), LENGTH: Dim(LENGTH, min=1)}
    sizes = {BATCH: 2, LENGTH: flow.length}
    context: dict[str, Any] | None = None
    if global_features:
        inputs["context"] = (BATCH, global_features)
        context = {"kind": "global", "shape": list(inputs["context"])}
    elif local_features:
        inputs["context"] = (BATCH, local_features, FRAMES)
        dims[FRAMES] = Dim(FRAMES, min=1)
        dims[LENGTH] = hop * dims[FRAMES]
        sizes.update({FRAMES: 3, LENGTH: 3 * hop})
        context = {"kind": "local", "shape": list(inputs["context"]), "hop_length": hop}
    facts = {
        "event_shape": {"channels": flow.channels, "length": "dynamic"},
        "training_length": flow.length,
        "context": context,
    }
    return Signature(inputs, dims, sizes, draw="torch.randn(N, C, T)", facts=facts)


def wavenet_context(flow: SequenceFlow) -> tuple[int | None, int | None, int | None]:
    """``(global_features, local_features, hop_length)`` of the context that the WaveNets of
    ``flow`` read, wherever they sit in its bijector; a ValueError unless it has WaveNets and
    they all read the same context."""
    contexts = {
        (module.global_features, module.local_features, module.hop_length)
        for module in flow.bijector.modules()
        if isinstance(module, WaveNet)
    }
    if len(contexts) != 1:
        found = "no WaveNet" if not contexts else f"WaveNets reading different contexts {contexts}"
        raise ValueError(
            f"cannot export this sequence flow ({type(flow.bijector).__name__} bijector): its "
            f"sampler's inputs are read from its WaveNet conditioners, and it has {found}; "
            "export a flow of autoregressive WaveNet layers that share one conditioning "
            "(distill.flows.build_wavenet_flow builds them)"
        )
    return contexts.pop()


def trace_program(
    flow: Flow,
    preprocessing: Bijector | None,
    dtype: torch.dtype = torch.float32,
    context_features: int | None = None,
) -> torch.export.ExportedProgram:
    """``torch.export`` of ``sampler(flow, preprocessing, dtype)`` as traced: the inputs of
    ``sampler_signature(flow, context_features)`` with their dynamic dims free (the batch, named
    ``BATCH``, N >= 1; a sequence's length), the weights read through their module paths."""
    signature = sampler_signature(flow, context_features)
    return torch.export.export(
        sampler(flow, preprocessing, dtype),
        signature.example(dtype),
        dynamic_shapes=signature.dynamic_shapes(),
    )


def export_program(
    flow: Flow,
    preprocessing: Bijector | None,
    dtype: torch.dtype = torch.float32,
    context_features: int | None = None,
) -> torch.export.ExportedProgram:
    """The program `export_sampler` saves: `trace_program`, frozen (`freeze`) and exported
    again, with the same inputs. Dead code is removed: the flow computes log-dets on its way
    that a sampler never returns."""
    signature = sampler_signature(flow, context_features)
    traced = trace_program(flow, preprocessing, dtype, context_features)
    program = torch.export.export(
        freeze(traced), signature.example(dtype), dynamic_shapes=signature.dynamic_shapes()
    )
    program.graph.eliminate_dead_code()
    program.graph_module.recompile()
    return program


def freeze(program: torch.export.ExportedProgram) -> fx.GraphModule:
    """The graph of ``program`` as a module of its user inputs alone, to export again: every
    operation whose inputs are all weights, buffers or constants (no input, no shape of one) is
    computed here, once, and the tensors the rest reads become attributes of the module itself
    (one ``getattr`` each when the saved program runs); tensors nothing reads are dropped.
    ``program`` must not mutate its buffers (a sampler in eval mode does not)."""
    if any(spec.kind != OutputKind.USER_OUTPUT for spec in program.graph_signature.output_specs):
        raise ValueError("cannot freeze a program that updates its buffers: export in eval mode")
    module = copy.deepcopy(program.graph_module)
    graph = module.graph
    graph.eliminate_dead_code()  # first, so that nothing only dead code reads is kept
    stored = {**program.state_dict, **program.constants}
    placeholders = [node for node in graph.nodes if node.op == "placeholder"]
    known: dict[fx.Node, Any] = {}  # node -> its value, for the nodes computed here
    for node, spec in zip(placeholders, program.graph_signature.input_specs, strict=True):
        if spec.kind in (InputKind.PARAMETER, InputKind.BUFFER, InputKind.CONSTANT_TENSOR):
            known[node] = stored[spec.target]
        elif spec.kind != InputKind.USER_INPUT:
            raise ValueError(f"cannot freeze a program with a {spec.kind.name} input")
    for node in graph.nodes:
        if node.op != "call_function" or not node.all_input_nodes:
            continue
        if not all(source in known for source in node.all_input_nodes) or _draws(node):
            continue
        args, kwargs = fx.node.map_arg((node.args, node.kwargs), known.__getitem__)
        with torch.no_grad():
            known[node] = node.target(*args, **kwargs)

    paths = {spec.arg.name: spec.target for spec in program.graph_signature.input_specs}
    names: set[str] = set()
    for node, value in known.items():
        readers = [user for user in node.users if user not in known]
        if not readers:
            continue
        if not isinstance(value, Tensor):
            raise ValueError(f"cannot freeze {node.format_node()}: its value is not a tensor")
        name = _attribute_name(node, paths, names)
        module.register_buffer(name, value.detach().clone())
        with graph.inserting_after(placeholders[-1]):
            attribute = graph.get_attr(name)
        for reader in readers:
            reader.replace_input_with(node, attribute)
    graph.eliminate_dead_code()
    for node in placeholders:
        if node in known:
            graph.erase_node(node)
    (output,) = (node for node in graph.nodes if node.op == "output")
    if isinstance(output.args[0], (tuple, list)) and len(output.args[0]) == 1:
        output.args = (output.args[0][0],)  # samples, not (samples,)
    graph.lint()
    module.recompile()
    return module


def _draws(node: fx.Node) -> bool:
    """Whether ``node`` draws random numbers (then it is never computed ahead)."""
    return torch.Tag.nondeterministic_seeded in getattr(node.target, "tags", ())


def _attribute_name(node: fx.Node, paths: Mapping[str, str], taken: set[str]) -> str:
    """A free attribute name for the value of ``node``: for an input of the program, its module
    path in ``paths`` (``bijector_bijectors_0_..._bias``); ``folded_<operation>`` for a value
    computed from them."""
    if node.op == "placeholder":
        base = paths[node.name].replace(".", "_")
    else:
        base = f"folded_{node.name}"
    name, count = base, 1
    while name in taken:
        name, count = f"{base}_{count}", count + 1
    taken.add(name)
    return name


def check_onnx_installed() -> None:
    """Raise a one-line ImportError naming the first missing package for ``--format onnx``."""
    for package in ONNX_PACKAGES:
        if importlib.util.find_spec(package) is None:
            raise ImportError(
                f"--format onnx needs the `{package}` package, which is not installed: "
                f'pip install "distill[{ONNX_EXTRA}]" (or pip install {" ".join(ONNX_PACKAGES)})'
            )


def _onnx_searchsorted(
    sorted_sequence, values, out_int32=False, right=False, side=None, sorter=None
):
    """ONNX has no searchsorted (the spline's bin lookup): count the knots before each value,
    ``sorted (..., K), values (..., M) -> (..., M)``, as torch does (right: knots <= value)."""
    from onnxscript import INT32, INT64
    from onnxscript import opset18 as op

    if sorter is not None:
        raise NotImplementedError("searchsorted with a sorter has no ONNX translation here")
    knots = op.Unsqueeze(sorted_sequence, [-2])  # (..., 1, K)
    points = op.Unsqueeze(values, [-1])  # (..., M, 1)
    before = op.LessOrEqual(knots, points) if right or side == "right" else op.Less(knots, points)
    count = op.ReduceSum(op.Cast(before, to=INT64.dtype), [-1], keepdims=0)
    return op.Cast(count, to=INT32.dtype) if out_int32 else count


def save_onnx(program: torch.export.ExportedProgram, path: Path, input_names: list[str]) -> None:
    """``program`` as an ONNX model at ``path`` (its dynamic dimensions stay dynamic)."""
    check_onnx_installed()
    torch.onnx.export(
        program,
        f=path,
        dynamo=True,
        input_names=input_names,
        output_names=["samples"],
        custom_translation_table={torch.ops.aten.searchsorted.Tensor: _onnx_searchsorted},
        verbose=False,
    )


def export_sampler(
    flow: Flow,
    preprocessing: Bijector | None,
    path: str | os.PathLike,
    format: str = "pt2",
    dtype: str = "float32",
    context_features: int | None = None,
    provenance: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Write the data-space sampler of ``flow`` (model space) and ``preprocessing`` (model ->
    data) to ``path`` as a ``format`` program ("pt2": `torch.export.save`; "onnx") in
    ``dtype``, and its description to ``<path>.json``: inputs and outputs (shapes with the
    dynamic dimensions named, and their ranges), dtype, the event (``features``; or
    ``event_shape``, ``training_length`` and ``context`` over sequences), the noise
    distribution, versions, and ``provenance`` (the checkpoint, the config). Returns that
    description. ``context_features``: C of a conditional flow over vectors (a sequence
    flow's context is read from its WaveNets)."""
    if format not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, got {format!r}")
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {tuple(DTYPES)}, got {dtype!r}")
    if format == "onnx":
        check_onnx_installed()
        if dtype != "float32":
            raise ValueError(
                "ONNX export is float32 only: ONNX Runtime has no float64 kernel for some of "
                "the flow's operations (Softplus); use --format pt2 for float64"
            )
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    signature = sampler_signature(flow, context_features)
    program = export_program(flow, preprocessing, DTYPES[dtype], context_features)
    names = list(signature.inputs)
    if format == "pt2":
        torch.export.save(program, path)
        usage = f"torch.export.load(path).module()({', '.join(names)})"
    else:
        save_onnx(program, path, names)
        feeds = ", ".join(f'"{name}": {name}' for name in names)
        usage = f"onnxruntime.InferenceSession(path).run(None, {{{feeds}}})[0]"
    described_inputs = [
        {"name": name, "shape": list(shape), "dtype": dtype}
        for name, shape in signature.inputs.items()
    ]
    described_inputs[0]["distribution"] = f"standard normal N(0, I): {signature.draw}"
    description = {
        "format": format,
        "file": path.name,
        "usage": usage,
        "inputs": described_inputs,
        "outputs": [
            {
                "name": "samples",
                "shape": list(signature.inputs["noise"]),
                "dtype": dtype,
                "space": "data (the flow's forward, then the preprocessing's forward)",
            }
        ],
        "dynamic_dims": {name: _dim_range(dim) for name, dim in signature.dims.items()},
        "dtype": dtype,
        **signature.facts,
        "noise": {"distribution": "standard_normal", "mean": 0.0, "std": 1.0},
        "distill_version": distill.__version__,
        "torch_version": torch.__version__,
        **(provenance or {}),
    }
    metadata_path(path).write_text(json.dumps(description, indent=1) + "\n")
    return description


def _dim_range(dim: Any) -> dict[str, Any]:
    """A dynamic dimension for the JSON: its bounds (max None: unbounded) and, for a derived
    one, what it equals (``"32*frames"``)."""
    bounds = {"min": dim.min, "max": dim.max if isinstance(dim.max, int) else None}
    if hasattr(dim, "root"):
        bounds["equals"] = dim.__name__
    return bounds


def metadata_path(path: str | os.PathLike) -> Path:
    """Where the description of the program at ``path`` goes: ``<path>.json``."""
    path = Path(path)
    return path.with_name(path.name + ".json")
