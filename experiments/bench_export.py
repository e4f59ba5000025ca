"""Speed and agreement of the exported student (`distill-export`) against the module's sampling.

    OMP_WAIT_POLICY=PASSIVE python experiments/bench_export.py            # full run, writes
                                                    # results/bench_export.json and .md
    OMP_WAIT_POLICY=PASSIVE python experiments/bench_export.py --quick    # smoke test, prints only

Students, their weights perturbed away from the identity, float32, one thread:

- over vectors, the student of the default config (5 IAF layers, MADE 128x128, affine, order
  reversed between layers) at D = 2 (standardization) and D = 64 (standardization then logit
  onto [0, 17], as for digits), drawing N = 1 and N = 1000 samples;
- over sequences, the WaveNet IAF student of ``experiment=notes`` (4 flows of 6 blocks of 16
  channels, its pitch through a 64-wide MLP into the gates: a global context (N, 1); the
  standardization of the notes) drawing one second of 16 kHz audio, (N, 1, 16000), at N = 1
  and N = 16, one random pitch per sequence.

In the data's space, three candidates, each drawing its own noise (the context is drawn once):

- ``module``: ``in_data_space(student, preprocessing).sample(...)`` (what the LightningModule
  does; ``Flow.sample`` runs without a graph);
- ``exported``: ``program(torch.randn(N, D))`` (or ``program(torch.randn(N, 1, 16000),
  context)``), ``program = torch.export.load(path).module()`` of the ``.pt2`` that
  `distill.export.export_sampler` wrote (what a user of the file runs);
- ``traced``: the same for the program as ``torch.export`` traced it, before
  `distill.export.freeze` (what distill-export shipped before: the weights fetched through
  their module paths and the MADE masks multiplied into them on every call).

Timed as in ``bench_flows.py`` (its `time_interleaved`: round-robin over 21 rounds with a
rotating order, each round the mean over enough calls to last 0.2 s, after warm-up); a time is
the median over rounds with the quartiles, a ratio the median of same-round ratios with their
quartiles. Alongside: ``nn.Module.__getattr__`` calls and graph operations per call of each
program (counted, not timed). Agreement is checked in float64 (a float64 copy of the student
and of the program) on the same noise.
"""

from __future__ import annotations

import os

# Must precede the import of torch (bench_flows.py says why).
_OMP_WAIT_POLICY_FROM_USER = os.environ.get("OMP_WAIT_POLICY")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import copy  # noqa: E402
import cProfile  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import pstats  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402
from bench_flows import (  # noqa: E402  (experiments/ is the script's folder: on sys.path)
    cpu_model,
    git_revision,
    keep_freed_memory,
    time_interleaved,
)
from hydra import compose, initialize_config_module  # noqa: E402
from torch import Tensor  # noqa: E402

from distill.export import export_sampler, trace_program  # noqa: E402
from distill.flows import Bijector, Flow, build_iaf, build_preprocessing, in_data_space  # noqa: E402
from distill.spec import build_from_spec  # noqa: E402

NUM_LAYERS = 5
HIDDEN = (128, 128)
FEATURES = (2, 64)
SAMPLES = (1, 1000)
SAMPLE_RATE = 16_000  # one second of the notes' audio
SEQUENCES = (1, 16)
CANDIDATES = ("module", "exported", "traced")
RATIOS = (("exported", "module"), ("traced", "module"), ("exported", "traced"))
RESULTS = Path(__file__).parent / "results" / "bench_export.json"


