"""``distill-report DIR... [--sort METRIC] [--out DIR]``: compare runs offline.

Collects every run under the given folders (single runs, Hydra multirun sweeps, teacher-only
and student-only runs, failed jobs) into ``runs.md``, ``runs.csv`` and a static ``index.html``
with plots. Not a Hydra app: plain argparse.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from distill.dashboard import METRICS, build_report


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="distill-report",
        description="Compare runs offline: a table (runs.md, runs.csv) and a static page "
        "(index.html) with plots, for every run under the given folders.",
    )
    parser.add_argument("dirs", nargs="+", type=Path, metavar="DIR", help="runs or sweeps")
    parser.add_argument(
        "--sort",
        metavar="METRIC",
        help="metrics.json key to sort by, best first (default: student/test_nll, else "
        "teacher/test_nll); one of: " + ", ".join(m.key for m in METRICS),
    )
    parser.add_argument(
        "--out",
        type=Path,
        help="output folder (default: DIR/report for one DIR; required for several); its "
        "assets/ folder is replaced",
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``distill-report``; errors are one line on stderr and exit status 1."""
    args = parse_args(argv)
    if args.out is None and len(args.dirs) > 1:
        print(
            "distill-report: several folders given: say where to write with --out", file=sys.stderr
        )
        return 1
    out = args.out if args.out is not None else args.dirs[0] / "report"
    start = time.perf_counter()
    try:
        runs = build_report(args.dirs, out, sort=args.sort)
    except (ValueError, FileNotFoundError) as error:
        print(f"distill-report: {error}", file=sys.stderr)
        return 1
    failed = sum(run.failed for run in runs)
    print(
        f"{len(runs)} runs ({failed} failed) in {time.perf_counter() - start:.1f} s: "
        f"{(out / 'index.html').resolve()}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
