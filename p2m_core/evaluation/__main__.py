"""Command line: panoptic quality of a prediction set against COCO-panoptic ground truth.

    python -m p2m_core.evaluation --gt-json panoptic_val.json --pred-json pred.json \\
        [--gt-folder DIR] [--pred-folder DIR] [--out metrics.json]

Prints the All/Things/Stuff table (PQ, SQ, RQ in percent, N categories) to stdout, progress to
stderr, and writes the full result (including ``per_class``) atomically as JSON with ``--out``.
Exit status 2 with ``error: <message>`` on bad input.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence

from p2m_core.errors import P2MInputError
from p2m_core.evaluation.panoptic_quality import format_pq_table, pq_compute
from p2m_core.io import atomic_write_json


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m p2m_core.evaluation",
        description="Panoptic quality (PQ/SQ/RQ) of COCO-panoptic predictions; equal to panopticapi.",
    )
    parser.add_argument("--gt-json", required=True, help="ground-truth panoptic JSON (gives the categories)")
    parser.add_argument("--pred-json", required=True, help="prediction panoptic JSON")
    parser.add_argument("--gt-folder", default=None, help="ground-truth PNG folder (default: GT JSON path without .json)")
    parser.add_argument("--pred-folder", default=None, help="prediction PNG folder (default: prediction JSON path without .json)")
    parser.add_argument("--out", default=None, help="write the full result (with per_class) to this JSON file")
    parser.add_argument("--threads", type=int, default=None, help="PNG decoding threads (default: CPU count, at most 8)")
    parser.add_argument("--quiet", action="store_true", help="no progress on stderr")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    start = time.perf_counter()
    try:
        results = pq_compute(
            args.gt_json, args.pred_json, args.gt_folder, args.pred_folder,
            progress=not args.quiet, num_threads=args.threads,
        )
        print(format_pq_table(results))
        if args.out:
            serialisable = {name: results[name] for name in ("All", "Things", "Stuff")}
            serialisable["per_class"] = {str(k): v for k, v in results["per_class"].items()}
            atomic_write_json(args.out, serialisable, indent=2)
    except P2MInputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if not args.quiet:
        print(f"evaluated in {time.perf_counter() - start:.2f} s", file=sys.stderr)
        if args.out:
            print(f"wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