@dataclass(frozen=True)
class Student:
    """A student to time: its flow (model space) and preprocessing, the batch sizes N to time,
    the shape of one sample (``(D,)``, or ``(C, T)`` over sequences) and the features of a
    global context per sample (None: unconditional)."""

    label: str
    flow: Flow
    preprocessing: Bijector
    counts: tuple[int, ...]
    event: tuple[int, ...]
    context_features: int | None = None

    @property
    def length(self) -> int | None:
        """T of a sequence student's samples (None over vectors)."""
        return self.event[-1] if len(self.event) == 2 else None

    def context(self, count: int, dtype: torch.dtype = torch.float32) -> Tensor | None:
        """A random context ``(N, G)`` for ``count`` samples, or None."""
        if self.context_features is None:
            return None
        return torch.randn(count, self.context_features, dtype=dtype)

    def module_samples(self, flow: Flow, count: int, context: Tensor | None) -> Tensor:
        """``count`` samples ``(N, *event)`` of ``flow`` (data space), noise drawn inside."""
        return flow.sample((count,) if context is None else (), context, self.length)

    def program_samples(
        self, program, count: int, context: Tensor | None, dtype: torch.dtype = torch.float32
    ) -> Tensor:
        """``count`` samples ``(N, *event)`` of an exported ``program``, noise drawn inside."""
        noise = torch.randn(count, *self.event, dtype=dtype)
        return program(noise) if context is None else program(noise, context)


def vector_student(features: int) -> Student:
    """The default student's shape with weights perturbed away from the identity, and its
    preprocessing with fitted-looking statistics (logit onto [0, 17] at D = 64)."""
    torch.manual_seed(features)
    flow = build_iaf(features, NUM_LAYERS, HIDDEN, permutation="reverse")
    preprocessing = build_preprocessing(features, logit_upper=17.0 if features > 2 else None)
    perturb(flow)
    with torch.no_grad():
        standardize = preprocessing.bijectors[0]
        standardize.mean.copy_(torch.randn(features))
        standardize.std.copy_(torch.rand(features) + 0.5)
    return Student(f"D = {features}", flow.eval(), preprocessing.eval(), SAMPLES, (features,))


def sequence_student() -> Student:
    """The WaveNet IAF student of ``experiment=notes`` (pitch: a global context of 1 feature),
    composed from the configs, weights perturbed; the notes' standardization (std 0.24)."""
    with initialize_config_module("distill.conf", version_base="1.3"):
        cfg = compose("student", overrides=["experiment=notes"])
    torch.manual_seed(0)
    shape = {"channels": 1, "length": cfg.data.length, "global_features": 1}  # its flow_shape
    flow = build_from_spec({**cfg.student.flow, **shape}, "student.flow")
    preprocessing = build_preprocessing(channels=1)
    perturb(flow)
    with torch.no_grad():
        preprocessing.bijectors[0].std.fill_(0.24)
    label = f"notes, 1 s (1, {SAMPLE_RATE})"
    return Student(label, flow.eval(), preprocessing.eval(), SEQUENCES, (1, SAMPLE_RATE), 1)


@torch.no_grad()
def perturb(flow: Flow) -> None:
    """Move the weights away from their near-identity start (the time does not depend on
    them; the float64 agreement does)."""
    for parameter in flow.parameters():
        parameter.add_(0.05 * torch.randn_like(parameter))


def max_difference(student: Student, folder: Path) -> float:
    """max |exported - module| over the largest batch of float64 samples, same noise."""
    path = folder / "float64.pt2"
    export_sampler(student.flow, student.preprocessing, path, dtype="float64")
    program = torch.export.load(path).module()
    flow64 = copy.deepcopy(in_data_space(student.flow, student.preprocessing)).double()
    count = max(student.counts)
    context = student.context(count, torch.float64)
    torch.manual_seed(0)
    expected = student.module_samples(flow64, count, context)
    torch.manual_seed(0)
    got = student.program_samples(program, count, context, torch.float64)
    return (got - expected).abs().max().item()


def attribute_lookups(call: Callable[[], object], calls: int = 50) -> float:
    """``nn.Module.__getattr__`` calls per call of ``call`` (the attribute walks of a module
    tree: a parameter read through its path costs one per level)."""
    call()
    profiler = cProfile.Profile()
    profiler.runcall(lambda: [call() for _ in range(calls)])
    lookups = sum(
        count
        for (filename, _, name), (count, *_rest) in pstats.Stats(profiler).stats.items()
        if name == "__getattr__" and filename.endswith(os.path.join("nn", "modules", "module.py"))
    )
    return lookups / calls


def operations(program: torch.nn.Module) -> int:
    """Operations (``call_function`` nodes) that one call of ``program`` runs."""
    return sum(node.op == "call_function" for node in program.graph.nodes)


