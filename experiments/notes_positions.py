"""Where along the sequence a sequence student loses to its teacher: the held-out NLL per step
of teacher and student, the student's KL per step and the loudness of data, student and teacher
samples, window by window over the crop.

    python experiments/notes_positions.py NAME=STUDENT_CKPT [NAME=STUDENT_CKPT ...]
        [--sequences 64] [--teacher-samples] [--out results/notes_positions]

A student checkpoint holds its teacher, so each argument is one teacher-student pair (e.g. the
``student/checkpoints/best.ckpt`` of a `distill experiment=notes` run). Writes
``results/notes_positions.{json,md}`` (``--out``) and prints the tables.

How, without a per-step density in the flows' API: both flows are autoregressive over time
(causal), so the log-density of the first ``e`` steps of a sequence is the log-density of its
prefix ``x[..., :e]``. Each window's figure is the difference of two prefixes' log-densities
divided by the window's length. Test NLL (teacher: one parallel pass per prefix; student: its
sequential inverse) on the first ``--sequences`` test notes, in the flows' own (model) space:
the NLL differs from the data space's by a constant per step, the same for teacher and student,
so the gap is the run's. KL per step on as many student samples (their prefixes drawn in one
parallel pass from the noise's prefix), against the teacher's density. Loudness: the root mean
square of each window over the rows, for the test data, the student's samples and (with
``--teacher-samples``, step by step: slow) the teacher's, all for the same contexts.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from distill.models import StudentModule
from distill.stages import build_datamodule

EDGES = (0, 1, 4, 16, 32, 64, 128, 256, 384, 512, 1024, 2048)


def window_edges(length: int) -> list[int]:
    """The window boundaries within a crop of ``length`` steps: finer at the onset."""
    return [e for e in EDGES if e < length] + [length]


def per_window(prefix_values: list[float], edges: list[int]) -> list[float]:
    """Per-step means of a quantity summed over prefixes ``x[..., :e]`` (one value per
    edge > 0): ``(S(e_k) - S(e_{k-1})) / (e_k - e_{k-1})``."""
    sums = [0.0, *prefix_values]
    return [
        (b - a) / (e1 - e0)
        for a, b, (e0, e1) in zip(sums[:-1], sums[1:], edges_pairs(edges), strict=True)
    ]


def edges_pairs(edges: list[int]) -> list[tuple[int, int]]:
    """The windows ``(start, end)`` between consecutive edges."""
    return list(zip(edges[:-1], edges[1:], strict=True))


@torch.no_grad()
def positions(checkpoint: str, sequences: int, teacher_samples: bool, seed: int) -> dict:
    """The per-window figures of one student checkpoint (its teacher inside), each a list of
    one float per window: ``teacher_nll_per_step``, ``student_nll_per_step``,
    ``nll_gap_per_step`` and ``nll_gap_share`` (the window's share of the gap summed over the
    crop) on the test notes; ``kl_per_step`` (a one-draw log-ratio estimate per sample,
    averaged over as many student samples); ``rms_data``, ``rms_student`` and, with
    ``teacher_samples``, ``rms_teacher``. Flows with a local context (a ``hop_length``) are
    refused: a prefix would need its context cut to whole frames."""
    torch.manual_seed(seed)
    module = StudentModule.load_from_checkpoint(checkpoint, map_location="cpu").eval()
    student, teacher = module.inference_student, module.teacher
    if student.hop_length is not None:
        raise SystemExit(
            f"{checkpoint}: a student with a local context (hop_length {student.hop_length}): "
            "this script takes global or no context"
        )
    datamodule = build_datamodule(dict(module.hparams.teacher["data"]["spec"]))
    datamodule.setup()
    data = module.to_model_space(datamodule.test_data[:sequences])
    context = datamodule.test_context
    context = None if context is None else context[:sequences]
    edges = window_edges(data.shape[-1])
    noise = torch.randn_like(data)
    student_nll, teacher_nll, kl = [], [], []
    for end in edges[1:]:
        student_nll.append(-student.log_prob(data[..., :end], context).mean().item())
        teacher_nll.append(-teacher.log_prob(data[..., :end], context).mean().item())
        prefix_noise = noise[..., :end]
        samples, log_det = student.bijector(prefix_noise, context)  # the last: the whole crop
        log_q = student.base.log_prob(prefix_noise) - log_det
        kl.append((log_q - teacher.log_prob(samples, context)).mean().item())

    def loudness(x: torch.Tensor) -> list[float]:
        return [x[..., a:b].square().mean().sqrt().item() for a, b in edges_pairs(edges)]

    teacher_window, student_window = per_window(teacher_nll, edges), per_window(student_nll, edges)
    gaps = [s - t for s, t in zip(student_window, teacher_window, strict=True)]
    window_gaps = [g * (b - a) for g, (a, b) in zip(gaps, edges_pairs(edges), strict=True)]
    if sum(window_gaps) <= 0:
        raise SystemExit(f"{checkpoint}: the student's NLL is not above the teacher's: no gap")
    result = {
        "checkpoint": checkpoint,
        "sequences": len(data),
        "windows": [list(pair) for pair in edges_pairs(edges)],
        "teacher_nll_per_step": teacher_window,
        "student_nll_per_step": student_window,
        "nll_gap_per_step": gaps,
        "nll_gap_share": [gap / sum(window_gaps) for gap in window_gaps],
        "kl_per_step": per_window(kl, edges),
        "rms_data": loudness(data),
        "rms_student": loudness(samples),
    }
    if teacher_samples:
        shape = () if context is not None else (len(data),)
        result["rms_teacher"] = loudness(teacher.sample(shape, context, length=data.shape[-1]))
    return result


def table(name: str, result: dict) -> list[str]:
    """One markdown table: a row per window."""
    teacher = "rms_teacher" in result
    header = (
        "| steps | teacher NLL/step | student NLL/step | gap/step | share of gap | KL/step "
        "| RMS data | RMS student |"
    )
    lines = [f"### {name}", "", f"`{result['checkpoint']}`: {result['sequences']} sequences", ""]
    lines += [header + (" RMS teacher |" if teacher else ""), "|---" * (9 if teacher else 8) + "|"]
    for k, (a, b) in enumerate(result["windows"]):
        row = (
            f"| {a}-{b} | {result['teacher_nll_per_step'][k]:.3f} | "
            f"{result['student_nll_per_step'][k]:.3f} | {result['nll_gap_per_step'][k]:.3f} | "
            f"{100 * result['nll_gap_share'][k]:.0f}% | {result['kl_per_step'][k]:.3f} | "
            f"{result['rms_data'][k]:.2f} | {result['rms_student'][k]:.2f} |"
        )
        lines.append(row + (f" {result['rms_teacher'][k]:.2f} |" if teacher else ""))
    return lines + [""]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", help="NAME=STUDENT_CHECKPOINT")
    parser.add_argument("--sequences", type=int, default=64)
    parser.add_argument("--teacher-samples", action="store_true")
    parser.add_argument("--seed", type=int, default=0, help="the noise of the student samples")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "notes_positions"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    results = {}
    lines = ["# Where the student loses, window by window (experiments/notes_positions.py)", ""]
    for run in args.runs:
        name, _, checkpoint = run.partition("=")
        if not checkpoint:
            parser.error(f"expected NAME=STUDENT_CHECKPOINT, got {run!r}")
        results[name] = positions(checkpoint, args.sequences, args.teacher_samples, args.seed)
        run_lines = table(name, results[name])
        lines += run_lines
        print("\n".join(run_lines), flush=True)
    out = Path(args.out)
    out.with_suffix(".json").write_text(json.dumps(results, indent=2) + "\n")
    out.with_suffix(".md").write_text("\n".join(lines))


if __name__ == "__main__":
    main()
