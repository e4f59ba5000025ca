"""Speed of distill's MAF and IAF, and of zuko's and nflows' MAF at the same architecture,
with affine and with rational-quadratic spline transforms.

    OMP_WAIT_POLICY=PASSIVE python experiments/bench_flows.py            # full run, writes JSON
    OMP_WAIT_POLICY=PASSIVE python experiments/bench_flows.py --quick    # smoke test, no JSON

For D in {2, 64}: 5 autoregressive layers, MADE with 2 hidden layers of 128 ReLU units,
order reversed between layers, float32; the elementwise transform affine, or a monotonic
rational-quadratic spline with 8 bins on [-5, 5] and linear tails (zuko's ``NSF``, nflows'
``MaskedPiecewiseRationalQuadraticAutoregressiveTransform``). Cases:

- ``train fwd+bwd``: ``zero_grad`` + ``-log_prob(x).mean()`` + ``backward`` on a batch of 512;
- ``train step``: the same plus ``Adam.step()`` (identical optimizer for every library);
- ``MAF log_prob``: 10,000 points under ``torch.no_grad``;
- ``MAF sample``: 1,000 points under ``torch.no_grad`` (D sequential MADE passes per layer);
- ``IAF sample`` and ``IAF sample_and_log_prob``: 1,000 points, ``torch.no_grad`` (ours only);
- ``spline ...``: the train step, log_prob and sample cases for the spline MAFs, and the spline
  IAF's sample_and_log_prob (ours only). At D = 64 the peers' spline MAF sampling takes
  10-30 s a call and their log_prob 2-4 s, so these cases run fewer rounds (``REDUCED``: 3
  rounds without warm-up calls, and 5 rounds), recorded in the JSON.

zuko and nflows call data -> noise their forward direction, so their sampling is the inverse
pass (``flow().sample`` and ``Flow.sample``, both drawing their own noise, as ours does).
They are optional: a library that is not installed is skipped and reported as such.

The ``floor`` column is the network alone: five plain (unmasked) MLPs of the same shapes
(``D -> 128 -> 128 -> P D`` with P = 2 parameters per dimension for affine, 23 for the
spline), chained, with no flow around them. ``ours/floor`` is the overhead of our flow
machinery (and, for the spline, of the spline itself).

Every case runs all libraries interleaved (round-robin, rotating the order) so that load from
other processes on a shared machine hits them alike; a time is the median over 11 rounds of
the mean over enough calls to last 0.2 s, after 2 warm-up calls, and a ratio is the median
of the same-round ratios. One torch thread by default (``--threads``), and glibc is told to
keep freed memory (``--default-malloc`` to not): experiments/README.md says why.
"""

from __future__ import annotations

import os

# Must precede the import of torch: OpenMP reads it once, at start-up. Busy-waiting threads
# make small matrix products many times slower on a shared machine (PITFALLS.md).
_OMP_WAIT_POLICY_FROM_USER = os.environ.get("OMP_WAIT_POLICY")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import ctypes  # noqa: E402
import ctypes.util  # noqa: E402
import importlib.metadata  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from functools import partial  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402
from torch import nn  # noqa: E402

from distill.flows import RationalQuadraticSpline, build_iaf, build_maf  # noqa: E402

NUM_LAYERS = 5
HIDDEN = (128, 128)
BINS = 8
TAIL_BOUND = 5.0  # zuko's NSF bound
FEATURES = (2, 64)
TRAIN_BATCH = 512
LOG_PROB_POINTS = 10_000
SAMPLE_POINTS = 1_000
RESULTS = Path(__file__).parent / "results" / "bench_flows.json"