def spread(values: list[float]) -> dict[str, float]:
    """Median and quartiles of ``values`` (one per round)."""
    q1, median, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return {"median": median, "q1": q1, "q3": q3, "min": min(values), "max": max(values)}


def paired_ratios(timings: dict, numerator: str, denominator: str) -> dict[str, float]:
    """The same-round ratios of two candidates' times: median and quartiles over rounds (load
    that comes and goes between rounds cancels in each ratio)."""
    pairs = zip(timings[numerator]["repeats_ms"], timings[denominator]["repeats_ms"], strict=True)
    return spread([a / b for a, b in pairs])


def candidates(student: Student, data_flow: Flow, programs: dict, count: int) -> dict:
    """The calls to time for ``count`` samples: the module and each program, on one context."""
    context = student.context(count)
    return {
        "module": lambda: student.module_samples(data_flow, count, context),
        **{
            name: lambda program=program: student.program_samples(program, count, context)
            for name, program in programs.items()
        },
    }


def bench_student(student: Student, settings: dict, folder: Path) -> dict:
    flow, preprocessing = student.flow, student.preprocessing
    path = folder / "student.pt2"
    start = time.perf_counter()
    export_sampler(flow, preprocessing, path)
    export_s = time.perf_counter() - start
    traced_path = folder / "student_traced.pt2"
    torch.export.save(trace_program(flow, preprocessing), traced_path)
    programs = {
        "exported": torch.export.load(path).module(),
        "traced": torch.export.load(traced_path).module(),
    }
    data_flow = in_data_space(flow, preprocessing)
    result = {
        "event_shape": list(student.event),
        "context_features": student.context_features,
        "export_s": round(export_s, 2),
        "program_bytes": path.stat().st_size,
        "traced_program_bytes": traced_path.stat().st_size,
        "max_abs_difference_float64": max_difference(student, folder),
        "module_getattr_per_call": {
            name: attribute_lookups(call)
            for name, call in candidates(student, data_flow, programs, 1).items()
        },
        "operations_per_call": {name: operations(p) for name, p in programs.items()},
        "cases": {},
    }
    for count in student.counts:
        timings = time_interleaved(candidates(student, data_flow, programs, count), **settings)
        for timing in timings.values():
            timing["spread_ms"] = spread(timing["repeats_ms"])
        ratios = {f"{a}/{b}": paired_ratios(timings, a, b) for a, b in RATIOS}
        result["cases"][str(count)] = {"timings": timings, "paired_ratios": ratios}
        line = ", ".join(f"{name} {timings[name]['median_ms']:.3f} ms" for name in CANDIDATES)
        print(
            f"  {student.label} N={count:<5} {line}; exported/module "
            f"{ratios['exported/module']['median']:.2f}x",
            file=sys.stderr,
            flush=True,
        )
    return result


def _time(timing: dict) -> str:
    q = timing["spread_ms"]
    return f"{q['median']:.3f} [{q['q1']:.3f}, {q['q3']:.3f}]"


def _ratio(ratio: dict) -> str:
    return f"{ratio['median']:.2f}x [{ratio['q1']:.2f}, {ratio['q3']:.2f}]"


