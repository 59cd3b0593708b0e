"""Fixtures of the device tests (tests/gpu): `device` from MMCCD_TEST_DEVICE, one CPU thread."""

from __future__ import annotations

import pytest
import torch
from gpu_helpers import device_under_test


@pytest.fixture(scope="session")
def device() -> torch.device:
    """torch.device of MMCCD_TEST_DEVICE (cpu when unset); skips when it names CUDA that is not here."""
    return device_under_test()


@pytest.fixture(autouse=True)
def _one_thread():
    """One intra-op thread: on a shared 2-core machine, OpenMP spin-waiting makes tiny ops 20x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
