"""Low-level edge map P^b_low: the classical fallback and the Structured Edge model checks.

OpenCV's Structured Edge forest (model.yml.gz) is not available offline, so the SED path is
tested for its failure modes only: a missing file and files that are not a forest must be clear
errors naming the path, never a silent fallback and never a crash inside OpenCV.
"""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from p2m_core.data.edges import EdgeDetector, classical_edges, low_level_edges
from p2m_core.errors import P2MInputError


def step_image(height: int = 64, width: int = 80, column: int = 40) -> np.ndarray:
    image = np.zeros((height, width, 3), dtype=np.uint8)
    image[:, :column] = (30, 60, 90)
    image[:, column:] = (200, 180, 40)
    return image


def test_fallback_shape_dtype_and_range(coco_sample: Path):
    image = np.asarray(Image.open(sorted((coco_sample / "images").glob("*.jpg"))[0]).convert("RGB"))
    edges = low_level_edges(image)
    assert edges.shape == image.shape[:2] and edges.dtype == np.float32
    assert edges.min() >= 0.0 and edges.max() <= 1.0
    assert edges.max() == pytest.approx(1.0)  # the 99th percentile maps to 1
    assert 0.0 < edges.mean() < 0.5  # most of a natural image is not a boundary


def test_fallback_is_high_on_a_step_and_low_on_flat_regions():
    edges = low_level_edges(step_image(column=40))
    across = edges[32]
    assert across[39] > 0.9 and across[40] > 0.9
    assert across[:25].max() < 0.05 and across[55:].max() < 0.05
    assert np.argmax(across) in (39, 40)
    # the edge runs along the whole step, including the image borders
    assert (edges[:, 39:41].max(axis=1) > 0.9).all()


def test_fallback_tracks_a_horizontal_edge_too():
    edges = classical_edges(np.ascontiguousarray(step_image(80, 64, 30).transpose(1, 0, 2)))
    assert edges[29:31, :].min() > 0.9 and edges[:15].max() < 0.05


def test_flat_and_faint_images_do_not_get_full_strength_edges():
    assert low_level_edges(np.full((32, 32, 3), 127, np.uint8)).max() == 0.0
    rng = np.random.default_rng(0)
    faint = np.clip(127 + rng.integers(-1, 2, size=(48, 48, 3)), 0, 255).astype(np.uint8)
    assert low_level_edges(faint).max() < 0.2  # +-1 grey-level noise is not a boundary


def test_fallback_is_deterministic():
    rng = np.random.default_rng(5)
    image = rng.integers(0, 256, size=(37, 53, 3)).astype(np.uint8)
    assert np.array_equal(low_level_edges(image), low_level_edges(image.copy()))
    detector = EdgeDetector.from_model_path("")
    assert detector.kind == "classical" and np.array_equal(detector(image), low_level_edges(image))


def test_bad_image_is_an_input_error():
    with pytest.raises(P2MInputError, match="HxWx3 uint8"):
        low_level_edges(np.zeros((8, 8), np.uint8))
    with pytest.raises(P2MInputError, match="float"):
        low_level_edges(np.zeros((8, 8, 3), np.float32))


def test_missing_model_file_is_an_error_naming_it(tmp_path):
    path = tmp_path / "nowhere" / "model.yml.gz"
    with pytest.raises(P2MInputError, match="not found.*nowhere/model.yml.gz"):
        EdgeDetector.from_model_path(path)
    with pytest.raises(P2MInputError, match="model.yml.gz"):
        low_level_edges(step_image(), str(path))


def test_garbage_model_file_is_an_error_naming_it(tmp_path):
    path = tmp_path / "model.yml.gz"
    path.write_bytes(np.random.default_rng(0).integers(0, 256, size=4096).astype(np.uint8).tobytes())
    with pytest.raises(P2MInputError, match=f"{path}.*cannot be parsed"):
        low_level_edges(step_image(), path)


def test_readable_file_that_is_not_a_forest_is_an_error(tmp_path):
    # OpenCV accepts this file and then divides by zero on the first image (killing the
    # process), so the detector must reject it before building the model.
    path = tmp_path / "model.yml.gz"
    path.write_bytes(gzip.compress(b"%YAML:1.0\n---\noptions:\n   stride: 2\n"))
    with pytest.raises(P2MInputError, match="not a forest file.*numberOfTrees"):
        EdgeDetector.from_model_path(path)


# A one-split forest in OpenCV's model format: node 0 tests feature 0 (a colour channel at the
# patch's first cell) against 0.01; the dark branch (node 1) predicts no edge pixels, the bright
# branch (node 2) predicts 8 edge bins. Not a useful detector, but a real one for OpenCV, so the
# Structured Edge code path (loading, caching, RGB float input, output range) runs for real.
TINY_FOREST = b"""%YAML:1.0
---
options:
   stride: 2
   shrinkNumber: 2
   patchSize: 32
   patchInnerSize: 16
   numberOfGradientOrientations: 4
   gradientSmoothingRadius: 0
   regFeatureSmoothingRadius: 2
   ssFeatureSmoothingRadius: 8
   gradientNormalizationRadius: 4
   selfsimilarityGridSize: 5
   numberOfTrees: 1
   numberOfTreesToEvaluate: 1
childs:
   - [ 2, 0, 0 ]
featureIds:
   - [ 0, 0, 0 ]
thresholds:
   - [ 0.01, 0., 0. ]
edgeBoundaries:
   - [ 0, 0, 0, 8 ]
edgeBins:
   - [ 0, 1, 2, 3, 16, 17, 18, 19 ]
"""


def test_structured_edges_run_through_opencv_and_are_cached(tmp_path):
    path = tmp_path / "tiny.yml.gz"
    path.write_bytes(gzip.compress(TINY_FOREST))
    detector = EdgeDetector.from_model_path(path)
    assert detector.kind == "structured_edges"
    assert EdgeDetector.from_model_path(str(path)).model is detector.model  # loaded once per path
    image = np.zeros((64, 80, 3), np.uint8)
    image[:, 40:] = 200
    edges = detector(image)
    assert edges.shape == (64, 80) and edges.dtype == np.float32
    assert edges.min() >= 0.0 and edges.max() <= 1.0
    assert edges[:, :32].max() == 0.0  # dark patches take the branch without edge pixels
    assert edges[8:44, 48:64].min() > 0.0  # bright patches paint their bins (offset by the patch geometry)
    assert not np.array_equal(edges, low_level_edges(image))  # not the fallback
    assert np.array_equal(low_level_edges(image, path), edges)
