"""Sweep specs: which settings a sweep runs, checked completely before Ray starts.

A spec is a YAML file in ``experiments/sweeps/``::

    name: table7                       # default: the file name without .yaml
    description: minimum cost vs optimal transport
    paper_table: table7_assignment     # the paper table it answers ('' for none)
    base: ../ablation_synthetic.yaml   # base config, relative to the spec file
    stage: pseudo                      # pseudo (the label stage) or train (a network per trial)
    split: val                         # the split the stage scores (train: val as it trains; any
                                       # other split also at the end, train.test_split)
    set: {}                            # fixed overrides of the base, dotted keys
    grid:                              # dotted key -> list of values: the product is run
      pseudo.assignment: [mc, ot]
    seeds: [0, 1, 2]                   # every grid point runs once per seed
    seed_keys: [data.point_seed, ablation.corruption.seed]   # where a seed is written (default per stage)
    resources: {cpu: 1, gpu: 0}        # per trial
    mlflow_experiment: p2m-pseudo
    metrics: [PQ, PQ_th, PQ_st]        # the table's columns (default per stage: table_layout)
    baseline: {pseudo.assignment: mc}  # the row differences are taken against (default: the first)
    decimals: {PQ: 2}                  # per metric (default: 1 for percent, 3 for errors/seconds)

``grid`` may also be a list of such mappings: the sweep is then the union of their products,
for axes that only exist together (Sinkhorn iterations matter in reference mode only).

:func:`load_spec` checks the spec's own fields (:func:`spec_from_mapping` does the same for
a spec built from ``python -m ray_jobs.sweep --grid`` flags); :func:`expand_trials` builds every trial's
:class:`~p2m_core.config.Config` (base, ``set``, command-line ``--set``, grid values, seed),
so an unknown key, a wrong type, an empty grid, an unknown stage or a missing dataset is an
error naming the spec file, the key and the value, before any worker exists.
"""

from __future__ import annotations

import copy
import hashlib
import itertools
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from p2m_core.config import (
    SPLITS,
    STAGES,
    Config,
    apply_overrides,
    apply_values,
    from_dict,
    load_raw,
    parse_override,
    stage_hash,
)
from p2m_core.ablation import check_pseudo_config
from p2m_core.data.splits import require_split
from p2m_core.engine.data_check import check_training_data
from p2m_core.errors import P2MInputError
from p2m_core.io import PathLike, load_yaml
from p2m_core.model.pretrained import check_pretrained
from p2m_core.tracking.table_layout import MAX_DECIMALS
from ray_jobs.job_paths import absolute_paths, refuse_relative_data_root

#: Where each seed of ``seeds`` is written, per stage, unless the spec says ``seed_keys``: what a
#: seed varies. pseudo: the sampled points and the corruption of the maps. train: the points
#: (``data.point_seed``) and ``seed``, which seeds the network's initial weights, the data order
#: and every augmentation draw (p2m_core.engine.loop, p2m_core.data.dataset).
DEFAULT_SEED_KEYS: dict[str, tuple[str, ...]] = {
    "pseudo": ("data.point_seed", "ablation.corruption.seed"),
    "train": ("seed", "data.point_seed"),
}
SPEC_FIELDS = (
    "name", "description", "paper_table", "base", "stage", "split", "set", "grid", "seeds", "seed_keys",
    "resources", "mlflow_experiment", "metrics", "baseline", "decimals",
)  # fmt: skip


@dataclass(frozen=True)
class Resources:
    """Ray resources of one trial."""

    cpu: float = 1.0
    gpu: float = 0.0

    def as_ray(self) -> dict[str, float]:
        return {"CPU": self.cpu, "GPU": self.gpu} if self.gpu else {"CPU": self.cpu}


