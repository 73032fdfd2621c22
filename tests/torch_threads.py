"""A fixture for tests of small torch models: one intra-op thread while the module runs.

Tiny convolutions run fastest on one thread, and on a shared 2-core machine two torch threads
competing with other processes were measured 100x slower (3.2 s against 0.03 s for a ResNet-101
of width 8 on 2x3x64x64). Import ``one_torch_thread`` into a test module to use it.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
