"""The rules a config value must meet, shared by the loader and the sections that check
themselves when built.

:func:`coerce` is the type rule (an annotation's type, a ``Literal`` choice, a list of either),
:func:`check_section` applies it and a section's ``invalid_fields`` range rules to a built
section. Both name the dotted key and the value; the loader adds the file or ``--set`` that
gave the value (:mod:`p2m_core.config.loading`).
"""

from __future__ import annotations

import dataclasses
import functools
import types
import typing
from typing import Any, Literal

from p2m_core.errors import P2MInputError


class InvalidField(P2MInputError):
    """A field of a built section that breaks one of the section's range rules; the loader
    catches it to name the file or ``--set`` that gave the value."""

    def __init__(self, where: str, prefix: str, name: str, expected: str, value: Any) -> None:
        super().__init__(f"{where}: key '{prefix}{name}' expects {expected}, got {value!r}")
        self.name, self.expected, self.value = name, expected, value


def check_section(section: Any, prefix: str) -> None:
    """Raise for the first field of ``section`` with a wrong type, a choice not allowed, or a
    value out of the section's range (``invalid_fields``); ``prefix`` is its dotted place in
    the config (e.g. ``"pseudo."``)."""
    where = type(section).__name__
    hints = _type_hints(type(section))
    for f in dataclasses.fields(section):
        if not dataclasses.is_dataclass(hints[f.name]):
            coerce(getattr(section, f.name), hints[f.name], prefix + f.name, where)
    for name, expected in section.invalid_fields():
        raise InvalidField(where, prefix, name, expected, getattr(section, name))


@functools.cache
def _type_hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def coerce(value: Any, tp: Any, key: str, where: str) -> Any:
    """Check ``value`` against the annotation ``tp``; return it (ints widen to floats).

    A section (a dataclass) is built by the loader, field by field, never through here.
    """
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)

    def fail(expected: str) -> P2MInputError:
        return P2MInputError(f"{where}: key '{key}' expects {expected}, got {value!r} ({type(value).__name__})")

    if origin is Literal:
        if value not in args:
            raise fail("one of " + ", ".join(repr(a) for a in args))
        return value
    if origin in (typing.Union, types.UnionType):
        for option in args:
            if option is type(None) and value is None:
                return None
        errors = []
        for option in args:
            if option is type(None):
                continue
            try:
                return coerce(value, option, key, where)
            except P2MInputError as exc:
                errors.append(str(exc))
        raise fail(" or ".join(_type_name(a) for a in args))
    if origin is list:
        if not isinstance(value, list):
            raise fail(f"a list of {_type_name(args[0])}")
        return [coerce(v, args[0], f"{key}[{i}]", where) for i, v in enumerate(value)]
    if tp is bool:
        if not isinstance(value, bool):
            raise fail("true or false")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise fail("an integer")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise fail("a number")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise fail("a string")
        return value
    raise TypeError(f"unsupported config annotation {tp!r} for {key}")