def markdown(report: dict) -> str:
    """The results as the Markdown file beside the JSON."""
    machine, results = report["machine"], report["results"]
    lines = [
        "# Exported student sampler vs the module (generated by experiments/bench_export.py)",
        "",
        f"`{report['command']}` at {report['git_revision']}; torch {machine['torch']}, "
        f"{machine['cpu_model']} ({machine['cpus_usable']} usable CPUs, load average "
        f"{machine['load_average_before'][0]:.1f} before, {machine['load_average_after'][0]:.1f} "
        f"after), {machine['torch_num_threads']} torch thread, OMP_WAIT_POLICY="
        f"{machine['OMP_WAIT_POLICY']}; {report['settings']['repeats']} interleaved rounds.",
        "",
        "ms: median over rounds of the per-call wall time, noise drawn inside the call, "
        "[quartiles]. Ratios: median over rounds of the same-round ratio [quartiles]; < 1: the "
        "first is faster. `exported`: the `.pt2` that distill-export writes, frozen "
        "(`distill.export.freeze`); `traced`: the program as traced, before freezing (what "
        "distill-export wrote before).",
        "",
        "| student | N | module ms | exported ms | traced ms | exported/module | traced/module |",
        "|---|---|---|---|---|---|---|",
    ]
    for label, per_student in results.items():
        for count, case in per_student["cases"].items():
            timings, ratios = case["timings"], case["paired_ratios"]
            lines.append(
                f"| {label} | {count} | {_time(timings['module'])} | "
                f"{_time(timings['exported'])} | {_time(timings['traced'])} | "
                f"{_ratio(ratios['exported/module'])} | {_ratio(ratios['traced/module'])} |"
            )
    lines += [
        "",
        "Per call of one sample (counted with cProfile and from the graphs, not timed):",
        "",
        "| student | `nn.Module.__getattr__` calls: module / exported / traced | graph operations: "
        "exported / traced | max \\|diff\\| float64 | export s |",
        "|---|---|---|---|---|",
    ]
    for label, per_student in results.items():
        lookups, ops = per_student["module_getattr_per_call"], per_student["operations_per_call"]
        lines.append(
            f"| {label} | {lookups['module']:.0f} / {lookups['exported']:.0f} / "
            f"{lookups['traced']:.0f} | {ops['exported']} / {ops['traced']} | "
            f"{per_student['max_abs_difference_float64']:.1e} | {per_student['export_s']} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--quick", action="store_true", help="smoke test: one repeat, one warm-up; writes nothing"
    )
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    args = parser.parse_args(argv)

    allocator = keep_freed_memory()
    torch.set_num_threads(args.threads)
    torch.set_num_interop_threads(1)
    settings = (
        {"repeats": 3, "warmup": 1, "min_time": 0.0}
        if args.quick
        else {"repeats": 21, "warmup": 2, "min_time": 0.2}
    )
    machine = {
        "torch": torch.__version__,
        "python": platform.python_version(),
        "cpu_model": cpu_model(),
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "torch_num_threads": torch.get_num_threads(),
        "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY"),
        "OMP_WAIT_POLICY_set_by": "user" if _OMP_WAIT_POLICY_FROM_USER else "this script",
        "allocator": allocator,
        "load_average_before": os.getloadavg(),
    }
    revision = git_revision()
    print(
        f"distill {revision}, torch {machine['torch']}, {machine['cpu_model']}, "
        f"{machine['torch_num_threads']} thread(s), OMP_WAIT_POLICY={machine['OMP_WAIT_POLICY']}, "
        f"load average {machine['load_average_before'][0]:.1f}; "
        f"{'quick' if args.quick else 'full'} run: {settings}",
        flush=True,
    )
    start = time.perf_counter()
    students = [*(vector_student(features) for features in FEATURES), sequence_student()]
    results = {}
    for student in students:
        with tempfile.TemporaryDirectory() as folder:
            results[student.label] = bench_student(student, settings, Path(folder))
    machine["load_average_after"] = os.getloadavg()
    elapsed = time.perf_counter() - start
    report = {
        "command": f"OMP_WAIT_POLICY={os.environ['OMP_WAIT_POLICY']} python " + " ".join(sys.argv),
        "git_revision": revision,
        "machine": machine,
        "architecture": {
            "num_layers": NUM_LAYERS,
            "hidden_features": list(HIDDEN),
            "transform": "affine",
            "ordering": "reversed between layers",
            "preprocessing": "standardize (D = 2); standardize + logit onto [0, 17] (D = 64)",
            "dtype": "float32",
            "sequences": "the WaveNet IAF student of experiment=notes: flows of [6, 6, 6, 6] "
            "blocks, 16 channels, context_hidden 64, a global pitch context (N, 1); one second "
            f"of audio at {SAMPLE_RATE} Hz; StandardizeSequence (std 0.24)",
        },
        "settings": settings,
        "elapsed_s": round(elapsed, 1),
        "results": results,
    }
    text = markdown(report)
    print()
    print(text)
    print(f"{elapsed:.0f} s in all.")
    if not args.quick:
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(json.dumps(report, indent=1) + "\n")
        RESULTS.with_suffix(".md").write_text(text)
        print(f"wrote {RESULTS} and {RESULTS.with_suffix('.md')}")


if __name__ == "__main__":
    main()
