"""Map sources of the pseudo-label stage: task-oriented maps built from the ground truth.

Point2Mask's pseudo masks depend on three maps (paper Sec. 3.3.1): the semantic map ``P^s``,
the high-level boundary ``P^b_high`` and the low-level edge map ``P^b_low``. A trained model
supplies them during training; here they come from the ground truth instead, so the transport,
the capacities and the cost maps can be compared in minutes, without training, on maps of known
quality. Map sources (``ablation.source``; docs/METHOD.md, "The pseudo-label ablation stage"):

``oracle``
    ``P^s(p) = onehot(class(p))`` over the C contiguous classes
    (:meth:`CocoPanoptic.contiguous_ids`); void pixels get the zero vector by default
    (``ablation.void_semantic=zero``: no class evidence, so the L1 edge term into a void pixel is
    1, half of a class change; ``uniform`` gives ``1/C`` everywhere instead).
    ``P^b_high(p) = 1`` where the 8-neighbourhood of p holds another segment id (void counts as
    an id), else 0: the instance boundaries a perfect boundary head would predict.
    ``P^b_low`` = the same GT boundaries by default (``ablation.oracle_boundary_low=gt``); ``edges``
    uses the image's low-level edge map instead, ``none`` leaves it out.
``oracle_corrupt``
    The oracle maps degraded by ``ablation.corruption`` (:class:`~p2m_core.config.CorruptionConfig`),
    deterministically per (seed, image):
    ``P^s <- renorm(max(G_sigma_s * P^s + N(0, std^2), 0))`` (Gaussian blur over space, additive
    noise, clipped and renormalised to sum 1 over classes; an all-zero pixel stays zero), then
    a fraction ``boundary_drop`` of the boundary pixels set to 0 and the boundary maps blurred
    by ``G_sigma_b`` (the blur also lowers the peak, as a soft predicted boundary would).
``image``
    ``P^s`` from the ground truth as for ``oracle``; no GT boundary at all: ``P^b_low`` is the
    low-level edge map of the image (:func:`p2m_core.data.edges.low_level_edges`, Structured
    Edges when ``data.edge_model`` names a forest, else the classical LAB gradient) and
    ``P^b_high`` is absent (it needs a trained boundary head).
``checkpoint``
    Maps predicted by a frozen trained network (``ablation.checkpoint``, a
    :mod:`p2m_core.engine.checkpoint` file whose classes must be the dataset's categories):
    ``P^s`` is the softmax of its last semantic layer and ``P^b_high`` the sigmoid of its
    boundary head, both resized bilinearly to the mask grid as in training
    (:func:`p2m_core.model.task_maps.network_maps`); ``P^b_low`` is the image's low-level edge
    map, as for ``image``. The network runs batch by batch on the stage's device
    (:mod:`p2m_core.ablation.network`), on the images at their own size; here an image's maps
    only hold their shape and ``P^b_low`` until it fills them. This sweeps ``pseudo.*`` settings
    on the maps of a trained model.

Resolution: maps are built at the *mask* resolution ``h = ceil(H / s), w = ceil(W / s)`` with
``s = pseudo.mask_stride``. The GT id map is downsampled by nearest neighbour at block centres
(:func:`downsample_ids`); the edge map is max-pooled over each ``s x s`` block so a one-pixel
edge keeps its strength (:func:`max_pool`).
"""

from __future__ import annotations

import hashlib
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy.ndimage import gaussian_filter

from p2m_core.config import AblationConfig, CorruptionConfig
from p2m_core.errors import P2MInputError

#: The choices of ``ablation.void_semantic``, read from the config field's type so that they are
#: written once (:class:`~p2m_core.config.AblationConfig`).
VOID_SEMANTICS: tuple[str, ...] = typing.get_args(typing.get_type_hints(AblationConfig)["void_semantic"])

VOID = 0


