"""Sampling speed of WaveNet flows over time: the cached teacher against naive step-by-step
sampling, and Parallel WaveNet students against the cached teacher on one second of 16 kHz audio.

    python experiments/bench_wavenet.py                # full run: results/bench_wavenet.{json,md}
    python experiments/bench_wavenet.py --threads 1 2  # the students' rounds at 1 and 2 threads
    python experiments/bench_wavenet.py --quick        # smoke test, nothing written

Cases (float32, ``torch.no_grad``, weights perturbed away from their near-identity
initialization; sampling time does not depend on the weights' values):

1. ``cached vs naive`` (one thread): the notes teacher (``experiment=notes``: one WaveNet MAF
   flow of 9 blocks, 48 channels) drawing 2,000 steps at batch 1 with its fast-WaveNet queues
   (`WaveNet.solve`), against naive sampling that runs the whole WaveNet over the samples drawn
   so far for every step (a pass over t + 1 steps to get step t).
2. ``student vs teacher``, at each ``--threads`` count (the same for teacher and student): each
   student shape drawing one second (16,000 steps) in one parallel pass per flow, against the
   cached teacher, at batch 1 (one utterance: the serving case) and 16. Shapes: the notes
   student (flows of [8, 8, 8] blocks, 14 channels), the same at 16 and 24 channels, and Parallel
   WaveNet's depths [10, 10, 10, 30] (16 channels here, 64 in the paper).
3. ``where the time goes`` (one thread): the teacher's time per step against its width (16 to
   128 channels): flat means the step is bound by per-operation overhead (Python and the
   dispatcher: ~7 small products and ~5 elementwise ops per block), not by arithmetic.

Timing: `distill.evaluate.paired_sampling_times`, teacher and student in interleaved rounds
(order alternating), after a warm-up call each; the median per-round ratio with its quartiles.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch

from distill.evaluate import paired_sampling_times
from distill.flows import build_wavenet_iaf, build_wavenet_maf

RESULTS = Path(__file__).parent / "results"
SAMPLE_RATE = 16_000
# the shapes of distill/conf/experiment/notes.yaml (unconditional here)
TEACHER = {"layers_per_flow": [9], "residual_channels": 48, "skip_channels": 48}
STUDENTS = {
    "notes [8,8,8] x14": {"layers_per_flow": [8, 8, 8], "residual_channels": 14},
    "notes [8,8,8] x16": {"layers_per_flow": [8, 8, 8], "residual_channels": 16},
    "notes [8,8,8] x24": {"layers_per_flow": [8, 8, 8], "residual_channels": 24},
    "Parallel WaveNet's depths [10,10,10,30] x16": {
        "layers_per_flow": [10, 10, 10, 30],
        "residual_channels": 16,
    },
}


@torch.no_grad()
def perturbed(flow, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    for parameter in flow.parameters():
        parameter.add_(0.05 * torch.randn(parameter.shape, generator=generator))
    return flow.eval()


@torch.no_grad()
def naive_sample(flow, count: int, length: int) -> torch.Tensor:
    """Sampling a one-flow MAF over time without queues: a WaveNet pass over the prefix drawn
    so far (and a zero for step t, which the pass does not read) for every step t."""
    (layer,) = flow.bijector.bijectors
    u = flow.noise((count,), length=length)
    x = torch.zeros_like(u)
    for t in range(length):
        params = layer.params(x[..., : t + 1], None)[..., t, :]
        x[..., t], _ = layer.transform.forward(u[..., t], params)
    return x


def cached_vs_naive(steps: int, rounds: int) -> dict:
    teacher = perturbed(build_wavenet_maf(channels=1, length=steps, **TEACHER))
    timed = paired_sampling_times(
        lambda n: naive_sample(teacher, n, steps),
        lambda n: teacher.sample((n,), length=steps),
        1,
        rounds=rounds,
    )
    return {
        "steps": steps,
        "naive_s": timed["sampling/teacher_s"],
        "cached_s": timed["sampling/student_s"],
        "cached_ms_per_step": 1e3 * timed["sampling/student_s"] / steps,
        "speedup": timed["sampling/speedup"],
        "speedup_q25": timed["sampling/speedup_q25"],
        "speedup_q75": timed["sampling/speedup_q75"],
        "rounds": rounds,
    }


def students_vs_teacher(
    seconds: float, batches: list[int], rounds: int, threads: list[int]
) -> list[dict]:
    length = int(seconds * SAMPLE_RATE)
    teacher = perturbed(build_wavenet_maf(channels=1, length=length, **TEACHER))
    rows = []
    for name, shape in STUDENTS.items():
        student = perturbed(
            build_wavenet_iaf(
                channels=1, length=length, skip_channels=shape["residual_channels"], **shape
            ),
            seed=1,
        )
        for batch in batches:
            for count in threads:
                torch.set_num_threads(count)
                with torch.no_grad():
                    timed = paired_sampling_times(
                        lambda n: teacher.sample((n,), length=length),
                        lambda n, s=student: s.sample((n,), length=length),
                        batch,
                        rounds=rounds,
                    )
                rows.append(
                    {
                        "student": name,
                        "batch": batch,
                        "threads": count,
                        "seconds_of_audio": seconds,
                        "teacher_s": timed["sampling/teacher_s"],
                        "student_s": timed["sampling/student_s"],
                        "speedup": timed["sampling/speedup"],
                        "speedup_q25": timed["sampling/speedup_q25"],
                        "speedup_q75": timed["sampling/speedup_q75"],
                        "rounds": rounds,
                        "student_parameters": sum(p.numel() for p in student.parameters()),
                    }
                )
                print(json.dumps(rows[-1]))
    torch.set_num_threads(1)  # the step costs at one thread, as the cached-vs-naive case
    return rows


def step_cost(steps: int, widths: list[int], repeats: int) -> list[dict]:
    rows = []
    for width in widths:
        teacher = perturbed(
            build_wavenet_maf(
                channels=1,
                length=steps,
                layers_per_flow=TEACHER["layers_per_flow"],
                residual_channels=width,
                skip_channels=width,
            )
        )
        with torch.no_grad():
            teacher.sample((1,), length=steps)
            times = []
            for _ in range(repeats):
                start = time.perf_counter()
                teacher.sample((1,), length=steps)
                times.append(time.perf_counter() - start)
        rows.append({"channels": width, "ms_per_step": 1e3 * statistics.median(times) / steps})
    return rows


def markdown(results: dict) -> str:
    naive = results["cached_vs_naive"]
    lines = [
        "# WaveNet sampling speed (experiments/bench_wavenet.py)",
        "",
        f"{results['machine']}, torch {results['torch']}; the students' rounds at "
        f"{', '.join(map(str, results['threads']))} thread(s), the rest at one.",
        "",
        "## Cached teacher vs naive step-by-step sampling",
        "",
        f"{naive['steps']} steps at batch 1: cached {naive['cached_s']:.2f} s "
        f"({naive['cached_ms_per_step']:.3f} ms a step), naive {naive['naive_s']:.1f} s: "
        f"**{naive['speedup']:.1f}x** (quartiles {naive['speedup_q25']:.1f}-"
        f"{naive['speedup_q75']:.1f}, {naive['rounds']} paired rounds).",
        "",
        "## Students vs the cached teacher, one second of 16 kHz audio",
        "",
        "| student | parameters | batch | threads | teacher (s) | student (s) | speedup "
        "(quartiles) |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in results["students_vs_teacher"]:
        lines.append(
            f"| {row['student']} | {row['student_parameters']:,} | {row['batch']} | "
            f"{row['threads']} | "
            f"{row['teacher_s']:.2f} | {row['student_s']:.3f} | **{row['speedup']:.1f}x** "
            f"({row['speedup_q25']:.1f}-{row['speedup_q75']:.1f}) |"
        )
    lines += [
        "",
        "## Where the teacher's time goes: time per step against width",
        "",
        "| channels | ms per step |",
        "|---|---|",
    ]
    lines += [f"| {r['channels']} | {r['ms_per_step']:.3f} |" for r in results["step_cost"]]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke test: tiny, nothing written")
    parser.add_argument(
        "--threads", type=int, nargs="+", default=[1], help="the students' rounds at each"
    )
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    if args.quick:
        steps, seconds, batches, rounds, repeats = 50, 0.01, [1, 2], 1, 1
    else:
        steps, seconds, batches, rounds, repeats = 2000, 1.0, [1, 16], 3, 3
    results = {
        "machine": f"{platform.machine()}, {platform.processor() or platform.system()}",
        "torch": torch.__version__,
        "threads": args.threads,
        "cached_vs_naive": cached_vs_naive(steps, rounds),
    }
    print(json.dumps(results["cached_vs_naive"]))
    results["students_vs_teacher"] = students_vs_teacher(seconds, batches, rounds, args.threads)
    results["step_cost"] = step_cost(steps, [16, 32, 64, 128], repeats)
    print(json.dumps(results["step_cost"]))
    if args.quick:
        return
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "bench_wavenet.json").write_text(json.dumps(results, indent=2) + "\n")
    (RESULTS / "bench_wavenet.md").write_text(markdown(results))
    print(markdown(results))


if __name__ == "__main__":
    main()
