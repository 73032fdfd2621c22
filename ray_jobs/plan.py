"""A sweep made ready to run: trials built and checked, and its place in MLflow.

:func:`plan_sweep` turns a spec into a :class:`SweepPlan` without touching MLflow or Ray (so bad
input fails first); :func:`open_in_mlflow` then creates the experiment, opens or reuses the
sweep's parent run, marks orphaned children KILLED and records which trials are already
FINISHED (docs/TRACKING.md, "Resume").
"""

from __future__ import annotations

import json
import os
import shlex
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from p2m_core.config import HASH_VERSION
from p2m_core.tracking import store
from p2m_core.tracking import tags as T
from p2m_core.tracking.claims import kill_orphaned_children
from p2m_core.tracking.datasets import log_dataset_inputs
from p2m_core.tracking.provenance import git_commit, source_tags
from p2m_core.tracking.table_layout import RECORD_KEY, layout_record
from p2m_core.tracking.training import training_splits
from p2m_core.tracking.uri import sqlite_path
from ray_jobs.job_paths import job_tracking_uri
from ray_jobs.spec import SweepSpec, Trial, expand_trials, load_spec, sweep_hash


@dataclass
class SweepPlan:
    """One spec, ready to run: its trials, where they are logged, and which are still to do."""

    spec: SweepSpec
    trials: list[Trial]
    sweep_hash: str
    tracking_uri: str
    overrides: tuple[str, ...] = ()
    experiment_id: str = ""
    parent_run_id: str = ""
    reused_parent: bool = False
    killed: int = 0
    done: dict[str, str] = field(default_factory=dict)

    @property
    def todo(self) -> list[Trial]:
        return [t for t in self.trials if t.config_hash not in self.done]


def sweep_tags(plan: SweepPlan) -> dict[str, str]:
    cfg = plan.trials[0].config
    spec = plan.spec
    return {
        **source_tags("ray_jobs.sweep"),
        T.SPEC: spec.name,
        T.PAPER_TABLE: spec.paper_table,
        T.STAGE: spec.stage,
        T.DATASET: f"{cfg.data.dataset}:{cfg.data.root}",
        T.SPLIT: spec.split,
        T.SOURCE: cfg.ablation.source,
        T.GRID_KEYS: json.dumps(spec.grid_keys),
        T.SEED_KEYS: json.dumps(list(spec.seed_keys)),
        T.GIT_COMMIT: git_commit(),
    }


def trials_record(plan: SweepPlan) -> dict[str, Any]:
    """The sweep's ``trials.json`` (docs/TRACKING.md): its trials in grid order and what its table
    shows (``table``: columns, baseline grid point, decimals), so the table needs only the store."""
    spec = plan.spec
    return {
        "format": T.TRIALS_FORMAT,
        "spec": spec.name,
        "paper_table": spec.paper_table,
        "grid_keys": spec.grid_keys,
        "seed_keys": list(spec.seed_keys),
        RECORD_KEY: layout_record(spec.metrics, spec.baseline or spec.settings()[0], spec.decimals),
        "trials": [t.record() for t in plan.trials],
    }


def plan_sweep(spec: str | SweepSpec, overrides: Sequence[str], seeds: Sequence[int] | None = None,
               experiment: str = "") -> SweepPlan:
    """Load (a path) or take (a spec built from ``--grid`` flags), expand and check one spec;
    choose its tracking store (no MLflow or Ray yet).

    ``seeds`` replaces the spec's seeds (a quick look with one seed is a different sweep);
    ``experiment`` its MLflow experiment (a second copy of a sweep, e.g. after a code change,
    to compare with ``analysis.compare``: in the same experiment nothing would be recomputed)."""
    if not isinstance(spec, SweepSpec):
        spec = load_spec(spec)
    if seeds is not None:
        spec = replace(spec, seeds=tuple(seeds))
    if experiment:
        spec = replace(spec, mlflow_experiment=experiment)
    trials = expand_trials(spec, overrides)
    uri = job_tracking_uri(trials[0].config.tracking.tracking_uri)
    return SweepPlan(spec, trials, sweep_hash(spec, trials), uri, tuple(overrides))