def require_available(ablation: AblationConfig) -> None:
    """Fail before any data is read when the source cannot run: for ``checkpoint``, a model file
    that does not exist (a sweep checks every trial's config with this before Ray starts)."""
    if ablation.source == "checkpoint" and not Path(ablation.checkpoint).is_file():
        raise P2MInputError(f"key 'ablation.checkpoint': checkpoint not found: {ablation.checkpoint}")


# --------------------------------------------------------------------------- maps of one image
@dataclass
class ImageMaps:
    """The maps of one image at mask resolution (numpy, float32).

    semantic : [C, h, w] class probabilities (zero vector on void with ``void_semantic=zero``).
    boundary_high, boundary_low : [h, w] in [0, 1], or ``None`` when the source has none.
    embedding : [D, h, w] the manifold projector's vectors (``checkpoint`` source with a
        projector only), or ``None``.
    """

    semantic: np.ndarray
    boundary_high: np.ndarray | None
    boundary_low: np.ndarray | None
    embedding: np.ndarray | None = None


def mask_size(height: int, width: int, stride: int) -> tuple[int, int]:
    """Mask resolution of an ``height x width`` image: ``(ceil(H / s), ceil(W / s))``."""
    return -(-int(height) // stride), -(-int(width) // stride)


def block_centres(length: int, stride: int) -> np.ndarray:
    """Source index of each mask pixel along one axis: the centre ``i*s + s//2`` of its block,
    clipped to the image (the last block may be partial). Shape ``[ceil(length / s)]``."""
    return np.minimum(np.arange(-(-length // stride)) * stride + stride // 2, length - 1)


def downsample_ids(ids: np.ndarray, stride: int) -> np.ndarray:
    """Nearest-neighbour downsampling of an [H, W] id map by ``stride`` at block centres."""
    ids = np.asarray(ids)
    if stride == 1:
        return ids.copy()
    return ids[np.ix_(block_centres(ids.shape[0], stride), block_centres(ids.shape[1], stride))]


def max_pool(values: np.ndarray, stride: int) -> np.ndarray:
    """Max over each ``s x s`` block of an [H, W] map (edge-padded): [ceil(H/s), ceil(W/s)]."""
    values = np.asarray(values, dtype=np.float32)
    if stride == 1:
        return values.copy()
    h, w = mask_size(*values.shape, stride)
    padded = np.pad(values, ((0, h * stride - values.shape[0]), (0, w * stride - values.shape[1])), mode="edge")
    return padded.reshape(h, stride, w, stride).max(axis=(1, 3))


def instance_boundaries(ids: np.ndarray) -> np.ndarray:
    """``B(p) = 1`` where some 8-neighbour of p has a different segment id, else 0.

    Both sides of a contact are marked (the boundary is two pixels wide), void (id 0) counts
    as a segment, and the image border is not a boundary. [H, W] int -> [H, W] float32.
    """
    ids = np.asarray(ids)
    padded = np.pad(ids, 1, mode="edge")
    h, w = ids.shape
    boundary = np.zeros((h, w), dtype=bool)
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            if dy or dx:
                boundary |= padded[1 + dy : 1 + dy + h, 1 + dx : 1 + dx + w] != ids
    return boundary.astype(np.float32)


def class_index_map(ids: np.ndarray, class_of_segment: Mapping[int, int], ignore: int = -1) -> np.ndarray:
    """[H, W] segment ids -> [H, W] int64 class indices (``ignore`` on void and unlisted ids)."""
    ids = np.asarray(ids)
    present, inverse = np.unique(ids, return_inverse=True)
    lookup = np.array([class_of_segment.get(int(v), ignore) for v in present.tolist()], dtype=np.int64)
    return lookup[inverse.reshape(ids.shape)]


def one_hot_semantic(classes: np.ndarray, num_classes: int, void: str = "zero") -> np.ndarray:
    """``P^s = onehot(classes)`` as [C, H, W] float32; pixels with class < 0 are void.

    ``void='zero'`` leaves void pixels at the zero vector, ``'uniform'`` sets them to ``1/C``.
    """
    if void not in VOID_SEMANTICS:
        raise P2MInputError(f"ablation.void_semantic must be {' or '.join(repr(v) for v in VOID_SEMANTICS)}, got {void!r}")
    classes = np.asarray(classes)
    h, w = classes.shape
    semantic = np.zeros((num_classes, h, w), dtype=np.float32)
    valid = classes >= 0
    ys, xs = np.nonzero(valid)
    semantic[classes[valid], ys, xs] = 1.0
    if void == "uniform":
        semantic[:, ~valid] = 1.0 / num_classes
    return semantic


def corruption_rng(seed: int, image_id: Any) -> np.random.Generator:
    """Generator of one image's corruption: ``SeedSequence([seed, *sha256(str(image_id))[:16]])``.

    It depends on the image id only, not on its position in the dataset or batch, so the same
    image gets the same corruption whatever else is evaluated with it.
    """
    digest = hashlib.sha256(str(image_id).encode("utf-8")).digest()
    words = [int.from_bytes(digest[i : i + 4], "little") for i in range(0, 16, 4)]
    return np.random.default_rng(np.random.SeedSequence([int(seed), 0xC0DE, *words]))


def corrupt_semantic(semantic: np.ndarray, sigma: float, noise_std: float, rng: np.random.Generator) -> np.ndarray:
    """``renorm(max(G_sigma * P^s + eps, 0))`` with ``eps ~ N(0, noise_std^2)`` per class and pixel.

    The blur acts over space only (per class channel, reflected borders); renormalisation makes
    each pixel sum to 1 over classes again, except pixels whose mass is all zero (void pixels
    far from any segment with ``void_semantic=zero``), which stay zero. [C, h, w] -> [C, h, w].
    """
    out = np.asarray(semantic, dtype=np.float32)
    if sigma > 0:
        out = gaussian_filter(out, sigma=(0.0, sigma, sigma), mode="reflect", truncate=3.0)
    if noise_std > 0:
        noise = rng.standard_normal(out.shape, dtype=np.float32) * np.float32(noise_std)
        had_mass = out.sum(axis=0, keepdims=True) > 1e-6
        out = np.where(had_mass, np.maximum(out + noise, 0.0), out)
    total = out.sum(axis=0, keepdims=True)
    out = np.where(total > 1e-6, out / np.maximum(total, 1e-6), 0.0)
    return out.astype(np.float32)


def corrupt_boundary(boundary: np.ndarray, drop: float, sigma: float, rng: np.random.Generator) -> np.ndarray:
    """Drop a fraction ``drop`` of the boundary pixels (value > 0 -> 0), then blur by ``sigma``.

    Dropping is per pixel, uniform at random. The blur is not renormalised: a one-pixel line
    blurred with sigma 1 peaks near 0.4, like a soft predicted boundary. [h, w] -> [h, w] in [0, 1].
    """
    out = np.array(boundary, dtype=np.float32)
    if drop > 0:
        on = out > 0
        out[on & (rng.random(out.shape) < drop)] = 0.0
    if sigma > 0:
        out = gaussian_filter(out, sigma=sigma, mode="reflect", truncate=3.0)
    return np.clip(out, 0.0, 1.0).astype(np.float32)


def build_image_maps(
    ablation: AblationConfig,
    mask_ids: np.ndarray,
    class_of_segment: Mapping[int, int],
    num_classes: int,
    *,
    edges: np.ndarray | None = None,
    image_id: Any = None,
) -> ImageMaps:
    """The maps of one image at mask resolution for ``ablation.source`` (see the module doc).

    Parameters
    ----------
    ablation : the stage's settings: ``source``, ``void_semantic``, ``oracle_boundary_low`` and
        ``corruption``. For ``checkpoint`` the result is :func:`pending_maps`: the network's
        maps are filled in per batch.
    mask_ids : [h, w] GT segment ids at mask resolution (:func:`downsample_ids`).
    class_of_segment : segment id -> contiguous class index (void and unlisted ids: no class).
    num_classes : C.
    edges : [h, w] low-level edge map at mask resolution (:func:`max_pool` of the image's
        edges); required for ``image`` and for ``oracle_boundary_low=edges``
        (:func:`needs_edges`).
    image_id : seeds the corruption of this image together with ``ablation.corruption.seed``.
    """
    require_available(ablation)
    source = ablation.source

    def given_edges() -> np.ndarray:
        if edges is None:
            raise P2MInputError(f"map source {source}: the low-level edge map is needed but was not given")
        if edges.shape != mask_ids.shape:
            raise ValueError(f"edge map shape {edges.shape} differs from the mask grid {mask_ids.shape}")
        return np.asarray(edges, dtype=np.float32)

    if source == "checkpoint":
        return pending_maps(mask_ids.shape, given_edges())
    semantic = one_hot_semantic(class_index_map(mask_ids, class_of_segment), num_classes, ablation.void_semantic)
    if source == "image":
        return ImageMaps(semantic, None, given_edges())
    gt_boundary = instance_boundaries(mask_ids)
    low = {"gt": gt_boundary, "edges": None, "none": None}[ablation.oracle_boundary_low]
    if ablation.oracle_boundary_low == "edges":
        low = given_edges()
    maps = ImageMaps(semantic, gt_boundary, None if low is None else low.copy())
    if source == "oracle_corrupt":
        maps = corrupt_maps(maps, ablation.corruption, image_id)
    return maps


def needs_edges(ablation: AblationConfig) -> bool:
    """Whether the source reads the image's low-level edge map (then the RGB image is loaded)."""
    return ablation.source in ("image", "checkpoint") or ablation.oracle_boundary_low == "edges"


def pending_maps(shape: tuple[int, int], boundary_low: np.ndarray | None) -> ImageMaps:
    """The maps of an image whose ``P^s`` and ``P^b_high`` a network has yet to predict: no
    class channel, only the mask grid's shape (which batches images) and ``P^b_low``."""
    return ImageMaps(np.zeros((0, *shape), dtype=np.float32), None, boundary_low)


def corrupt_maps(maps: ImageMaps, corruption: CorruptionConfig, image_id: Any) -> ImageMaps:
    """Apply ``corruption`` to one image's maps, seeded by (corruption.seed, image_id).

    The draws happen in a fixed order (semantic noise, then high, then low boundary) from one
    generator, so the result is a pure function of the maps, the settings and the image id.
    Ranges are checked when the config is loaded (:class:`~p2m_core.config.CorruptionConfig`).
    """
    rng = corruption_rng(corruption.seed, image_id)
    semantic = corrupt_semantic(maps.semantic, corruption.semantic_blur_sigma, corruption.semantic_noise_std, rng)
    high, low = (
        None if b is None else corrupt_boundary(b, corruption.boundary_drop, corruption.boundary_blur_sigma, rng)
        for b in (maps.boundary_high, maps.boundary_low)
    )
    return ImageMaps(semantic, high, low)


def stack_image_maps(maps: Sequence[ImageMaps]) -> dict[str, np.ndarray | None]:
    """Stack equal-sized per-image maps: ``semantic`` [B, C, h, w], boundaries [B, h, w] or None,
    ``embedding`` [B, D, h, w] or None.

    A boundary map is kept only if every image has it (the sources of one run agree).
    """
    if not maps:
        raise ValueError("no maps to stack")
    shapes = {m.semantic.shape for m in maps}
    if len(shapes) != 1:
        raise ValueError(f"cannot batch maps of different shapes {sorted(shapes)}")
    out: dict[str, np.ndarray | None] = {"semantic": np.stack([m.semantic for m in maps])}
    for name in ("boundary_high", "boundary_low", "embedding"):
        values = [getattr(m, name) for m in maps]
        out[name] = None if any(v is None for v in values) else np.stack(values)
    return out
