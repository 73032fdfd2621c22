"""The backbone's starting weights: what ``model.pretrained`` accepts and where named weights come from.

``model.pretrained`` takes one of

``""``
    random initialisation. Only when asked for: the backbone's batch norm is frozen
    (:class:`~p2m_core.model.backbone.FrozenBatchNorm2d`), so its statistics stay at their
    initial values (mean 0, variance 1) for the whole run, and building such a model logs a
    WARNING. The tiny CPU preset (``experiments/presets/synthetic_tiny.yaml``) asks for it.
``torchvision`` (the default of :class:`~p2m_core.config.ModelConfig`)
    torchvision's default ImageNet weights for ``model.backbone`` (:data:`DEFAULT_VERSION`).
``torchvision:<arch>`` or ``torchvision:<arch>.<version>``
    a name from :data:`TORCHVISION_WEIGHTS`, e.g. ``torchvision:resnet50`` (torchvision's
    default, ``IMAGENET1K_V2``) or ``torchvision:resnet50.IMAGENET1K_V1``; ``<arch>`` must be
    ``model.backbone``.
any other string
    a local file holding a state dict in torchvision's format
    (:func:`~p2m_core.model.backbone.load_pretrained`).

Why the default is ``torchvision`` rather than ``""``: the paper and the release start from
ImageNet weights, and a backbone whose frozen batch norm holds random statistics trains, but as
a different and weaker network, with nothing to show for it. So random initialisation has to be
asked for, and a config that names nothing gets the paper's start. The default follows
``model.backbone`` (``--set model.backbone=resnet101`` needs no second override), and it is
only resolved when a network is built with its starting weights
(:class:`~p2m_core.model.point2mask.Point2Mask`; rebuilding one from a checkpoint skips it), so
loading, checking and hashing configs never reads or downloads anything. Tests stay offline
because every network they build comes from ``synthetic_tiny.yaml``, which sets ``""``.

A name resolves to a file in the weights cache, :func:`weights_dir`: ``$P2M_WEIGHTS_DIR`` when
set, else torch's hub cache ``$TORCH_HOME/hub/checkpoints`` (``~/.cache/torch/hub/checkpoints``
by default), where ``torchvision.models.resnet50(weights=...)`` keeps the same files under the
same names, so a torchvision user's copies are reused. A cached file is checked against the
SHA-256 prefix torchvision publishes in its file name (``resnet50-11ad3fa6.pth``: the digest
starts with ``11ad3fa6``) before use; one that fails is refused with its path, never replaced
silently. A missing file is downloaded to a temporary file in the cache folder, checked, then
renamed into place (so concurrent workers and interrupted downloads never leave a partial file
under the real name). Without internet the download fails with a
:class:`~p2m_core.errors.P2MInputError` that names ``model.pretrained``, the cache folder and the
command that fetches the file by hand. Named weights are torchvision's networks, so they need
``model.width`` 64.

Pre-fetching, e.g. for nodes without internet (then copy the file into their cache folder, or
point ``P2M_WEIGHTS_DIR`` at storage they share)::

    python -m p2m_core.model.pretrained                       # the cache folder and every name
    python -m p2m_core.model.pretrained --download torchvision:resnet50 [--dir DIR]
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import logging
import os
import re
import sys
import tempfile
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from p2m_core.errors import P2MInputError

if TYPE_CHECKING:
    from torch import nn

__all__ = [
    "DEFAULT_VERSION",
    "TORCHVISION_WEIGHTS",
    "NamedWeights",
    "check_pretrained",
    "fetch",
    "init_backbone",
    "is_weights_name",
    "resolve_pretrained",
    "weights_dir",
]

log = logging.getLogger(__name__)

PREFIX = "torchvision"
TORCHVISION_WIDTH = 64
_HASH_IN_NAME = re.compile(r"-([0-9a-f]{8,})\.")  # torch.hub's rule: <name>-<sha256 prefix>.<ext>


@dataclass(frozen=True)
class NamedWeights:
    """One published weights file: ``arch`` (``model.backbone``), torchvision's version name and
    its download URL, whose file name carries the first hex digits of the file's SHA-256."""

    arch: str
    version: str
    url: str

    @property
    def name(self) -> str:
        return f"{PREFIX}:{self.arch}.{self.version}"

    @property
    def file_name(self) -> str:
        return self.url.rsplit("/", 1)[-1]

    @property
    def sha256_prefix(self) -> str:
        match = _HASH_IN_NAME.search(self.file_name)
        if match is None:
            raise ValueError(f"{self.url}: the file name carries no SHA-256 prefix (<name>-<hex>.pth)")
        return match.group(1)