def open_in_mlflow(plan: SweepPlan) -> None:
    """Experiment, parent run (reused on resume), orphan clean-up and the finished hashes."""
    spec = plan.spec
    plan.experiment_id = store.ensure_experiment(plan.tracking_uri, spec.mlflow_experiment)
    plan.parent_run_id, plan.reused_parent = store.open_sweep_run(
        plan.tracking_uri, plan.experiment_id, plan.sweep_hash, sweep_tags(plan), sweep_run_name(plan)
    )
    store.describe_run(plan.tracking_uri, plan.parent_run_id, sweep_note(plan))
    # The splits every trial reads, as the sweep run's own dataset inputs: the runs table shows
    # a sweep's data on its (collapsed) parent row, not only on its trials.
    cfg = plan.trials[0].config
    log_dataset_inputs(store.client(plan.tracking_uri), plan.parent_run_id, cfg,
                       training_splits(cfg) if spec.stage == "train" else [cfg.ablation.split])
    store.log_files(
        plan.tracking_uri, plan.parent_run_id,
        {T.SPEC_ARTIFACT: _spec_text(plan), T.TRIALS_ARTIFACT: json.dumps(trials_record(plan), indent=2)},
    )
    plan.killed = kill_orphaned_children(plan.tracking_uri, plan.experiment_id, plan.parent_run_id)
    finished = store.finished_hashes(plan.tracking_uri, plan.experiment_id, spec.stage, HASH_VERSION)
    plan.done = {t.config_hash: finished[t.config_hash] for t in plan.trials if t.config_hash in finished}


def sweep_run_name(plan: SweepPlan) -> str:
    """The sweep run's name in the UI: spec, grid keys and seeds, and the sweep hash that tells
    two sweeps of one spec apart, e.g. ``table7: assignment x seeds 0,1 (1a2b3c4d)``."""
    keys = " x ".join(key.rsplit(".", 1)[-1] for key in plan.spec.grid_keys)
    seeds = ",".join(str(seed) for seed in plan.spec.seeds)
    return f"{plan.spec.name}: {keys} x seeds {seeds} ({plan.sweep_hash[:8]})"


def table_command(plan: SweepPlan) -> str:
    """The command that renders this sweep's table from the store."""
    spec = plan.spec
    return (f"python -m analysis.tables --table {shlex.quote(spec.name)} --experiment {shlex.quote(spec.mlflow_experiment)} "
            f"--tracking-uri {shlex.quote(plan.tracking_uri)} --format md")  # fmt: skip


def sweep_note(plan: SweepPlan) -> str:
    """The sweep run's description (tag ``mlflow.note.content``, Markdown, on the run's page in
    the UI): what the spec is for, what it varies, and how to get its table."""
    spec = plan.spec
    if spec.path is None:  # built from --grid flags: the spec.yaml artifact holds it
        shown = "--grid flags (artifact spec.yaml)"
    else:
        path = Path(spec.path)
        shown = os.path.relpath(path) if path.is_absolute() and not os.path.relpath(path).startswith("..") else str(path)
    settings = len(spec.settings())
    lines = [
        f"**{spec.name}**" + (f": {spec.description}" if spec.description else ""),
        "",
        f"- spec `{shown}`" + (f", paper table `{spec.paper_table}`" if spec.paper_table else "")
        + f"; stage `{spec.stage}`, split `{spec.split}`",
        f"- grid {', '.join(f'`{key}`' for key in spec.grid_keys)} ({settings} setting{'s' if settings != 1 else ''}) "
        f"x seeds {', '.join(str(seed) for seed in spec.seeds)}: {len(plan.trials)} trials",
        f"- its table: `{table_command(plan)}`; rendered when the sweep ends as the artifacts "
        f"`{T.TABLE_MD_ARTIFACT}` and `{T.TABLE_CSV_ARTIFACT}` of this run",
    ]
    if plan.overrides:
        lines.append("- overrides: " + ", ".join(f"`--set {item}`" for item in plan.overrides))
    return "\n".join(lines) + "\n"


def _spec_text(plan: SweepPlan) -> str:
    """The spec as loaded, with the command line's ``--set`` overrides (each trial's full
    resolved config is its own ``config.yaml`` artifact)."""
    lines = [f"# {plan.spec.where}", f"# --set overrides: {json.dumps(list(plan.overrides))}"]
    return "\n".join(lines) + "\n" + yaml.safe_dump(plan.spec.raw, sort_keys=False)


def is_new_store(uri: str) -> bool:
    path = sqlite_path(uri)
    return path is not None and not path.exists()
