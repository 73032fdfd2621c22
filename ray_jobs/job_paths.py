"""Where a run's files and store live once its work leaves this process for Ray workers.

A Ray worker runs in a working directory of its own, on any node, and a ``ray job submit``
entrypoint runs in a temporary copy of the user's folder that Ray deletes when the job ends. So
at this edge, and only here, relative paths are made absolute against the launch directory,
paths that would land in a job's temporary copy are refused, and the tracking store of a job is
chosen. Every rule of that kind lives in this module, so that the training launcher, the sweep
planner and the trials cannot disagree about where something is.
"""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

from p2m_core.config import Config
from p2m_core.errors import P2MInputError
from p2m_core.model.pretrained import is_weights_name
from p2m_core.tracking.provenance import in_ray_job
from p2m_core.tracking.uri import resolve_tracking_uri, sqlite_path

#: Config keys holding paths, made absolute against the launch directory; a weights name in
#: ``model.pretrained`` (``torchvision...``) is not a path and is kept.
PATH_KEYS = ("data.root", "data.edge_model", "ablation.checkpoint", "model.pretrained")
#: The folder under ``tracking.output_dir`` that holds Ray's checkpoints unless
#: ``train.storage_path`` names one.
DEFAULT_STORAGE_FOLDER = "ray"


def is_uri(path: str) -> bool:
    """Whether a storage path names a remote filesystem (``s3://...``) rather than a folder."""
    return "://" in path


def absolute_paths(cfg: Config, launch_dir: Path) -> Config:
    """``cfg`` with :data:`PATH_KEYS` made absolute against ``launch_dir`` (an empty value stays
    empty: it means "none")."""
    for key in PATH_KEYS:
        section_name, field_name = key.split(".")
        section = getattr(cfg, section_name)
        value = getattr(section, field_name)
        if not value or Path(value).is_absolute() or (key == "model.pretrained" and is_weights_name(value)):
            continue
        section = replace(section, **{field_name: str((launch_dir / value).resolve())})
        cfg = replace(cfg, **{section_name: section})
    return cfg


def refuse_job_temporary(path: Path, what: str) -> None:
    """Inside a Ray job, refuse ``path`` when it lies in the job's temporary working directory."""
    if in_ray_job() and Path.cwd().resolve() in Path(path).resolve().parents:
        raise P2MInputError(f"{what} lies inside the Ray job's temporary working directory, which Ray deletes; use an absolute path outside it")


def refuse_relative_data_root(cfg: Config, where: str) -> None:
    """Inside a Ray job, refuse a relative ``data.root``: it would name a folder of the job's
    temporary copy, which holds no data (checked before :func:`absolute_paths` hides it)."""
    if in_ray_job() and not Path(cfg.data.root).is_absolute():
        raise P2MInputError(
            f"{where}: key 'data.root' is the relative path {cfg.data.root!r}, but this runs as a Ray job whose "
            "working directory is a temporary copy without data; pass --set data.root=/absolute/path"
        )


def job_tracking_uri(configured: str) -> str:
    """:func:`~p2m_core.tracking.uri.resolve_tracking_uri`, refusing inside a Ray job a store
    that would live in the job's temporary working directory."""
    if in_ray_job() and not configured and not os.environ.get("MLFLOW_TRACKING_URI"):
        raise P2MInputError(
            "this runs as a Ray job, whose working directory is a temporary copy that Ray deletes: the default "
            "sqlite store there would be lost; set MLFLOW_TRACKING_URI (e.g. the head's `mlflow server`) or "
            "--set tracking.tracking_uri=sqlite:////absolute/path/mlflow.db"
        )
    uri = resolve_tracking_uri(configured)
    path = sqlite_path(uri)
    if path is not None:
        refuse_job_temporary(path, f"tracking store {uri}")
    return uri


def output_root(cfg: Config, launch_dir: Path) -> Path:
    """``tracking.output_dir`` as an absolute folder (models, predictions, default checkpoints)."""
    root = Path(cfg.tracking.output_dir)
    root = root if root.is_absolute() else launch_dir / root
    refuse_job_temporary(root, f"tracking.output_dir {root}")
    return root


def checkpoint_storage(cfg: Config, launch_dir: Path) -> str:
    """Where Ray keeps a training run's checkpoints: ``train.storage_path`` (a folder, made
    absolute, or a pyarrow URI such as ``s3://...`` for multi-node clusters), by default
    ``<tracking.output_dir>/ray``."""
    storage = cfg.train.storage_path or str(output_root(cfg, launch_dir) / DEFAULT_STORAGE_FOLDER)
    if is_uri(storage):
        return storage
    storage = str((launch_dir / storage).resolve())
    refuse_job_temporary(Path(storage), f"train.storage_path {storage}")
    return storage