def _table(entries: Sequence[NamedWeights], defaults: Mapping[str, str]) -> dict[str, NamedWeights]:
    """Every entry under its full name, plus ``torchvision:<arch>`` for each arch's default version."""
    table = {w.name: w for w in entries}
    for arch, version in defaults.items():
        table[f"{PREFIX}:{arch}"] = table[f"{PREFIX}:{arch}.{version}"]
    return table


#: torchvision's default weights per architecture (its ``ResNet*_Weights.DEFAULT``): the
#: improved-recipe V2 where torchvision published one; ResNet-18 has only V1.
DEFAULT_VERSION: dict[str, str] = {"resnet18": "IMAGENET1K_V1", "resnet50": "IMAGENET1K_V2", "resnet101": "IMAGENET1K_V2"}

#: The names ``model.pretrained`` knows, with torchvision's URLs exactly as it publishes them
#: (``torchvision.models.ResNet*_Weights``). The release's ResNet-50 configs name
#: ``resnet50-11ad3fa6.pth``, i.e. ``torchvision:resnet50`` (IMAGENET1K_V2). Its ResNet-101 configs
#: name ``resnet101-b641f3a9.pth``, an earlier upload of the V2 recipe from before torchvision
#: published IMAGENET1K_V2 (``resnet101-cd907fc2.pth``); it is not listed here (give it as a
#: local file).
TORCHVISION_WEIGHTS: dict[str, NamedWeights] = _table(
    [
        NamedWeights("resnet18", "IMAGENET1K_V1", "https://download.pytorch.org/models/resnet18-f37072fd.pth"),
        NamedWeights("resnet50", "IMAGENET1K_V1", "https://download.pytorch.org/models/resnet50-0676ba61.pth"),
        NamedWeights("resnet50", "IMAGENET1K_V2", "https://download.pytorch.org/models/resnet50-11ad3fa6.pth"),
        NamedWeights("resnet101", "IMAGENET1K_V1", "https://download.pytorch.org/models/resnet101-63fe2227.pth"),
        NamedWeights("resnet101", "IMAGENET1K_V2", "https://download.pytorch.org/models/resnet101-cd907fc2.pth"),
    ],
    DEFAULT_VERSION,
)


def is_weights_name(value: str) -> bool:
    """True for ``torchvision`` and ``torchvision:...`` (a name, not a path)."""
    return value == PREFIX or value.startswith(PREFIX + ":")


def weights_dir() -> Path:
    """The weights cache: ``$P2M_WEIGHTS_DIR``, else ``torch.hub.get_dir()/checkpoints``."""
    own = os.environ.get("P2M_WEIGHTS_DIR", "")
    if own:
        return Path(own).expanduser()
    import torch.hub

    return Path(torch.hub.get_dir()) / "checkpoints"


def _known(registry: Mapping[str, NamedWeights]) -> str:
    return ", ".join(sorted(registry))


