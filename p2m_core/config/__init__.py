"""Typed experiment configuration: YAML files with ``_base_`` inheritance and ``--set`` overrides.

A config is a tree of dataclasses (:class:`Config`). It is built from YAML in three steps:

1. :func:`load_raw` reads a file and, recursively, the files named in its ``_base_`` key
   (a path or a list of paths, relative to the file), merging child over base;
2. ``--set section.key=value`` overrides are applied (values are parsed as YAML, so
   ``--set train.lr=2e-4`` gives a float and ``--set pseudo.maps=[semantic]`` a list);
3. :func:`from_dict` builds the dataclasses, rejecting unknown keys and wrong types with
   the file (or ``--set``), the dotted key and the value in the message.

This package is the one source of truth for the allowed values of every choice
(:mod:`~p2m_core.config.choices`: the ``Literal`` aliases and their tuples, e.g.
:data:`K_SCHEMES`), for the defaults that code shares with the config
(:mod:`~p2m_core.config.defaults`), for range checks (a section's ``invalid_fields``, in
:mod:`~p2m_core.config.sections`), and for what a run's hash covers
(:mod:`~p2m_core.config.hashing`: :data:`STAGE_KEYS`, :func:`stage_hash`; docs/TRACKING.md, "The
config hash"). :func:`resolve` turns a config into the flat dotted dict logged as MLflow params.
Every public name is importable from here; the modules say where each lives.
"""

from __future__ import annotations

from types import ModuleType

from p2m_core.config.choices import *  # noqa: F403  (every Literal alias and its tuple of values)
from p2m_core.config.defaults import SINKHORN_EPSILON, SINKHORN_ITERS, SINKHORN_MAX_ITERS, SINKHORN_TOL
from p2m_core.config.hashing import (
    HASH_VERSION,
    STAGE_KEYS,
    STAGES,
    ResolvedConfig,
    flatten,
    resolve,
    stage_hash,
    stage_keys,
    to_dict,
)
from p2m_core.config.loading import (
    RENAMED_KEYS,
    add_config_arguments,
    apply_overrides,
    apply_values,
    dump_yaml,
    from_dict,
    load_config,
    load_raw,
    parse_override,
    parse_value,
    save_config,
)
from p2m_core.config.sections import (
    AblationConfig,
    Config,
    CorruptionConfig,
    DataConfig,
    InferenceConfig,
    LossConfig,
    ModelConfig,
    PseudoConfig,
    SplitConfig,
    SyntheticConfig,
    TrackingConfig,
    TrainConfig,
    coco_layout,
)

__all__ = sorted(
    name for name, value in globals().items()
    if not name.startswith("_") and not isinstance(value, ModuleType) and name not in ("annotations", "ModuleType")
)
