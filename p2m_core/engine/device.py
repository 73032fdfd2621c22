"""Which torch device a command runs on, from the ``auto | cpu | cuda`` settings."""

from __future__ import annotations

import typing

from p2m_core.config import Device
from p2m_core.errors import P2MInputError

#: The device settings every command accepts (``train.device``, ``ablation.device``, ``--device``):
#: the config's :data:`~p2m_core.config.Device` choice, so a new one is added in one place.
DEVICES: tuple[str, ...] = typing.get_args(Device)


def resolve_device(name: str, key: str = "ablation.device") -> str:
    """``auto`` is CUDA when available, else CPU; ``cuda`` without CUDA is an error naming
    ``key`` (the setting or option the value came from), rather than a crash deep in torch."""
    import torch

    if name not in DEVICES:
        raise P2MInputError(f"{key} must be one of {', '.join(repr(d) for d in DEVICES)}, got {name!r}")
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise P2MInputError(f"{key} is 'cuda' but CUDA is not available on this machine")
    return name