def lookup(
    value: str, backbone: str, width: int, registry: Mapping[str, NamedWeights] | None = None
) -> NamedWeights:
    """The entry a name stands for, checked against ``model.backbone`` and ``model.width``."""
    registry = TORCHVISION_WEIGHTS if registry is None else registry
    key = f"{PREFIX}:{backbone}" if value == PREFIX else value
    entry = registry.get(key)
    if entry is None:
        raise P2MInputError(f"model.pretrained={value!r} is not a known name; known: {PREFIX} "
                            f"(the default weights of model.backbone), {_known(registry)}")  # fmt: skip
    if entry.arch != backbone:
        raise P2MInputError(
            f"model.pretrained={value!r} holds {entry.arch} weights but model.backbone is {backbone!r}; "
            f"set model.pretrained to {PREFIX}:{backbone} (or {PREFIX}, the default weights of model.backbone)"
        )
    if width != TORCHVISION_WIDTH:
        raise P2MInputError(
            f"model.pretrained={value!r} is torchvision's {entry.arch}, whose first stage has "
            f"{TORCHVISION_WIDTH} channels, but model.width is {width}; ImageNet weights only fit "
            f"model.width={TORCHVISION_WIDTH} (set model.pretrained='' for a randomly initialised narrow network)"
        )
    return entry


def check_pretrained(value: str, backbone: str, width: int, registry: Mapping[str, NamedWeights] | None = None) -> None:
    """Refuse a ``model.pretrained`` that cannot work, without reading or downloading weights:
    an unknown name, one for another backbone or width, a URL, a local file that does not exist.
    For launchers, so a bad value fails before workers start."""
    if not value:
        return
    if is_weights_name(value):
        lookup(value, backbone, width, registry)
        return
    if "://" in value:
        known = [n for n, w in (TORCHVISION_WEIGHTS if registry is None else registry).items() if w.url == value]
        hint = f" (this URL is {min(known, key=len)})" if known else ""
        raise P2MInputError(
            f"model.pretrained={value!r}: a URL is not accepted; give a name such as {PREFIX}:{backbone}{hint} "
            "or a local file"
        )
    if not Path(value).is_file():
        raise P2MInputError(f"model.pretrained={value!r}: no such file")


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _fetch_commands(entry: NamedWeights, directory: Path) -> str:
    return (f"`curl -L --create-dirs -o {directory / entry.file_name} {entry.url}`, or "
            f"`python -m p2m_core.model.pretrained --download {entry.name} --dir {directory}`")  # fmt: skip


def fetch(entry: NamedWeights, directory: Path, timeout: float = 60.0) -> Path:
    """Download ``entry`` into ``directory`` and return its path; raises :class:`OSError` (URL
    errors included) or :class:`http.client.HTTPException` when it cannot be fetched, :class:`P2MInputError` when the downloaded bytes
    fail the checksum. Written to a temporary file beside the target, checked, then renamed."""
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / entry.file_name
    tmp = tempfile.NamedTemporaryFile(dir=directory, prefix=f".{entry.file_name}.", suffix=".partial", delete=False)
    try:
        digest = hashlib.sha256()
        log.info("downloading %s to %s", entry.url, target)
        with tmp, urllib.request.urlopen(entry.url, timeout=timeout) as response:
            for chunk in iter(lambda: response.read(1 << 20), b""):
                digest.update(chunk)
                tmp.write(chunk)
        if not digest.hexdigest().startswith(entry.sha256_prefix):
            raise P2MInputError(
                f"{entry.name}: the file downloaded from {entry.url} has SHA-256 {digest.hexdigest()[:16]}..., "
                f"not {entry.sha256_prefix}...; it was not kept"
            )
        os.replace(tmp.name, target)
    finally:
        Path(tmp.name).unlink(missing_ok=True)
    return target