@dataclass(frozen=True)
class SweepSpec:
    """A loaded, checked spec (module doc); ``raw`` is the file's mapping, for the record."""

    path: Path | None  # None: built from the command line's --grid flags
    name: str
    description: str
    paper_table: str
    base: Path
    stage: str
    split: str
    fixed: dict[str, Any]
    grid: tuple[dict[str, list], ...]
    seeds: tuple[int, ...]
    seed_keys: tuple[str, ...]
    resources: Resources
    mlflow_experiment: str
    raw: dict = field(default_factory=dict)
    #: The table's columns (empty: the stage's defaults, p2m_core.tracking.table_layout).
    metrics: tuple[str, ...] = ()
    #: The grid point the table's differences are taken against (empty: the first).
    baseline: dict[str, Any] = field(default_factory=dict)
    #: Decimals per metric the table prints (the rest follow the metric's kind).
    decimals: dict[str, int] = field(default_factory=dict)

    @property
    def where(self) -> str:
        """How error messages name the spec: its file, or the command line it came from."""
        return f"sweep spec {self.path}" if self.path is not None else f"sweep {self.name!r} from the command line"

    def settings(self) -> list[dict[str, Any]]:
        """The grid points in order: each block's product, blocks one after another, no repeats."""
        points: list[dict[str, Any]] = []
        for block in self.grid:
            keys = list(block)
            for values in itertools.product(*(block[k] for k in keys)):
                point = dict(zip(keys, values))
                if point not in points:
                    points.append(point)
        return points

    @property
    def grid_keys(self) -> list[str]:
        keys: list[str] = []
        for block in self.grid:
            keys.extend(k for k in block if k not in keys)
        return keys


@dataclass(frozen=True)
class Trial:
    """One run of a sweep: a grid point and a seed, with its built config and hash."""

    index: int
    label: str
    setting: dict[str, Any]
    seed: int
    config: Config
    config_hash: str

    @property
    def run_name(self) -> str:
        return f"{self.label} seed={self.seed}"

    def record(self) -> dict[str, Any]:
        """The trial's entry in the sweep's ``trials.json`` (docs/TRACKING.md)."""
        return {"config_hash": self.config_hash, "setting": self.setting, "seed": self.seed, "label": self.label}


# --------------------------------------------------------------------------- loading
def _fail(where: str, key: str, expected: str, value: Any) -> P2MInputError:
    return P2MInputError(f"{where}: key '{key}' expects {expected}, got {value!r}")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _grid_blocks(where: str, raw: Any) -> tuple[dict[str, list], ...]:
    blocks = raw if isinstance(raw, list) else [raw]
    if not blocks or raw is None:
        raise _fail(where, "grid", "a non-empty mapping of dotted config keys to lists of values", raw)
    checked = []
    for i, block in enumerate(blocks):
        key_where = "grid" if not isinstance(raw, list) else f"grid[{i}]"
        if not isinstance(block, dict) or not block:
            raise _fail(where, key_where, "a non-empty mapping of dotted config keys to lists of values", block)
        for key, values in block.items():
            if not isinstance(key, str) or not key or any(not part for part in key.split(".")):
                raise _fail(where, key_where, "dotted config keys such as pseudo.k_scheme", key)
            if not isinstance(values, list) or not values:
                raise _fail(where, f"{key_where}.{key}", "a non-empty list of values", values)
        checked.append(dict(block))
    return tuple(checked)


def load_spec(path: PathLike) -> SweepSpec:
    """Read a spec and check its own fields (the configs are checked by :func:`expand_trials`)."""
    path = Path(path).resolve()
    raw = load_yaml(path, what="sweep spec")
    if not isinstance(raw, dict):
        raise P2MInputError(f"sweep spec {path}: top level must be a mapping, got {type(raw).__name__}")
    return spec_from_mapping(raw, f"sweep spec {path}", path.parent, path)


