"""Low-level edge map ``P^b_low`` of an input image (paper Sec. 3.3.1; docs/METHOD.md, "Task-oriented maps").

Two detectors behind one interface, :class:`EdgeDetector`:

- **Structured Edges** (the paper's choice): OpenCV's random-forest detector,
  ``cv2.ximgproc.createStructuredEdgeDetection(model.yml.gz).detectEdges(rgb_float01)``.
  The forest file comes with OpenCV's extra test data and is not on any package index, so it
  must be supplied by path. A configured path that is missing or does not hold a forest is a
  :class:`~p2m_core.errors.P2MInputError`; it never falls back silently. Loaded forests are
  cached per path (a forest is ~40 MB once parsed and takes seconds to load).
- **Classical fallback** (no path configured): the colour gradient magnitude in CIE-LAB over
  three Gaussian scales. For each scale ``sigma`` in :data:`FALLBACK_SIGMAS`::

      g_sigma(p) = sigma * || (d/dx, d/dy) (G_sigma * LAB)(p) ||_2        (over the 3 channels)

  ``sigma *`` is Lindeberg's scale normalisation: a step of LAB contrast ``h`` has peak
  derivative ``h / (sqrt(2 pi) sigma)`` after smoothing, so ``g_sigma`` peaks at
  ``h / sqrt(2 pi)`` at every scale and the scales can be averaged, ``g = mean_sigma g_sigma``.
  The map is ``clip(g / s, 0, 1)`` with ``s = max(percentile_99(g), FALLBACK_MIN_SCALE)``: the
  99th percentile makes the strongest edges of the image reach 1 whatever its contrast, and the
  floor (a LAB step of 10, ``10 / sqrt(2 pi)``) keeps a nearly flat image from having its noise
  stretched to full-strength edges.

Both return HxW float32 in [0, 1], high on boundaries.
"""

from __future__ import annotations

import math
import threading
from pathlib import Path

import cv2
import numpy as np

from p2m_core.errors import P2MInputError
from p2m_core.io import PathLike

FALLBACK_SIGMAS = (1.0, 2.0, 4.0)
FALLBACK_PERCENTILE = 99.0
FALLBACK_MIN_SCALE = 10.0 / math.sqrt(2.0 * math.pi)

# Nodes a Structured Edge forest file must hold (opencv_contrib structured_edge_detection.cpp).
# OpenCV builds a detector from any readable file and divides by zero on the first image when
# these are absent, killing the process, so they are checked before the detector is built.
_SED_OPTIONS = (
    "numberOfTrees", "numberOfTreesToEvaluate", "selfsimilarityGridSize", "stride", "shrinkNumber",
    "patchSize", "patchInnerSize", "numberOfGradientOrientations", "gradientSmoothingRadius",
    "regFeatureSmoothingRadius", "ssFeatureSmoothingRadius", "gradientNormalizationRadius",
)  # fmt: skip
_SED_ARRAYS = ("childs", "featureIds", "thresholds", "edgeBoundaries", "edgeBins")

_SED_CACHE: dict[Path, object] = {}
_SED_LOCK = threading.Lock()


