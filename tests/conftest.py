"""Fixtures of every test: the torch thread count each test starts with, and is left with.

Under pytest-xdist (`make test` runs one worker per core) each worker uses one intra-op thread: the suite's
networks are tiny, and two workers with two OpenMP threads each on two cores spin-wait against each other
(tiny ops become many times slower). A test that sets its own thread count gets the worker's back afterwards,
so no test runs at a count another test left behind."""

from __future__ import annotations

import os

import pytest
import torch


@pytest.fixture(scope="session", autouse=True)
def _worker_threads():
    before = torch.get_num_threads()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(autouse=True)
def _restore_threads(_worker_threads):
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)
