"""Reading a config: YAML files with ``_base_`` inheritance, ``--set`` overrides, and the typed
build that rejects unknown keys, wrong types and values out of range, naming the file (or
``--set``), the dotted key and the value; and writing a config back to YAML."""

from __future__ import annotations

import copy
import dataclasses
import typing
from pathlib import Path
from typing import Any

import yaml

from p2m_core.config.checks import InvalidField, coerce
from p2m_core.config.hashing import to_dict
from p2m_core.config.sections import Config
from p2m_core.errors import P2MInputError
from p2m_core.io import PathLike, atomic_write_text, load_yaml

#: Keys an older config may still hold, and what replaced them (said instead of "unknown key").
RENAMED_KEYS: dict[str, str] = {
    "data.min_size": "use data.train_short_side: [low, high] (training) and data.test_short_side (val / test)",
    "data.max_size": "use data.train_short_side: [low, high] (training), data.test_short_side (val / test) "
                     "and data.long_side_max (the longer side's cap)",
    "train.seed": "the top-level 'seed' now seeds the initial weights, the data order and the augmentation",
}


def _merge(base: dict, child: dict, sources: dict[str, str], source: str, prefix: str = "") -> dict:
    """Deep-merge ``child`` into a copy of ``base``, recording which source set each leaf."""
    merged = copy.deepcopy(base)
    for key, value in child.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value, sources, source, dotted + ".")
        else:
            merged[key] = copy.deepcopy(value)
            _record_sources(value, dotted, sources, source)
    return merged


def _record_sources(value: Any, dotted: str, sources: dict[str, str], source: str) -> None:
    sources[dotted] = source
    if isinstance(value, dict):
        for key, sub in value.items():
            _record_sources(sub, f"{dotted}.{key}", sources, source)


def load_raw(path: PathLike, sources: dict[str, str] | None = None, _stack: tuple = ()) -> dict:
    """Read a YAML config and its ``_base_`` chain into one merged plain dict."""
    path = Path(path).resolve()
    if path in _stack:
        chain = " -> ".join(str(p) for p in _stack + (path,))
        raise P2MInputError(f"config {path}: circular _base_ chain: {chain}")
    sources = {} if sources is None else sources
    raw = load_yaml(path, what="config file")
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise P2MInputError(f"config {path}: top level must be a mapping, got {type(raw).__name__}")
    bases = raw.pop("_base_", [])
    if isinstance(bases, str):
        bases = [bases]
    if not isinstance(bases, list) or not all(isinstance(b, str) for b in bases):
        raise P2MInputError(f"config {path}: '_base_' must be a path or a list of paths, got {bases!r}")
    merged: dict = {}
    for base in bases:
        merged = _merge(merged, load_raw(path.parent / base, sources, _stack + (path,)), {}, "")
    return _merge(merged, raw, sources, f"config {path}")


def parse_override(text: str) -> tuple[list[str], Any]:
    """``'train.lr=2e-4'`` -> (['train', 'lr'], 0.0002); the value is parsed as YAML."""
    if "=" not in text:
        raise P2MInputError(f"--set {text!r}: expected KEY=VALUE, e.g. --set train.lr=2e-4")
    key, _, value_text = text.partition("=")
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise P2MInputError(f"--set {text!r}: invalid key {key!r}")
    return key.split("."), parse_value(value_text, f"--set {text!r}")


def parse_value(text: str, where: str) -> Any:
    """A command-line value as YAML (``0.5``, ``mc``, ``[semantic, boundary_low]``, ``true``);
    ``where`` names the flag in the error. The one rule for ``--set`` and ``--grid`` values."""
    try:
        value = yaml.safe_load(text) if text.strip() else ""
    except yaml.YAMLError as exc:
        raise P2MInputError(f"{where}: value {text!r} is not valid YAML") from exc
    # YAML 1.1 reads '2e-4' as a string; accept it as the float a user means.
    if isinstance(value, str):
        try:
            as_float = float(value)
        except ValueError:
            pass
        else:
            if any(c in value for c in "eE.") and value.strip().lower() not in ("inf", "nan"):
                value = as_float
    return value


def apply_values(raw: dict, values: dict[str, Any], sources: dict[str, str] | None, source: str) -> dict:
    """Set already-parsed values at dotted keys (a copy of ``raw``), recording ``source`` as
    where each came from, so a later type error names it (e.g. a sweep spec's grid)."""
    raw = copy.deepcopy(raw)
    for dotted, value in values.items():
        keys = dotted.split(".")
        if not dotted or any(not k for k in keys):
            raise P2MInputError(f"{source}: invalid key {dotted!r}")
        node = raw
        for key in keys[:-1]:
            child = node.setdefault(key, {})
            if not isinstance(child, dict):
                raise P2MInputError(f"{source}: key {dotted!r}: '{key}' is not a section")
            node = child
        node[keys[-1]] = copy.deepcopy(value)
        if sources is not None:
            _record_sources(value, dotted, sources, source)
    return raw