def resolve_pretrained(
    value: str,
    backbone: str,
    width: int,
    registry: Mapping[str, NamedWeights] | None = None,
    cache_dir: str | Path | None = None,
    timeout: float = 60.0,
) -> Path | None:
    """The local file ``model.pretrained`` stands for (module docstring), or None for ``""``.

    A name is looked up in ``registry`` (default :data:`TORCHVISION_WEIGHTS`), found in
    ``cache_dir`` (default :func:`weights_dir`) and checked, or downloaded there. Every failure
    is a :class:`P2MInputError` naming ``model.pretrained``.
    """
    check_pretrained(value, backbone, width, registry)
    if not value:
        return None
    if not is_weights_name(value):
        return Path(value)
    entry = lookup(value, backbone, width, registry)
    directory = Path(cache_dir) if cache_dir is not None else weights_dir()
    target = directory / entry.file_name
    if target.is_file():
        digest = file_sha256(target)
        if not digest.startswith(entry.sha256_prefix):
            raise P2MInputError(
                f"model.pretrained={value!r}: the cached file {target} is not {entry.url}: its SHA-256 is "
                f"{digest[:16]}..., not {entry.sha256_prefix}... (a partial or damaged copy?); delete it to "
                f"download it again, or fetch it by hand: {_fetch_commands(entry, directory)}"
            )
        return target
    try:
        return fetch(entry, directory, timeout)
    except P2MInputError as exc:  # the checksum
        raise P2MInputError(f"model.pretrained={value!r}: {exc}") from None
    except (OSError, http.client.HTTPException) as exc:  # no network, a refused or cut connection, an unwritable folder
        raise P2MInputError(
            f"model.pretrained={value!r}: {entry.file_name} is not in the weights cache {directory} and "
            f"downloading {entry.url} failed ({exc}). Fetch it by hand on a machine with internet and "
            f"copy it into {directory}: {_fetch_commands(entry, directory)}. Set P2M_WEIGHTS_DIR to use "
            "another cache folder, or set model.pretrained to a local file"
        ) from exc


def init_backbone(
    backbone: nn.Module,
    value: str,
    backbone_name: str,
    registry: Mapping[str, NamedWeights] | None = None,
    cache_dir: str | Path | None = None,
) -> Path | None:
    """Load ``model.pretrained`` (``value``) into ``backbone`` (a :class:`~p2m_core.model.backbone.ResNet`
    built for ``backbone_name``); return the file it came from, None for random initialisation,
    which logs a WARNING when the backbone's batch norm is frozen."""
    # Here, not at the top: the sweep driver checks ``model.pretrained`` with this module and
    # needs no torch (importing it costs the driver about 1 s at start and more at exit).
    from p2m_core.model.backbone import FrozenBatchNorm2d, load_pretrained

    path = resolve_pretrained(value, backbone_name, backbone.width, registry, cache_dir)
    if path is None:
        if any(isinstance(m, FrozenBatchNorm2d) for m in backbone.modules()):
            log.warning(
                "model.pretrained is empty: the %s backbone starts from random weights, and its batch norm is "
                "frozen, so it normalises with random statistics (mean 0, variance 1) for the whole run; name "
                "ImageNet weights (e.g. model.pretrained=%s) unless this is a small test network",
                backbone_name, PREFIX,
            )  # fmt: skip
        return None
    load_pretrained(backbone, path)
    log.info("backbone %s initialised from %s (model.pretrained=%s)", backbone_name, path, value)
    return path


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m p2m_core.model.pretrained",
        description="List the named backbone weights and the cache folder, or download them (checked) into it.",
    )
    parser.add_argument("--download", nargs="+", metavar="NAME", default=[],
                        help="names to fetch, e.g. torchvision:resnet50 (torchvision:<arch>[.<version>])")  # fmt: skip
    parser.add_argument("--dir", default=None, help="cache folder (default: $P2M_WEIGHTS_DIR, else torch's hub cache)")
    args = parser.parse_args(argv)
    directory = Path(args.dir) if args.dir else weights_dir()
    try:
        if not args.download:
            print(f"cache: {directory}")
            for name, entry in sorted(TORCHVISION_WEIGHTS.items()):
                state = "cached" if (directory / entry.file_name).is_file() else "missing"
                print(f"{name:36s} {entry.file_name:24s} {state:8s} {entry.url}")
            return 0
        for name in args.download:
            entry = TORCHVISION_WEIGHTS.get(name)
            if entry is None:
                raise P2MInputError(f"--download {name!r}: not a known name; known: {_known(TORCHVISION_WEIGHTS)}")
            print(resolve_pretrained(name, entry.arch, TORCHVISION_WIDTH, cache_dir=directory))
    except P2MInputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    sys.exit(main())