def _check_image(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise P2MInputError(
            f"edge detection expects an HxWx3 uint8 RGB image, got shape {image.shape} dtype {image.dtype}"
        )
    return image


def classical_edges(image: np.ndarray) -> np.ndarray:
    """Scale-normalised multi-scale LAB gradient magnitude (module doc), HxW float32 in [0, 1].

    Parameters
    ----------
    image : [H, W, 3] uint8 RGB.
    """
    image = _check_image(image)
    lab = cv2.cvtColor(image.astype(np.float32) / 255.0, cv2.COLOR_RGB2Lab)  # L 0..100, a/b ~ +-110
    total = np.zeros(image.shape[:2], dtype=np.float64)
    for sigma in FALLBACK_SIGMAS:
        smooth = cv2.GaussianBlur(lab, (0, 0), sigmaX=sigma, sigmaY=sigma, borderType=cv2.BORDER_REFLECT)
        # Sobel's 3x3 kernel sums to 8 x the central difference per pixel; /8 gives units/pixel.
        gx = cv2.Sobel(smooth, cv2.CV_32F, 1, 0, ksize=3, borderType=cv2.BORDER_REFLECT) / 8.0
        gy = cv2.Sobel(smooth, cv2.CV_32F, 0, 1, ksize=3, borderType=cv2.BORDER_REFLECT) / 8.0
        total += sigma * np.sqrt((gx.astype(np.float64) ** 2 + gy.astype(np.float64) ** 2).sum(axis=2))
    magnitude = total / len(FALLBACK_SIGMAS)
    scale = max(float(np.percentile(magnitude, FALLBACK_PERCENTILE)), FALLBACK_MIN_SCALE)
    return np.clip(magnitude / scale, 0.0, 1.0).astype(np.float32)


def _validate_sed_file(path: Path) -> None:
    """Check that ``path`` parses as a Structured Edge forest, before OpenCV trusts it."""
    try:
        storage = cv2.FileStorage(str(path), cv2.FILE_STORAGE_READ)
    except (cv2.error, SystemError) as exc:  # the Python binding wraps parse errors in SystemError
        detail = str(exc.__cause__ or exc).strip().splitlines()[0]
        raise P2MInputError(
            f"Structured Edge model {path} cannot be parsed as an OpenCV model file "
            f"(expected OpenCV's model.yml.gz): {detail}"
        ) from exc
    try:
        if not storage.isOpened():
            raise P2MInputError(f"Structured Edge model {path} cannot be opened as an OpenCV model file")
        options = storage.getNode("options")
        missing = [name for name in _SED_OPTIONS if options.empty() or options.getNode(name).empty()]
        missing += [name for name in _SED_ARRAYS if storage.getNode(name).empty() or storage.getNode(name).size() == 0]
        if missing:
            raise P2MInputError(
                f"Structured Edge model {path} is not a forest file (missing: {', '.join(missing)}); "
                "expected OpenCV's model.yml.gz"
            )
        if int(options.getNode("numberOfTrees").real()) <= 0 or int(options.getNode("shrinkNumber").real()) <= 0:
            raise P2MInputError(f"Structured Edge model {path}: numberOfTrees and shrinkNumber must be positive")
    finally:
        storage.release()


def load_structured_edge_model(path: PathLike) -> object:
    """The OpenCV Structured Edge detector of the forest at ``path``, loaded once per path."""
    resolved = Path(path).expanduser().resolve()
    with _SED_LOCK:
        if resolved in _SED_CACHE:
            return _SED_CACHE[resolved]
        if not resolved.is_file():
            raise P2MInputError(f"Structured Edge model file not found: {path}")
        _validate_sed_file(resolved)
        try:
            model = cv2.ximgproc.createStructuredEdgeDetection(str(resolved))
        except cv2.error as exc:
            raise P2MInputError(f"Structured Edge model {path} failed to load: {exc.err or exc}") from exc
        _SED_CACHE[resolved] = model
        return model


class EdgeDetector:
    """``P^b_low``: Structured Edges when a forest path is given, else the classical fallback.

    >>> detector = EdgeDetector.from_model_path(None)
    >>> detector(np.zeros((8, 8, 3), np.uint8)).shape
    (8, 8)
    """

    def __init__(self, model: object | None = None, model_path: Path | None = None) -> None:
        self.model = model
        self.model_path = model_path

    @classmethod
    def from_model_path(cls, path: PathLike | None) -> EdgeDetector:
        """Detector for a forest file, or the fallback for ``None`` / ``""`` (``data.edge_model``)."""
        if path is None or str(path) == "":
            return cls()
        return cls(load_structured_edge_model(path), Path(path))

    @property
    def kind(self) -> str:
        return "structured_edges" if self.model is not None else "classical"

    def __call__(self, image: np.ndarray) -> np.ndarray:
        """Edge map of ``image`` [H, W, 3] uint8 RGB: [H, W] float32 in [0, 1]."""
        image = _check_image(image)
        if self.model is None:
            return classical_edges(image)
        edges = self.model.detectEdges(image.astype(np.float32) / 255.0)
        return np.clip(np.asarray(edges, dtype=np.float32), 0.0, 1.0)


def low_level_edges(image: np.ndarray, model_path: PathLike | None = None) -> np.ndarray:
    """``P^b_low`` of ``image`` [H, W, 3] uint8 RGB: [H, W] float32 in [0, 1] (see module doc)."""
    return EdgeDetector.from_model_path(model_path)(image)