CASES = (
    ("train_fwd_bwd", f"train fwd+bwd, batch {TRAIN_BATCH}"),
    ("train_step", f"train step +Adam, batch {TRAIN_BATCH}"),
    ("maf_log_prob", f"MAF log_prob {LOG_PROB_POINTS:,}, no grad"),
    ("maf_sample", f"MAF sample {SAMPLE_POINTS:,}, no grad"),
    ("iaf_sample", f"IAF sample {SAMPLE_POINTS:,}, no grad"),
    ("iaf_sample_and_log_prob", f"IAF sample_and_log_prob {SAMPLE_POINTS:,}"),
    ("spline_train_step", f"spline train step +Adam, batch {TRAIN_BATCH}"),
    ("spline_maf_log_prob", f"spline MAF log_prob {LOG_PROB_POINTS:,}, no grad"),
    ("spline_maf_sample", f"spline MAF sample {SAMPLE_POINTS:,}, no grad"),
    ("spline_iaf_sample_and_log_prob", f"spline IAF sample_and_log_prob {SAMPLE_POINTS:,}"),
)
LIBRARIES = ("ours", "zuko", "nflows", "floor")
# (case, D) -> fewer rounds, where the slowest peer takes seconds per call
REDUCED = {
    ("spline_maf_log_prob", 64): {"repeats": 5, "warmup": 1},
    ("spline_maf_sample", 64): {"repeats": 3, "warmup": 0},
}


# ------------------------------------------------------------------------------------------
# The flows, built the same way in every library