def spec_from_mapping(raw: dict[str, Any], where: str, base_dir: Path, path: Path | None = None) -> SweepSpec:
    """Check a spec's fields, given as a mapping (a file's, or the command line's ``--grid`` flags).

    ``where`` names the spec in every error; ``base`` is resolved against ``base_dir``; ``path``
    is the file it came from (``None`` for the command line), whose stem is the default name.
    """
    for key in raw:
        if key not in SPEC_FIELDS:
            raise P2MInputError(f"{where}: unknown key '{key}' (value {raw[key]!r}); a spec accepts: {', '.join(SPEC_FIELDS)}")
    for key in ("base", "grid"):
        if key not in raw:
            raise P2MInputError(f"{where}: missing key '{key}'")
    for key in ("name", "description", "paper_table", "base", "stage", "split", "mlflow_experiment"):
        if key in raw and not isinstance(raw[key], str):
            raise _fail(where, key, "a string", raw[key])
    name = raw.get("name", path.stem if path is not None else "")
    if not name:
        raise _fail(where, "name", "a non-empty string", name)

    stage = raw.get("stage", "pseudo")
    if stage not in STAGES:
        raise _fail(where, "stage", f"one of {', '.join(STAGES)}", stage)
    split = raw.get("split", "val")
    if split not in SPLITS:
        raise _fail(where, "split", " or ".join(repr(s) for s in SPLITS), split)

    base = base_dir / raw["base"]
    if not base.is_file():
        raise _fail(where, "base", f"an existing config file (relative to {base_dir})", raw["base"])
    fixed = raw.get("set", {}) or {}
    if not isinstance(fixed, dict) or not all(isinstance(k, str) and k for k in fixed):
        raise _fail(where, "set", "a mapping of dotted config keys to values", fixed)

    seeds = raw.get("seeds", [0])
    if not isinstance(seeds, list) or not seeds or not all(_is_int(s) and s >= 0 for s in seeds) or len(set(seeds)) != len(seeds):
        raise _fail(where, "seeds", "a non-empty list of distinct non-negative integers", seeds)
    seed_keys = raw.get("seed_keys", list(DEFAULT_SEED_KEYS[stage]))
    if not isinstance(seed_keys, list) or not all(isinstance(k, str) and k for k in seed_keys):
        raise _fail(where, "seed_keys", "a list of dotted config keys", seed_keys)

    res = raw.get("resources", {}) or {}
    if not isinstance(res, dict) or set(res) - {"cpu", "gpu"}:
        raise _fail(where, "resources", "a mapping with cpu and/or gpu", res)
    cpu, gpu = res.get("cpu", 1), res.get("gpu", 0)
    if not _is_number(cpu) or cpu <= 0:
        raise _fail(where, "resources.cpu", "a number > 0 (use 0.01 for a trial that barely computes)", cpu)
    if not _is_number(gpu) or gpu < 0:
        raise _fail(where, "resources.gpu", "a number >= 0", gpu)

    experiment = raw.get("mlflow_experiment", "p2m-" + stage)
    if not experiment:
        raise _fail(where, "mlflow_experiment", "a non-empty string", experiment)
    grid = _grid_blocks(where, raw["grid"])
    for key in itertools.chain(*grid):
        if key in seed_keys:
            raise _fail(where, f"grid.{key}", "a key that is not also a seed key (seeds are written there)", key)
    spec = SweepSpec(
        path=path, name=name, description=raw.get("description", ""), paper_table=raw.get("paper_table", ""),
        base=base.resolve(), stage=stage, split=split, fixed=dict(fixed), grid=grid, seeds=tuple(seeds),
        seed_keys=tuple(seed_keys), resources=Resources(float(cpu), float(gpu)), mlflow_experiment=experiment,
        raw=raw, metrics=_metrics(where, raw.get("metrics")), decimals=_decimals(where, raw.get("decimals")),
    )
    return replace(spec, baseline=_baseline(where, raw.get("baseline"), spec))


def _metrics(where: str, raw: Any) -> tuple[str, ...]:
    """``metrics:``: the table's columns, metric names as the trial runs log them."""
    if raw is None:
        return ()
    if not isinstance(raw, list) or not raw or not all(isinstance(m, str) and m for m in raw) or len(set(raw)) != len(raw):
        raise _fail(where, "metrics", "a non-empty list of distinct metric names (e.g. [PQ, PQ_th, mIoU])", raw)
    return tuple(raw)


def _decimals(where: str, raw: Any) -> dict[str, int]:
    """``decimals:``: per metric, how many decimals the table prints."""
    if raw is None:
        return {}
    if not isinstance(raw, dict) or not all(isinstance(k, str) and k for k in raw):
        raise _fail(where, "decimals", "a mapping of metric names to decimals (e.g. {PQ: 2})", raw)
    for metric, places in raw.items():
        if not _is_int(places) or not 0 <= places <= MAX_DECIMALS:
            raise _fail(where, f"decimals.{metric}", f"an integer from 0 to {MAX_DECIMALS}", places)
    return dict(raw)


def _same_value(a: Any, b: Any) -> bool:
    """Grid values compared as YAML gives them: ``1`` is ``1.0``, lists element-wise."""
    return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True) or (_is_number(a) and _is_number(b) and a == b)


def _baseline(where: str, raw: Any, spec: SweepSpec) -> dict[str, Any]:
    """``baseline:``: grid keys and values naming exactly one grid point (empty: the first)."""
    if raw is None:
        return {}
    keys = spec.grid_keys
    if not isinstance(raw, dict) or not raw or set(raw) - set(keys):
        raise _fail(where, "baseline", f"a mapping of grid keys ({', '.join(keys)}) to one of their values", raw)
    matches = [p for p in spec.settings() if all(k in p and _same_value(p[k], v) for k, v in raw.items())]
    if len(matches) != 1:
        found = "no grid point" if not matches else f"{len(matches)} grid points ({'; '.join(map(json.dumps, matches[:4]))})"
        raise _fail(where, "baseline", f"grid values naming exactly one grid point, but it names {found}", raw)
    return matches[0]


