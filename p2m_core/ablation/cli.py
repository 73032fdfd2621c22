"""Run one pseudo-stage setting in this process: no Ray, no MLflow; files and a table row.

    python -m p2m_core.ablation --config experiments/ablation_synthetic.yaml --out runs/one \\
        [--set data.root=data/synthetic] [--set pseudo.assignment=mc] [--quiet]

For trying a setting or debugging one before sweeping it. Writes ``OUT/metrics.json``,
``OUT/config.yaml`` and ``OUT/overlays/`` (:func:`p2m_core.ablation.run_pseudo_stage`) and
prints the headline numbers as a Markdown table. Exit status 2 with ``error: ...`` on bad input.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from p2m_core.ablation.stage import run_pseudo_stage
from p2m_core.config import add_config_arguments, load_config
from p2m_core.errors import P2MInputError

#: (column title, key in ``metrics`` or ``diagnostics``, format)
COLUMNS = (
    ("PQ", "PQ", "{:.1f}"), ("PQ_th", "PQ_th", "{:.1f}"), ("PQ_st", "PQ_st", "{:.1f}"), ("mIoU", "mIoU", "{:.1f}"),
    ("OT-vs-MC %", "disagreement_pct", "{:.2f}"), ("col err", "col_error", "{:.3f}"),
    ("k violation %", "k_violation_pct", "{:.2f}"),
)  # fmt: skip


def result_table(rows: Mapping[str, Mapping[str, Any]]) -> str:
    """A Markdown table, one row per named stage result; ``-`` where a value does not apply."""
    lines = ["| setting | " + " | ".join(c[0] for c in COLUMNS) + " | s/image |", "|" + "---|" * (len(COLUMNS) + 2)]
    for name, result in rows.items():
        values = {**result.get("metrics", {}), **result.get("diagnostics", {})}
        cells = ["-" if values.get(key) is None else fmt.format(values[key]) for _, key, fmt in COLUMNS]
        cells.append(f"{result.get('timings', {}).get('seconds_per_image', 0.0):.3f}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m p2m_core.ablation",
        description="Score the pseudo labels of one setting against the ground truth (no training, no Ray).",
    )
    add_config_arguments(parser, default_config="experiments/ablation_synthetic.yaml")
    parser.add_argument("--out", required=True, help="output folder (metrics.json, config.yaml, overlays/)")
    parser.add_argument("--quiet", action="store_true", help="no progress lines")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        cfg = load_config(args.config, args.overrides)
        result = run_pseudo_stage(cfg, args.out, progress=not args.quiet)
    except P2MInputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    label = f"{cfg.ablation.source} / {cfg.pseudo.assignment}"
    print(result_table({label: result}))
    print(f"\nwrote {Path(args.out) / 'metrics.json'} (config hash {result['config_hash']})", file=sys.stderr)
    return 0
