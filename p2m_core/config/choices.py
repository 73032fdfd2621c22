"""The allowed values of every choice in the config, defined once.

Each choice is a ``Literal`` alias, which the sections annotate their fields with (so building a
config checks it), and a tuple of the same values, which the code that branches on the choice
imports. A new value is added here only.
"""

from __future__ import annotations

import typing
from typing import Literal

# Each choice is a Literal alias (used in the dataclasses, so loading checks it) and a tuple of
# the same values (imported by the code that branches on it). Define a new value here only.
MapName = Literal["semantic", "boundary_low", "boundary_high"]
KScheme = Literal["equal_division", "nearest_point", "nearest_centroid"]
Assignment = Literal["ot", "ot_exact", "mc"]
McDecode = Literal["argmin", "psps"]
SinkhornMode = Literal["reference", "converged"]
GeodesicBackend = Literal["scipy", "torch"]
KRanking = Literal["argmin", "likelihood"]
CentroidRule = Literal["paper", "release"]
WarmupAssignment = Literal["mc", "release"]
MapResize = Literal["area", "bilinear"]
PixelRoles = Literal["evidence", "argmax"]
OtPixels = Literal["transported", "all"]
SemanticTerm = Literal["partial", "lab", "rgb_tree"]
MapSourceKind = Literal["oracle", "oracle_corrupt", "image", "checkpoint"]
PointsFrom = Literal["sample", "file"]
SplitName = Literal["train", "val", "test"]
Device = Literal["auto", "cpu", "cuda"]
BackboneNorm = Literal["frozen_bn", "group_norm"]

MAP_NAMES: tuple[str, ...] = typing.get_args(MapName)
K_SCHEMES: tuple[str, ...] = typing.get_args(KScheme)
ASSIGNMENTS: tuple[str, ...] = typing.get_args(Assignment)
MC_DECODES: tuple[str, ...] = typing.get_args(McDecode)
SINKHORN_MODES: tuple[str, ...] = typing.get_args(SinkhornMode)
GEODESIC_BACKENDS: tuple[str, ...] = typing.get_args(GeodesicBackend)
K_RANKINGS: tuple[str, ...] = typing.get_args(KRanking)
CENTROID_RULES: tuple[str, ...] = typing.get_args(CentroidRule)
WARMUP_ASSIGNMENTS: tuple[str, ...] = typing.get_args(WarmupAssignment)
MAP_RESIZES: tuple[str, ...] = typing.get_args(MapResize)
PIXEL_ROLES: tuple[str, ...] = typing.get_args(PixelRoles)
OT_PIXELS: tuple[str, ...] = typing.get_args(OtPixels)
SEMANTIC_TERMS: tuple[str, ...] = typing.get_args(SemanticTerm)
SPLITS: tuple[str, ...] = typing.get_args(SplitName)

__all__ = [name for name in dir() if name[0].isupper() and name != "Literal"]