def apply_overrides(raw: dict, overrides: list[str], sources: dict[str, str] | None = None) -> dict:
    """Apply ``--set KEY=VALUE`` strings (values parsed as YAML, :func:`parse_override`)."""
    for text in overrides:
        keys, value = parse_override(text)
        raw = apply_values(raw, {".".join(keys): value}, sources, "--set")
    return raw


def _build(
    cls: type,
    raw: Any,
    prefix: str,
    where_for: Any,
    sources: dict[str, str] | None,
    fallback: str = "config",
    base: Any = None,
) -> Any:
    """Build ``cls`` from ``raw``; fields absent from ``raw`` keep their value in ``base``.

    ``base`` is the parent's default for this section, so a partial section such as
    ``data.train: {points: x}`` keeps the other defaults of ``data.train`` rather than the
    bare class defaults of :class:`SplitConfig`.
    """
    def source_of(dotted: str) -> str:
        if sources and dotted in sources:
            return sources[dotted]
        return fallback

    section = prefix.rstrip(".") or "<top level>"
    if not isinstance(raw, dict):
        raise P2MInputError(f"{source_of(prefix.rstrip('.'))}: '{section}' must be a mapping, got {raw!r}")
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    for key in raw:
        if key not in known:
            dotted = f"{prefix}{key}"
            if dotted in RENAMED_KEYS:
                raise P2MInputError(f"{source_of(dotted)}: key '{dotted}' (value {raw[key]!r}) is gone: {RENAMED_KEYS[dotted]}")
            raise P2MInputError(
                f"{source_of(dotted)}: unknown key '{dotted}' (value {raw[key]!r}); "
                f"'{section}' accepts: {', '.join(sorted(known))}"
            )
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name not in raw:
            continue
        dotted = f"{prefix}{f.name}"
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            default = getattr(base, f.name) if base is not None else _field_default(f)
            kwargs[f.name] = _build(tp, raw[f.name], dotted + ".", None, sources, source_of(dotted), default)
        else:
            kwargs[f.name] = coerce(raw[f.name], tp, dotted, source_of(dotted))
    def invalid(name: str, expected: str, value: Any) -> P2MInputError:
        dotted = f"{prefix}{name}"
        # A field left at its default may be invalid because of another one (a cross-field
        # rule): blame the source that set something in this section.
        given = [f"{prefix}{key}" for key in raw if sources and f"{prefix}{key}" in sources]
        where = source_of(dotted if (sources and dotted in sources) or not given else given[0])
        return P2MInputError(f"{where}: key '{dotted}' expects {expected}, got {value!r}")

    try:
        built = dataclasses.replace(base, **kwargs) if base is not None else cls(**kwargs)
    except InvalidField as exc:  # a section that checks itself when built (PseudoConfig)
        raise invalid(exc.name, exc.expected, exc.value) from None
    check = getattr(built, "invalid_fields", None)
    for name, expected in check() if check is not None else ():
        raise invalid(name, expected, getattr(built, name))
    return built


def _field_default(f: dataclasses.Field) -> Any:
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    if f.default is not dataclasses.MISSING:
        return copy.deepcopy(f.default)
    return None


def from_dict(raw: dict, sources: dict[str, str] | None = None, cls: type = Config) -> Any:
    """Build a typed config from a plain dict, rejecting unknown keys and wrong types."""
    return _build(cls, raw, "", None, sources)


def load_config(path: PathLike | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Load a YAML config (with its ``_base_`` chain) and apply ``--set`` overrides.

    >>> cfg = load_config(None, ["train.lr=2e-4"])
    >>> cfg.train.lr
    0.0002
    """
    sources: dict[str, str] = {}
    raw = load_raw(path, sources) if path is not None else {}
    raw = apply_overrides(raw, list(overrides), sources)
    return from_dict(raw, sources)



def dump_yaml(cfg: Config) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)


def save_config(cfg: Config, path: PathLike) -> Path:
    """Write the resolved config as YAML (atomically); loading it gives ``cfg`` back."""
    return atomic_write_text(path, dump_yaml(cfg))


def add_config_arguments(parser: Any, default_config: str | None = None) -> None:
    """Add ``--config PATH`` and repeatable ``--set KEY=VALUE`` to an argparse parser."""
    parser.add_argument("--config", default=default_config, help="experiment YAML (with optional _base_)")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config value, e.g. --set train.lr=2e-4 (repeatable)",
    )
