"""A sweep spec from command-line flags, so a quick question needs no YAML file.

    python -m ray_jobs.sweep --base experiments/ablation_synthetic.yaml \\
        --grid pseudo.k_scheme=equal_division,nearest_point --grid pseudo.beta=0.03,0.1,0.3 \\
        --seeds 0,1,2 --stage pseudo --name my_axis [--save-spec experiments/sweeps/my_axis.yaml]

builds the same mapping a spec file holds (``base``, ``grid``, ``seeds``, ``stage``, ``split``,
``set`` from ``--set``, ``metrics``, ``baseline``, ``mlflow_experiment``) and checks it with the
file loader's rules (:func:`ray_jobs.spec.spec_from_mapping`), so the trials, their config hashes
and the table are the same as for the file ``--save-spec`` writes.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from p2m_core.config import parse_override, parse_value
from p2m_core.errors import P2MInputError
from p2m_core.io import atomic_write_text
from ray_jobs.spec import SweepSpec, spec_from_mapping

#: Brackets a ``--grid`` value may nest commas in (``[semantic, boundary_low]``, ``{a: 1, b: 2}``).
_OPEN, _CLOSE = "[{", "]}"


def split_values(text: str, where: str) -> list[str]:
    """``a,[b, c],d`` -> ``['a', '[b, c]', 'd']``: commas split values except inside brackets."""
    parts, depth, current = [], 0, ""
    for ch in text:
        if ch in _OPEN:
            depth += 1
        elif ch in _CLOSE:
            depth -= 1
            if depth < 0:
                raise P2MInputError(f"{where}: unbalanced {ch!r} in {text!r}")
        if ch == "," and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += ch
    if depth:
        raise P2MInputError(f"{where}: unbalanced brackets in {text!r}")
    parts.append(current)
    if any(not p.strip() for p in parts):
        raise P2MInputError(f"{where}: an empty value in {text!r} (write KEY=V1,V2,...)")
    return [p.strip() for p in parts]


def parse_grid_flag(text: str) -> tuple[str, list[Any]]:
    """``pseudo.beta=0.03,0.1`` -> ``('pseudo.beta', [0.03, 0.1])``; each value is YAML, as for ``--set``."""
    where = f"--grid {text!r}"
    key, sep, values = text.partition("=")
    key = key.strip()
    if not sep or not key or any(not part for part in key.split(".")):
        raise P2MInputError(f"{where}: expected KEY=V1,V2,... with a dotted config key, e.g. --grid pseudo.assignment=mc,ot")
    return key, [parse_value(v, where) for v in split_values(values, where)]


def spec_mapping(base: str, grids: Sequence[str], name: str, *, stage: str | None = None, split: str | None = None,
                 seeds: Sequence[int] | None = None, overrides: Sequence[str] = (), description: str = "",
                 metrics: Sequence[str] = (), baseline: Sequence[str] = (), experiment: str = "") -> dict[str, Any]:
    """The spec file's mapping the flags describe (``base`` absolute; unset fields left out, so
    the loader's defaults apply exactly as they do to a file)."""
    if not name:
        raise P2MInputError("--grid needs --name NAME: the sweep's name in MLflow and for analysis.tables --table NAME")
    grid: dict[str, list[Any]] = {}
    for text in grids:
        key, values = parse_grid_flag(text)
        if key in grid:
            raise P2MInputError(f"--grid {text!r}: key {key!r} is given twice; list all its values in one --grid")
        grid[key] = values
    raw: dict[str, Any] = {"name": name, "base": str(Path(base).resolve()), "grid": grid}
    if description:
        raw["description"] = description
    if stage is not None:
        raw["stage"] = stage
    if split is not None:
        raw["split"] = split
    if overrides:
        raw["set"] = {".".join(k): v for k, v in (parse_override(t) for t in overrides)}
    if seeds is not None:
        raw["seeds"] = list(seeds)
    if metrics:
        raw["metrics"] = list(metrics)
    if baseline:
        raw["baseline"] = {".".join(k): v for k, v in (parse_override(t) for t in baseline)}
    if experiment:
        raw["mlflow_experiment"] = experiment
    return raw


def spec_from_flags(raw: dict[str, Any]) -> SweepSpec:
    """Check the flags' mapping with the spec file's rules (errors name the flags' sweep)."""
    return spec_from_mapping(raw, f"sweep {raw.get('name')!r} from the command line (--grid)", Path.cwd())


def save_spec(raw: dict[str, Any], path: str | os.PathLike) -> Path:
    """Write the flags' spec as a YAML file (atomically) that runs the same sweep: ``base``
    relative to the file's folder, as the shipped specs write it."""
    path = Path(path).resolve()
    out = dict(raw)
    out["base"] = os.path.relpath(out["base"], path.parent)
    header = "# written by python -m ray_jobs.sweep --save-spec; run it with: python -m ray_jobs.sweep " + str(path) + "\n"
    atomic_write_text(path, header + yaml.safe_dump(out, sort_keys=False))
    return path
