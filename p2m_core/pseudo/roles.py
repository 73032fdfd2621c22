"""What each pixel is before any transport: stuff, transported to the thing points, or a point's
own pixel (steps 1-2 of :mod:`~p2m_core.pseudo.labels`).

Only thing-class pixels are transported: the paper transports pixels to the thing points, and a
stuff class is one segment per image, owned by its first stuff point. Every point keeps its own
pixel when ``pseudo.force_own_pixels`` asks, so that a labelled point is never lost to another.
The release decides the roles differently (``pseudo.pixel_roles``,
``pseudo.stuff_void_threshold``); both readings are here, one field apart.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from p2m_core.config import PseudoConfig
from p2m_core.errors import P2MInputError
from p2m_core.pseudo.ties import argmax_lowest


@dataclass
class PixelRoles:
    """What each pixel is, [B, N] each: ``transported`` (goes to the thing points), ``stuff``
    (labelled with ``stuff_label``, the owning stuff point), ``forced`` / ``forced_stuff`` (own
    pixels kept by a point, stuff points among them; all -1 / False when own pixels are not
    forced)."""

    transported: Tensor
    stuff: Tensor
    stuff_label: Tensor
    forced: Tensor
    forced_stuff: Tensor
    stuff_classes: Tensor  # [B, C] bool: classes with a stuff point


def pixel_roles(
    sem: Tensor, labels: Tensor, is_thing: Tensor, pmask: Tensor, own: Tensor, cfg: PseudoConfig,
    check_values: bool = True,
) -> PixelRoles:
    """Steps 1-2 of :mod:`~p2m_core.pseudo.labels`: each pixel's class, its role, and the own
    pixels, from ``sem [B, C, H, W]`` and the padded points (``labels``, ``is_thing``, ``pmask``
    and their flat pixels ``own``, all [B, M]).

    ``pixel_roles="evidence"``: the argmax over the classes with a point, nothing where they all
    have probability 0. ``"argmax"`` (release): the plain argmax over all C channels (lowest
    index on ties, so an all-zero pixel takes class 0); every pixel whose class has no stuff
    point is transported. Stuff pixels are void where their ``max P^s`` is below
    ``cfg.stuff_void_threshold``; they are never transported either way.
    """
    B, C, H, W = sem.shape
    N = H * W
    M = labels.shape[1]
    dev = sem.device
    index_m = torch.arange(M, device=dev).expand(B, M)
    thing_cls = _class_flags(labels, is_thing, C)
    stuff_cls = _class_flags(labels, pmask & ~is_thing, C)
    if check_values and bool((thing_cls & stuff_cls).any()):
        b, c = (thing_cls & stuff_cls).nonzero()[0].tolist()
        raise P2MInputError(f"points[{b}]: class {c} has both thing and stuff points")
    if not C:
        best, cls = sem.new_full((B, N), -math.inf), sem.new_zeros((B, N), dtype=torch.long)
    elif cfg.pixel_roles == "argmax":
        flat = sem.float().reshape(B, C, N)
        cls = argmax_lowest(flat)
        best = flat.gather(1, cls[:, None])[:, 0]
    else:
        present = thing_cls | stuff_cls
        scores = torch.where(present[:, :, None], sem.float().reshape(B, C, N), -math.inf)
        cls = argmax_lowest(scores)
        best = scores.gather(1, cls[:, None])[:, 0]
    stuff_role = stuff_cls.gather(1, cls) & (best > 0 if cfg.pixel_roles == "evidence" else True)
    if cfg.pixel_roles == "argmax":
        px_thing = ~stuff_role
    else:
        px_thing = thing_cls.gather(1, cls) & (best > 0)
    big = M * (N + 1)
    stuff_key = torch.where(pmask & ~is_thing, own * M + index_m, big)
    stuff_owner = torch.full((B, C + 1), big, dtype=torch.long, device=dev)
    stuff_owner = stuff_owner.scatter_reduce(1, torch.where(pmask & ~is_thing, labels, C), stuff_key, "amin")[:, :C]
    stuff_owner = torch.where(stuff_owner < big, stuff_owner % max(M, 1), -1)

    # own pixels: thing before stuff, then lowest index
    prio = torch.where(is_thing, index_m, index_m + M)
    winner = torch.full((B, N + 1), 2 * M, dtype=torch.long, device=dev)
    winner = winner.scatter_reduce(1, torch.where(pmask, own, N), torch.where(pmask, prio, 2 * M), "amin")[:, :N]
    if not cfg.force_own_pixels:
        winner = torch.full_like(winner, 2 * M)
    forced = torch.where(winner < 2 * M, winner % max(M, 1), -1)
    forced_thing = (forced >= 0) & (winner < M)
    forced_stuff = (forced >= 0) & (winner >= M)
    return PixelRoles(
        transported=(px_thing & ~forced_stuff) | forced_thing,
        stuff=stuff_role & (best >= cfg.stuff_void_threshold),
        stuff_label=stuff_owner.gather(1, cls) if C else cls,
        forced=forced,
        forced_stuff=forced_stuff,
        stuff_classes=stuff_cls,
    )


def _class_flags(labels: Tensor, which: Tensor, num_classes: int) -> Tensor:
    """[B, C] bool: classes with at least one point where ``which`` [B, M] holds."""
    B = labels.shape[0]
    flags = torch.zeros(B, num_classes + 1, dtype=torch.bool, device=labels.device)
    return flags.scatter(1, torch.where(which, labels, num_classes), True)[:, :num_classes]