# --------------------------------------------------------------------------- trials
def _short_keys(keys: Sequence[str]) -> dict[str, str]:
    """Labels for grid keys: the last dotted component, unless two keys share it."""
    last = [k.rsplit(".", 1)[-1] for k in keys]
    return {k: (s if last.count(s) == 1 else k) for k, s in zip(keys, last)}


def _format_value(value: Any) -> str:
    if isinstance(value, list):
        return "+".join(_format_value(v) for v in value) or "[]"
    return json.dumps(value) if not isinstance(value, str) else value


def setting_label(setting: dict[str, Any], short: dict[str, str]) -> str:
    return ", ".join(f"{short[k]}={_format_value(v)}" for k, v in setting.items())


def expand_trials(spec: SweepSpec, overrides: Sequence[str] = (), launch_dir: PathLike | None = None) -> list[Trial]:
    """Every trial of the sweep (grid order, then seeds), each config built and checked.

    ``overrides`` are command-line ``--set KEY=VALUE`` strings for the base config of every
    trial; they may not touch a grid or seed key (that would silently collapse the grid).
    Relative paths are made absolute against ``launch_dir`` (default: the current directory);
    inside a Ray job a relative ``data.root`` is refused, since it would point into the job's
    temporary copy of the working directory.
    """
    launch = Path(launch_dir if launch_dir is not None else os.getcwd()).resolve()
    where = spec.where
    protected = set(spec.grid_keys) | set(spec.seed_keys)
    for text in overrides:
        key = ".".join(parse_override(text)[0])
        if key in protected:
            raise P2MInputError(f"--set {text!r}: '{key}' is a grid or seed key of {where}; edit the spec instead")
    sources: dict[str, str] = {}
    base_raw = load_raw(spec.base, sources)
    base_raw = apply_values(base_raw, spec.fixed, sources, f"{where}, key 'set'")
    base_raw = apply_overrides(base_raw, list(overrides), sources)
    if spec.stage == "pseudo":
        base_raw = apply_values(base_raw, {"ablation.split": spec.split}, sources, f"{where}, key 'split'")
    elif spec.split != "val":  # a training run evaluates on val as it goes, and on this split at the end
        base_raw = apply_values(base_raw, {"train.test_split": spec.split}, sources, f"{where}, key 'split'")

    short = _short_keys(spec.grid_keys)
    trials: list[Trial] = []
    seen: dict[str, str] = {}
    for setting in spec.settings():
        label = setting_label(setting, short)
        for seed in spec.seeds:
            trial_sources = dict(sources)
            raw = apply_values(copy.deepcopy(base_raw), setting, trial_sources, f"{where}, key 'grid' ({label})")
            raw = apply_values(raw, {k: seed for k in spec.seed_keys}, trial_sources, f"{where}, key 'seeds' ({seed})")
            cfg = from_dict(raw, trial_sources)
            refuse_relative_data_root(cfg, where)
            cfg = absolute_paths(cfg, launch)
            if spec.stage == "pseudo":
                check_pseudo_config(cfg, f"{where} ({label})")
            elif spec.stage == "train":  # each trial's starting weights (check_training_data opens the data once)
                try:
                    check_pretrained(cfg.model.pretrained, cfg.model.backbone, cfg.model.width)
                except P2MInputError as exc:
                    raise P2MInputError(f"{where} ({label}): {exc}") from None
            config_hash = stage_hash(cfg, spec.stage)
            if config_hash in seen:
                raise P2MInputError(
                    f"{where}: settings '{seen[config_hash]}' and '{label} seed={seed}' compute the same thing "
                    f"(config hash {config_hash}); remove one from the grid"
                )
            seen[config_hash] = f"{label} seed={seed}"
            trials.append(Trial(len(trials), label, dict(setting), seed, cfg, config_hash))
    try:
        if spec.stage == "train":
            check_training_data(trials[0].config)
        else:
            require_split(trials[0].config.data, spec.split)
    except P2MInputError as exc:
        raise P2MInputError(f"{where}: {exc}") from None
    return trials


def sweep_hash(spec: SweepSpec, trials: Sequence[Trial]) -> str:
    """16 hex digits over the spec's name, stage and its trials' hashes, in order."""
    payload = {"spec": spec.name, "stage": spec.stage, "trials": [t.config_hash for t in trials]}
    return hashlib.sha256(json.dumps(payload, separators=(",", ":")).encode()).hexdigest()[:16]
