"""What every synthetic task shares: the returned container, the ignore label, train/test seeds and
argument checks.

Token tensors use the package notation with ``B`` = number of examples and ``T`` = input length.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
from torch import Tensor

# Label of every position that carries no supervision (PyTorch's ``cross_entropy`` default).
IGNORE_INDEX = -100

# Seeds live in [0, MAX_SEED); train seeds take the lower half and test seeds the upper half, the
# split Zoology uses (``zoology/data/utils.py``), so no train segment can share a seed with a test one.
MAX_SEED = 2**32


class TaskData(NamedTuple):
    """One generated segment.

    Attributes:
        inputs: token ids ``[B, T]`` int64.
        labels: next-token targets ``[B, T]`` int64: ``labels[b, t]`` is the token a model should
            predict after reading ``inputs[b, : t + 1]``, or ``IGNORE_INDEX`` where nothing is scored.
    """

    inputs: Tensor
    labels: Tensor


class SegmentSeeds(NamedTuple):
    """Seeds for the train and test segments of one data configuration.

    Attributes:
        train: one seed per train segment, distinct, in ``[0, MAX_SEED // 2)``.
        test: one seed per test segment, distinct, in ``[MAX_SEED // 2, MAX_SEED)``.
    """

    train: tuple[int, ...]
    test: tuple[int, ...]


def split_seeds(seed: int, num_train: int, num_test: int) -> SegmentSeeds:
    """Draw seeds for ``num_train`` train and ``num_test`` test segments from one master ``seed``.

    Rule: a generator seeded with ``seed`` draws the train seeds without replacement from
    ``[0, 2**31)`` and then the test seeds without replacement from ``[2**31, 2**32)``. The ranges are
    disjoint, so a train segment and a test segment never share a seed (and, for the same config,
    never share their data stream); within a split the seeds are distinct too.

    Args:
        seed: master seed, an int ``>= 0``.
        num_train: number of train segments, ``>= 0``.
        num_test: number of test segments, ``>= 0``.

    Returns:
        :class:`SegmentSeeds` with ``len(train) == num_train`` and ``len(test) == num_test``.
    """
    seed = check_seed(seed)
    num_train = check_int("num_train", num_train, 0)
    num_test = check_int("num_test", num_test, 0)
    rng = np.random.default_rng(seed)
    half = MAX_SEED // 2
    train = rng.choice(half, size=num_train, replace=False)
    test = half + rng.choice(half, size=num_test, replace=False)
    return SegmentSeeds(tuple(int(s) for s in train), tuple(int(s) for s in test))


def check_int(name: str, value: object, minimum: int) -> int:
    """Return ``value`` as an ``int`` if it is an integer ``>= minimum``; else a ``ValueError``
    naming ``name`` (booleans are rejected: ``True`` is not a count)."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r} ({type(value).__name__})")
    if value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value}")
    return int(value)


def check_seed(seed: object) -> int:
    """A seed is an int in ``[0, MAX_SEED)``."""
    seed = check_int("seed", seed, 0)
    if seed >= MAX_SEED:
        raise ValueError(f"seed must be < 2**32, got {seed}")
    return seed


def check_real(name: str, value: object, low: float, high: float, *, low_open: bool = False) -> float:
    """Return ``value`` as a ``float`` if it is a finite real in ``[low, high]`` (``(low, high]``
    with ``low_open``); else a ``ValueError`` naming ``name``."""
    interval = f"{'(' if low_open else '['}{low:g}, {high:g}]"
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise ValueError(f"{name} must be a real number in {interval}, got {value!r} ({type(value).__name__})")
    value = float(value)
    inside = (low < value if low_open else low <= value) and value <= high
    if not (math.isfinite(value) and inside):
        raise ValueError(f"{name} must be a finite real number in {interval}, got {value}")
    return value


def sample_distinct(rng: np.random.Generator, low: int, high: int, rows: int, size: int) -> np.ndarray:
    """Each row an independent, uniformly random *ordered* sample of ``size`` distinct ints from
    ``[low, high)`` (so any row prefix is itself a uniform sample).

    Returns:
        ``[rows, size]`` int64.
    """
    out = np.empty((rows, size), dtype=np.int64)
    for row in range(rows):  # Generator.choice without replacement is O(size) per row (Floyd + shuffle).
        out[row] = rng.choice(high - low, size=size, replace=False)
    return out + low
