"""``distill-export CKPT [--format pt2|onnx] [--dtype float32|float64] [--out PATH]``: a trained
student as a standalone sampler, noise ``(N, D)`` -> samples ``(N, D)`` in the data's space (or
``(N, C, T)`` for a WaveNet student over sequences, T free), that loads and runs with torch alone
(`distill.export`). Not a Hydra app: plain argparse.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from distill.cli.common import USER_ERRORS
from distill.export import DTYPES, FORMATS, export_sampler, metadata_path
from distill.models import StudentModule

WHERE = (
    "pass a .ckpt written by distill-student (<run dir>/checkpoints/best.ckpt, or "
    "<run dir>/student/checkpoints/best.ckpt for a distill run)"
)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="distill-export",
        description="Write a trained student as a standalone sampler: a program mapping "
        "standard normal noise (N, D), or (N, C, T) over sequences, to samples of its shape in "
        "the data's own space, loadable with torch alone, and a JSON beside it (<out>.json) "
        "describing it.",
    )
    parser.add_argument("checkpoint", type=Path, metavar="CKPT", help="a student checkpoint")
    parser.add_argument(
        "--format",
        choices=FORMATS,
        default="pt2",
        help="pt2: torch.export program, load with torch.export.load(path).module() "
        "(default); onnx: ONNX model (needs the onnx extra)",
    )
    parser.add_argument("--dtype", choices=tuple(DTYPES), default="float32")
    parser.add_argument(
        "--out", type=Path, help="the program's path (default: CKPT with the format's suffix)"
    )
    return parser.parse_args(argv)


def load_student(path: Path) -> tuple[StudentModule, str]:
    """The student of the checkpoint at ``path`` (eval mode, CPU) and the sha256 of the bytes it
    was loaded from; a missing, corrupt or foreign file is a one-line error naming it."""
    if not path.is_file():
        raise FileNotFoundError(f"student checkpoint {path} does not exist: {WHERE}")
    content = path.read_bytes()
    try:
        hparams = torch.load(io.BytesIO(content), map_location="cpu", weights_only=True)[
            "hyper_parameters"
        ]
    except Exception as error:
        raise ValueError(
            f"cannot read checkpoint {path}: it is corrupt or not a Lightning checkpoint "
            f"({_one_line(error)}): {WHERE}"
        ) from error
    if "student" not in hparams:
        what = "a teacher's checkpoint" if "flow" in hparams else "not a student's checkpoint"
        raise ValueError(f"{path} is {what}: distill-export ships a student; {WHERE}")
    try:
        module = StudentModule.load_from_checkpoint(io.BytesIO(content), map_location="cpu")
    except Exception as error:
        raise ValueError(
            f"cannot load student checkpoint {path} ({_one_line(error)}): {WHERE}"
        ) from error
    return module, hashlib.sha256(content).hexdigest()


def _one_line(error: Exception) -> str:
    message = str(error).splitlines()[0][:200] if str(error) else "no message"
    return f"{type(error).__name__}: {message}"


def provenance(module: StudentModule, path: Path, sha256: str) -> dict[str, Any]:
    """Where an exported student came from: its checkpoint and its plain hyper-parameters."""
    hparams = module.hparams
    return {
        "checkpoint": {"path": str(path.resolve()), "sha256": sha256},
        "student": hparams["student"],
        "loss": hparams["loss"],
        "ema_decay": hparams["ema_decay"],  # > 0: the exported weights are the EMA's
        "teacher_data": hparams["teacher"].get("data", {}).get("name"),
    }


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``distill-export``; errors are one line on stderr (``error: ...``) and status 1.
    DISTILL_TRACEBACK=1 shows the traceback instead."""
    args = parse_args(argv)
    out = args.out if args.out is not None else args.checkpoint.with_suffix(f".{args.format}")
    try:
        module, sha256 = load_student(args.checkpoint)
        description = export_sampler(
            module.inference_student,
            module.preprocessing,
            out,
            format=args.format,
            dtype=args.dtype,
            context_features=module.hparams["student"].get("context_features"),
            provenance=provenance(module, args.checkpoint, sha256),
        )
    except (*USER_ERRORS, ImportError) as error:
        if os.environ.get("DISTILL_TRACEBACK"):
            raise
        print(f"error: {error}", file=sys.stderr)
        return 1
    [samples] = description["outputs"]
    print(
        f"wrote {out} ({args.format}, {args.dtype}, samples {tuple(samples['shape'])}, free: "
        f"{', '.join(description['dynamic_dims'])}) and {metadata_path(out)}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
