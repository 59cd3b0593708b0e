"""Hand-made records shared by the evaluation tests."""

from __future__ import annotations

import numpy as np
import pytest

from mmccd.evaluation.metrics import MapRecord


def row(values: list[float]) -> np.ndarray:
    return np.asarray([values], dtype=float)


def mask(values: list[int]) -> np.ndarray:
    return np.asarray([values], dtype=bool)


@pytest.fixture
def two_subjects() -> list[MapRecord]:
    """Subject A with 2 slices, subject B with 1; (1, 4) slices, all pixels brain. At threshold 0.5:

    A/0 map [.9 .1 .1 .1] gt [1 0 0 0] -> pred [1 0 0 0]: TP 1, P 1, G 1 -> Dice 1
    A/1 map [.6 .7 .2 .1] gt [0 1 1 0] -> pred [1 1 0 0]: TP 1, P 2, G 2 -> Dice 0.5
    B/0 map [.8 .3 .4 .6] gt [0 1 0 0] -> pred [1 0 0 1]: TP 0, P 2, G 1 -> Dice 0
    """
    full = mask([1, 1, 1, 1])
    return [
        MapRecord("A", 1, row([0.6, 0.7, 0.2, 0.1]), mask([0, 1, 1, 0]), full),  # given out of order on purpose
        MapRecord("B", 0, row([0.8, 0.3, 0.4, 0.6]), mask([0, 1, 0, 0]), full),
        MapRecord("A", 0, row([0.9, 0.1, 0.1, 0.1]), mask([1, 0, 0, 0]), full),
    ]


def random_records(rng: np.random.Generator, n_subjects: int, slices: int = 2, size: int = 16,
                   tumour_level: float = 1.0, noise: float = 0.4) -> list[MapRecord]:
    """Random records: a disc-like brain, a square tumour scoring `tumour_level` + noise (none for the last subject)."""
    yy, xx = np.mgrid[:size, :size]
    brain = (yy - size / 2) ** 2 + (xx - size / 2) ** 2 < (0.45 * size) ** 2
    out = []
    for s in range(n_subjects):
        for k in range(slices):
            gt = np.zeros((size, size), bool)
            if s != n_subjects - 1:
                y, x = rng.integers(3, size - 7, 2)
                gt[y:y + 4, x:x + 4] = True
            amap = rng.random((size, size)) * noise + gt * tumour_level * rng.uniform(0.3, 1.0)
            amap[~brain] = rng.random(np.count_nonzero(~brain)) * 100  # huge outside: must never matter
            out.append(MapRecord(f"S{s}", 10 + k, amap, gt, brain))
    return out


@pytest.fixture
def make_records():  # a factory, so tests need not import from conftest
    return random_records