class Library:
    """One implementation: how to build a MAF (affine and spline) and how to call it in each
    case."""

    name: str

    def build_maf(self, features: int) -> nn.Module:
        raise NotImplementedError

    def build_spline_maf(self, features: int) -> nn.Module:
        raise NotImplementedError

    def log_prob(self, flow: nn.Module, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def sample(self, flow: nn.Module, count: int) -> torch.Tensor:
        raise NotImplementedError


class Ours(Library):
    name = "ours"

    def build_maf(self, features):
        return build_maf(features, NUM_LAYERS, HIDDEN, permutation="reverse")

    def build_spline_maf(self, features):
        return build_maf(
            features,
            NUM_LAYERS,
            HIDDEN,
            permutation="reverse",
            transform="spline",
            bins=BINS,
            tail_bound=TAIL_BOUND,
        )

    def log_prob(self, flow, x):
        return flow.log_prob(x)

    def sample(self, flow, count):
        return flow.sample((count,))


class Zuko(Library):
    """zuko's MAF alternates ascending/descending orders (no permutation layers): the same
    as our reverse permutations. Its affine is ``exp(a) x + b`` with a bounded log-scale; its
    NSF is the same MAF with ``MonotonicRQSTransform`` (bound 5, boundary derivatives 1)."""

    name = "zuko"

    def __init__(self):
        import zuko

        self.zuko = zuko

    def build_maf(self, features):
        return self.zuko.flows.MAF(
            features,
            context=0,
            transforms=NUM_LAYERS,
            hidden_features=HIDDEN,
            activation=nn.ReLU,
            randperm=False,
        )

    def build_spline_maf(self, features):
        return self.zuko.flows.NSF(
            features,
            context=0,
            bins=BINS,
            transforms=NUM_LAYERS,
            hidden_features=HIDDEN,
            activation=nn.ReLU,
            randperm=False,
        )

    # flow() builds the lazy distribution: part of every call in zuko's API, so it is timed.
    def log_prob(self, flow, x):
        return flow().log_prob(x)

    def sample(self, flow, count):
        return flow().sample((count,))


class NFlows(Library):
    """nflows' MAF with feed-forward (non-residual) blocks: initial masked layer + one block
    = 2 hidden layers of 128. It puts a reverse permutation before every layer (5, ours 4).
    Its spline MAF is the same stack of ``MaskedPiecewiseRationalQuadraticAutoregressive
    Transform`` layers, linear tails at ``TAIL_BOUND``."""

    name = "nflows"

    def __init__(self):
        import nflows.distributions
        import nflows.flows
        import nflows.transforms
        import torch.nn.functional as F

        self.nflows = nflows
        self.relu = F.relu

    def build_maf(self, features):
        return self.nflows.flows.MaskedAutoregressiveFlow(
            features=features,
            hidden_features=HIDDEN[0],
            num_layers=NUM_LAYERS,
            num_blocks_per_layer=len(HIDDEN) - 1,
            use_residual_blocks=False,
            use_random_masks=False,
            use_random_permutations=False,
            activation=self.relu,
        )

    def build_spline_maf(self, features):
        transforms = self.nflows.transforms
        layers = []
        for _ in range(NUM_LAYERS):
            layers += [
                transforms.ReversePermutation(features),
                transforms.MaskedPiecewiseRationalQuadraticAutoregressiveTransform(
                    features,
                    hidden_features=HIDDEN[0],
                    num_bins=BINS,
                    tails="linear",
                    tail_bound=TAIL_BOUND,
                    num_blocks=len(HIDDEN) - 1,
                    use_residual_blocks=False,
                    random_mask=False,
                    activation=self.relu,
                ),
            ]
        return self.nflows.flows.Flow(
            transforms.CompositeTransform(layers),
            self.nflows.distributions.StandardNormal([features]),
        )

    def log_prob(self, flow, x):
        return flow.log_prob(x)

    def sample(self, flow, count):
        return flow.sample(count)


class Floor(nn.Module):
    """The network alone: ``NUM_LAYERS`` plain MLPs ``D -> 128 -> 128 -> P D`` (ReLU), chained
    with the least glue possible (two of the P outputs per dimension used as a shift and a
    log-scale). What a training step costs with zero flow overhead."""

    def __init__(self, features: int, num_params: int = 2):
        super().__init__()
        widths = (features, *HIDDEN, num_params * features)
        self.nets = nn.ModuleList()
        for _ in range(NUM_LAYERS):
            layers: list[nn.Module] = []
            for width_in, width_out in zip(widths[:-1], widths[1:], strict=True):
                layers += [nn.Linear(width_in, width_out), nn.ReLU()]
            self.nets.append(nn.Sequential(*layers[:-1]))
        self.features = features

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        total = x.new_zeros(x.shape[:-1])
        for net in self.nets:
            shift, log_scale = net(x)[..., : 2 * self.features].chunk(2, -1)
            x = x + shift
            total = total + log_scale.sum(-1)
        return total


# ------------------------------------------------------------------------------------------
# Timing


def time_interleaved(
    candidates: dict[str, Callable[[], object]], repeats: int, warmup: int, min_time: float
) -> dict[str, dict]:
    """Seconds per call of each candidate, round-robin over ``repeats`` rounds.

    Each candidate is called ``warmup`` times first, then calibrated: a repeat runs it enough
    times in a row to last ``min_time`` (timer resolution and per-call jitter average out).
    Wall time (``perf_counter``) is what is reported; process CPU time is kept alongside, as a
    check on how much waiting for a busy CPU inflated a round.
    """
    for fn in candidates.values():
        for _ in range(warmup):
            fn()
    calls = {}
    for name, fn in candidates.items():
        start = time.perf_counter()
        fn()
        calls[name] = max(1, math.ceil(min_time / max(time.perf_counter() - start, 1e-9)))
    wall: dict[str, list[float]] = {name: [] for name in candidates}
    cpu: dict[str, list[float]] = {name: [] for name in candidates}
    names = list(candidates)
    for round_index in range(repeats):
        shift = round_index % len(names)
        for name in names[shift:] + names[:shift]:
            fn, count = candidates[name], calls[name]
            start, start_cpu = time.perf_counter(), time.process_time()
            for _ in range(count):
                fn()
            wall[name].append((time.perf_counter() - start) / count)
            cpu[name].append((time.process_time() - start_cpu) / count)
    return {
        name: {
            "median_ms": 1e3 * statistics.median(wall[name]),
            "min_ms": 1e3 * min(wall[name]),
            "max_ms": 1e3 * max(wall[name]),
            "cpu_median_ms": 1e3 * statistics.median(cpu[name]),
            "calls_per_repeat": calls[name],
            "repeats_ms": [round(1e3 * t, 4) for t in wall[name]],
        }
        for name in candidates
    }


def paired_ratio(timings: dict, numerator: str, denominator: str) -> float | None:
    """Median over rounds of the ratio of two candidates' times in the same round: load that
    comes and goes between rounds cancels, unlike in a ratio of the two medians."""
    if numerator not in timings or denominator not in timings:
        return None
    pairs = zip(timings[numerator]["repeats_ms"], timings[denominator]["repeats_ms"], strict=True)
    return statistics.median(a / b for a, b in pairs)


RATIOS = (("zuko", "ours"), ("nflows", "ours"), ("ours", "floor"))


def train_fn(log_prob: Callable, model: nn.Module, x: torch.Tensor, optimizer=None):
    def step():
        model.zero_grad(set_to_none=True)
        loss = -log_prob(x).mean()
        loss.backward()
        if optimizer is not None:
            optimizer.step()

    return step


def no_grad_fn(fn: Callable, *args):
    def call():
        with torch.no_grad():
            fn(*args)

    return call


def bench_dimension(features: int, libraries: list[Library], settings: dict) -> dict:
    """All cases at one D: {case: {library: timing}}, plus parameter counts."""
    torch.manual_seed(0)
    by_name = {lib.name: lib for lib in libraries}
    mafs = {lib.name: lib.build_maf(features) for lib in libraries}
    spline_mafs = {lib.name: lib.build_spline_maf(features) for lib in libraries}
    floor = Floor(features)
    spline_floor = Floor(features, RationalQuadraticSpline(BINS, TAIL_BOUND).num_params)
    iaf = build_iaf(features, NUM_LAYERS, HIDDEN, permutation="reverse")
    spline_iaf = build_iaf(
        features,
        NUM_LAYERS,
        HIDDEN,
        permutation="reverse",
        transform="spline",
        bins=BINS,
        tail_bound=TAIL_BOUND,
    )
    models = {
        **mafs,
        "floor": floor,
        "ours IAF": iaf,
        **{f"{name} spline": model for name, model in spline_mafs.items()},
        "floor spline": spline_floor,
        "ours spline IAF": spline_iaf,
    }
    for name, model in models.items():
        dtypes = {p.dtype for p in model.parameters()}
        if dtypes != {torch.float32}:
            raise RuntimeError(f"{name} at D={features} has parameters of dtype {dtypes}")
    parameters = {name: sum(p.numel() for p in m.parameters()) for name, m in models.items()}

    x_train = torch.randn(TRAIN_BATCH, features)
    x_eval = torch.randn(LOG_PROB_POINTS, features)

    def maf_cases(prefix: str, flows: dict[str, nn.Module], floor: Floor, cases: tuple[str, ...]):
        """The MAF cases named ``prefix + case`` for one transform, every library + floor."""
        train_models = {**flows, "floor": floor}
        log_prob = {name: partial(by_name[name].log_prob, flow) for name, flow in flows.items()}
        log_prob["floor"] = floor.log_prob
        adam = {name: torch.optim.Adam(m.parameters(), lr=1e-4) for name, m in train_models.items()}
        every = {
            "train_fwd_bwd": {
                name: train_fn(log_prob[name], model, x_train)
                for name, model in train_models.items()
            },
            "train_step": {
                name: train_fn(log_prob[name], model, x_train, adam[name])
                for name, model in train_models.items()
            },
            "maf_log_prob": {name: no_grad_fn(log_prob[name], x_eval) for name in train_models},
            "maf_sample": {
                name: no_grad_fn(by_name[name].sample, flow, SAMPLE_POINTS)
                for name, flow in flows.items()
            },
        }
        return {prefix + case: every[case] for case in cases}

    cases: dict[str, dict[str, Callable]] = {
        **maf_cases("", mafs, floor, ("train_fwd_bwd", "train_step", "maf_log_prob", "maf_sample")),
        "iaf_sample": {"ours": no_grad_fn(iaf.sample, (SAMPLE_POINTS,))},
        "iaf_sample_and_log_prob": {"ours": no_grad_fn(iaf.sample_and_log_prob, (SAMPLE_POINTS,))},
        **maf_cases(
            "spline_", spline_mafs, spline_floor, ("train_step", "maf_log_prob", "maf_sample")
        ),
        "spline_iaf_sample_and_log_prob": {
            "ours": no_grad_fn(spline_iaf.sample_and_log_prob, (SAMPLE_POINTS,))
        },
    }
    results: dict[str, dict] = {}
    reduced_settings: dict[str, dict] = {}
    for case, candidates in cases.items():
        for model in models.values():
            model.train("train" in case)
        reduced = REDUCED.get((case, features), {})
        case_settings = {
            key: min(value, reduced.get(key, value)) for key, value in settings.items()
        }
        results[case] = time_interleaved(candidates, **case_settings)
        if reduced:
            reduced_settings[case] = case_settings
        line = ", ".join(f"{n} {r['median_ms']:.3g} ms" for n, r in results[case].items())
        print(f"  D={features:<3} {case:<32} {line}", file=sys.stderr, flush=True)
    ratios = {
        case: {
            f"{a}/{b}": ratio
            for a, b in RATIOS
            if (ratio := paired_ratio(timings, a, b)) is not None
        }
        for case, timings in results.items()
    }
    return {
        "parameters": parameters,
        "cases": results,
        "paired_ratios": ratios,
        "reduced_settings": reduced_settings,
    }


# ------------------------------------------------------------------------------------------
# Machine, libraries, report


def keep_freed_memory() -> str:
    """Stop glibc from returning freed blocks to the kernel (mmap/munmap, heap trimming).

    Tensors above glibc's mmap threshold (a 10,000 x 128 float32 activation is 5 MB) are
    otherwise unmapped when freed and page-faulted back on the next call: on this VM that
    doubled the median of a 10k-point log_prob and made it vary 2x from run to run, as kernel
    time that grows with the number of temporaries. Every library benefits alike;
    ``--default-malloc`` measures without it. Returns what was done, for the JSON.
    """
    name = ctypes.util.find_library("c")
    if name is None or "libc.so" not in name:
        return "unchanged (not glibc)"
    libc = ctypes.CDLL(name)
    m_trim_threshold, m_top_pad, m_mmap_threshold = -1, -2, -3
    settings = {m_mmap_threshold: 1 << 30, m_trim_threshold: 1 << 30, m_top_pad: 256 << 20}
    if not all(libc.mallopt(option, value) for option, value in settings.items()):
        return "mallopt refused"
    return "glibc mallopt: M_MMAP_THRESHOLD=1 GiB, M_TRIM_THRESHOLD=1 GiB, M_TOP_PAD=256 MiB"


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def git_revision() -> str | None:
    try:
        root = Path(__file__).resolve().parent.parent
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "distill"],
            cwd=root,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        return commit + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return None


