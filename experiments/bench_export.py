"""Speed and agreement of the exported student (`distill-export`) against the module's sampling.

    OMP_WAIT_POLICY=PASSIVE python experiments/bench_export.py            # full run, writes JSON
    OMP_WAIT_POLICY=PASSIVE python experiments/bench_export.py --quick    # smoke test, no JSON

The student of the default config (5 IAF layers, MADE 128x128, affine, order reversed between
layers), its weights perturbed away from the identity, at D = 2 (standardization) and D = 64
(standardization then logit onto [0, 17], as for digits), float32, one thread. For N = 1 and
N = 1000 samples in the data's space, two candidates, each drawing its own noise:

- ``module``: ``in_data_space(student, preprocessing).sample((N,))`` (what the LightningModule
  does; ``Flow.sample`` runs without a graph);
- ``exported``: ``program(torch.randn(N, D))``, ``program = torch.export.load(path).module()``
  of the ``.pt2`` that `distill.export.export_sampler` wrote (what a user of the file runs).

Timed as in ``bench_flows.py`` (its `time_interleaved`: round-robin over 11 rounds, median of
the per-round means after warm-up; the ratio is the median of same-round ratios). Agreement is
checked in float64 (a float64 copy of the student and of the program) on the same noise.
"""

from __future__ import annotations

import os

# Must precede the import of torch (bench_flows.py says why).
_OMP_WAIT_POLICY_FROM_USER = os.environ.get("OMP_WAIT_POLICY")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import copy  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402
from bench_flows import (  # noqa: E402  (experiments/ is the script's folder: on sys.path)
    cpu_model,
    git_revision,
    keep_freed_memory,
    paired_ratio,
    time_interleaved,
)

from distill.export import export_sampler  # noqa: E402
from distill.flows import Bijector, Flow, build_iaf, build_preprocessing, in_data_space  # noqa: E402

NUM_LAYERS = 5
HIDDEN = (128, 128)
FEATURES = (2, 64)
SAMPLES = (1, 1000)
RESULTS = Path(__file__).parent / "results" / "bench_export.json"


def student(features: int) -> tuple[Flow, Bijector]:
    """The default student's shape with weights perturbed away from the identity, and its
    preprocessing with fitted-looking statistics (logit onto [0, 17] at D = 64)."""
    torch.manual_seed(features)
    flow = build_iaf(features, NUM_LAYERS, HIDDEN, permutation="reverse")
    preprocessing = build_preprocessing(features, logit_upper=17.0 if features > 2 else None)
    with torch.no_grad():
        for parameter in flow.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
        standardize = preprocessing.bijectors[0]
        standardize.mean.copy_(torch.randn(features))
        standardize.std.copy_(torch.rand(features) + 0.5)
    return flow.eval(), preprocessing.eval()


def max_difference(flow: Flow, preprocessing: Bijector, folder: Path, count: int) -> float:
    """max |exported - module| over ``count`` float64 samples drawn from the same noise."""
    path = folder / "float64.pt2"
    export_sampler(flow, preprocessing, path, dtype="float64")
    program = torch.export.load(path).module()
    flow64 = copy.deepcopy(in_data_space(flow, preprocessing)).double()
    torch.manual_seed(0)
    expected = flow64.sample((count,))
    torch.manual_seed(0)
    got = program(torch.randn(count, flow.features, dtype=torch.float64))
    return (got - expected).abs().max().item()


def bench_dimension(features: int, settings: dict, folder: Path) -> dict:
    flow, preprocessing = student(features)
    path = folder / f"student_{features}.pt2"
    start = time.perf_counter()
    export_sampler(flow, preprocessing, path)
    export_s = time.perf_counter() - start
    program = torch.export.load(path).module()
    data_flow = in_data_space(flow, preprocessing)
    result = {
        "export_s": round(export_s, 2),
        "program_bytes": path.stat().st_size,
        "max_abs_difference_float64": max_difference(flow, preprocessing, folder, max(SAMPLES)),
        "cases": {},
    }
    for count in SAMPLES:
        timings = time_interleaved(
            {
                "module": lambda count=count: data_flow.sample((count,)),
                "exported": lambda count=count: program(torch.randn(count, features)),
            },
            **settings,
        )
        ratio = paired_ratio(timings, "exported", "module")
        result["cases"][str(count)] = {"timings": timings, "exported/module": ratio}
        print(
            f"  D={features:<3} N={count:<5} module {timings['module']['median_ms']:.3f} ms, "
            f"exported {timings['exported']['median_ms']:.3f} ms",
            file=sys.stderr,
            flush=True,
        )
    return result


def table(results: dict) -> str:
    header = (
        f"{'D':>3} {'N':>5}  {'module ms':>10} {'exported ms':>12} {'exported/module':>16} "
        f"{'max |diff| f64':>15}"
    )
    lines = [header, "-" * len(header)]
    for features, per_dimension in results.items():
        for count, case in per_dimension["cases"].items():
            timings = case["timings"]
            lines.append(
                f"{features:>3} {count:>5}  {timings['module']['median_ms']:>10.3f} "
                f"{timings['exported']['median_ms']:>12.3f} {case['exported/module']:>15.2f}x "
                f"{per_dimension['max_abs_difference_float64']:>15.1e}"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--quick", action="store_true", help="smoke test: one repeat, one warm-up; no JSON"
    )
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    args = parser.parse_args(argv)

    allocator = keep_freed_memory()
    torch.set_num_threads(args.threads)
    torch.set_num_interop_threads(1)
    settings = (
        {"repeats": 1, "warmup": 1, "min_time": 0.0}
        if args.quick
        else {"repeats": 11, "warmup": 2, "min_time": 0.2}
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
    with tempfile.TemporaryDirectory() as folder:
        results = {d: bench_dimension(d, settings, Path(folder)) for d in FEATURES}
    machine["load_average_after"] = os.getloadavg()
    elapsed = time.perf_counter() - start

    print()
    print(table(results))
    print(
        "\nms: median wall time per call, noise drawn inside. exported/module: median over "
        "rounds of the same-round ratio (< 1: the exported sampler is faster). max |diff| f64: "
        f"float64 program vs float64 module on the same {max(SAMPLES)} noise draws. "
        f"{elapsed:.0f} s in all."
    )
    output = None if args.quick else RESULTS
    if output is not None:
        report = {
            "command": f"OMP_WAIT_POLICY={os.environ['OMP_WAIT_POLICY']} python "
            + " ".join(sys.argv),
            "git_revision": revision,
            "machine": machine,
            "architecture": {
                "num_layers": NUM_LAYERS,
                "hidden_features": list(HIDDEN),
                "transform": "affine",
                "ordering": "reversed between layers",
                "preprocessing": "standardize (D = 2); standardize + logit onto [0, 17] (D = 64)",
                "dtype": "float32",
            },
            "settings": settings,
            "elapsed_s": round(elapsed, 1),
            "results": {str(d): value for d, value in results.items()},
        }
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(json.dumps(report, indent=1) + "\n")
        print(f"wrote {output}")


if __name__ == "__main__":
    main()
