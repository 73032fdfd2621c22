"""Shared fixtures: repository paths and the shared real COCO panoptic sample."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
# CI clones the repository beside shared/; P2M_SHARED_DATA points elsewhere when it is not.
SHARED_DATA = Path(os.environ.get("P2M_SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))
SHARED_SAMPLE = SHARED_DATA / "coco_panoptic_sample"


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


@pytest.fixture(scope="session")
def coco_sample() -> Path:
    """The two real COCO val2017 images with panoptic ground truth (``../shared/data``).

    In CI a missing sample is a failure, never a skip: a test that claims real data must run.
    """
    if not (SHARED_SAMPLE / "panoptic.json").is_file():
        message = f"shared COCO panoptic sample missing at {SHARED_SAMPLE}"
        if in_ci():
            pytest.fail(message)
        pytest.skip(message)
    return SHARED_SAMPLE