def load_peers() -> tuple[list[Library], dict[str, str]]:
    """The peer libraries that import, and for each one the version or why it is missing."""
    peers, status = [], {}
    for name, cls in (("zuko", Zuko), ("nflows", NFlows)):
        try:
            peers.append(cls())
            status[name] = importlib.metadata.version(name)
        except Exception as error:  # a broken optional install must not stop the benchmark
            status[name] = f"not available: {type(error).__name__}: {error}"
    return peers, status


def format_ms(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.3f}" if value < 1 else f"{value:.2f}" if value < 100 else f"{value:.1f}"


def format_ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def table(results: dict) -> str:
    header = (
        f"{'D':>3}  {'case':<36} {'ours ms':>9} {'zuko ms':>9} {'zuko/ours':>10} "
        f"{'nflows ms':>10} {'nflows/ours':>12} {'floor ms':>9} {'ours/floor':>11}"
    )
    lines = [header, "-" * len(header)]
    for features, per_dimension in results.items():
        for case, label in CASES:
            timings = per_dimension["cases"][case]
            ratios = per_dimension["paired_ratios"][case]
            median = {lib: timings.get(lib, {}).get("median_ms") for lib in LIBRARIES}
            lines.append(
                f"{features:>3}  {label:<36} {format_ms(median['ours']):>9} "
                f"{format_ms(median['zuko']):>9} {format_ratio(ratios.get('zuko/ours')):>10} "
                f"{format_ms(median['nflows']):>10} "
                f"{format_ratio(ratios.get('nflows/ours')):>12} "
                f"{format_ms(median['floor']):>9} {format_ratio(ratios.get('ours/floor')):>11}"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--quick",
        action="store_true",
        help="smoke test: one repeat, one warm-up; writes no JSON unless --output",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch intra-op threads (default 1: see experiments/README.md)",
    )
    parser.add_argument(
        "--default-malloc",
        action="store_true",
        help="leave glibc's malloc as it is (see keep_freed_memory)",
    )
    parser.add_argument(
        "--output", type=Path, default=None, help=f"JSON path (default: {RESULTS} for a full run)"
    )
    args = parser.parse_args(argv)

    allocator = "unchanged (--default-malloc)" if args.default_malloc else keep_freed_memory()
    torch.set_num_threads(args.threads)
    torch.set_num_interop_threads(1)
    torch.set_default_dtype(torch.float32)
    settings = (
        {"repeats": 1, "warmup": 1, "min_time": 0.0}
        if args.quick
        else {"repeats": 11, "warmup": 2, "min_time": 0.2}
    )
    peers, peer_status = load_peers()
    libraries: list[Library] = [Ours(), *peers]
    machine = {
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "torch_num_threads": torch.get_num_threads(),
        "torch_num_interop_threads": torch.get_num_interop_threads(),
        "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY"),
        "OMP_WAIT_POLICY_set_by": "user" if _OMP_WAIT_POLICY_FROM_USER else "this script",
        "allocator": allocator,
        "load_average_before": os.getloadavg(),
    }
    revision = git_revision()
    print(
        f"distill {revision}, torch {machine['torch']}, {machine['cpu_model']}, "
        f"{machine['cpus_usable']} usable CPUs, "
        f"load average {machine['load_average_before'][0]:.1f}"
    )
    policy = machine["OMP_WAIT_POLICY"]
    print(
        f"torch.get_num_threads() = {machine['torch_num_threads']}, OMP_WAIT_POLICY = {policy} "
        f"(set by {machine['OMP_WAIT_POLICY_set_by']}"
        f"{'' if policy == 'PASSIVE' else '; PASSIVE is recommended'})"
    )
    print(f"allocator: {allocator}")
    print("peers: " + ", ".join(f"{name} {status}" for name, status in peer_status.items()))
    print(f"{'quick' if args.quick else 'full'} run: {settings}", flush=True)

    start = time.perf_counter()
    results = {features: bench_dimension(features, libraries, settings) for features in FEATURES}
    machine["load_average_after"] = os.getloadavg()
    elapsed = time.perf_counter() - start

    print()
    print(table(results))
    print(
        f"\nms: median wall time per call. Ratios: median over rounds of the same-round ratio; "
        f"peer/ours > 1 means ours is faster.\nfloor: the same MLPs without masks or flow code. "
        f"{elapsed:.0f} s in all."
    )

    output = args.output or (None if args.quick else RESULTS)
    if output is not None:
        report = {
            "command": f"OMP_WAIT_POLICY={os.environ['OMP_WAIT_POLICY']} python "
            + " ".join(sys.argv),
            "git_revision": revision,
            "machine": machine,
            "peers": peer_status,
            "architecture": {
                "num_layers": NUM_LAYERS,
                "hidden_features": list(HIDDEN),
                "activation": "ReLU",
                "transform": "affine; spline cases: rational-quadratic, "
                f"{BINS} bins on [-{TAIL_BOUND:g}, {TAIL_BOUND:g}], linear tails",
                "ordering": "reversed between layers",
                "dtype": "float32",
            },
            "settings": {
                **settings,
                "quick": args.quick,
                "train_batch": TRAIN_BATCH,
                "log_prob_points": LOG_PROB_POINTS,
                "sample_points": SAMPLE_POINTS,
                "train_step": "zero_grad + -log_prob(x).mean() + backward "
                "(+ Adam.step() in train_step, not in train_fwd_bwd)",
            },
            "elapsed_s": round(elapsed, 1),
            "results": {str(features): value for features, value in results.items()},
        }
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(json.dumps(report, indent=1) + "\n")
        print(f"wrote {output}")


if __name__ == "__main__":
    main()
