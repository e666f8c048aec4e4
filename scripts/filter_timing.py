"""What the interleaved filter timings share (``scripts/ab_segment_ratios.py``, ``scripts/chunk_sizes.py``): the
chunked filter's inputs at one shape, and medians of interleaved rounds.

Imported by those scripts (run as ``python scripts/<name>.py``, which puts ``scripts/`` on the import path).
"""

from __future__ import annotations

import random
import statistics
import time
from collections.abc import Callable, Hashable

import torch
from torch import Tensor

from probseq.cpu import fast_cpu_arithmetic
from probseq.types import BayesState


def single_threaded() -> None:
    """One thread, and the CPU settings every ``probseq`` command and Trainer run uses."""
    torch.set_num_threads(1)
    fast_cpu_arithmetic()


def filter_inputs(batch: int, length: int, heads: int, dim: int, gen: torch.Generator) -> dict[str, Tensor]:
    """Leaves ``q, k, v [B, T, H, K]`` (unit keys), ``log_decay, noise, retention [B, T, H]``, the output gradient
    ``grad`` and the initial ``state`` (zero mean, identity covariance) for ``bayes_chunked``."""
    q, v = (torch.randn(batch, length, heads, dim, generator=gen).requires_grad_() for _ in range(2))
    k = torch.nn.functional.normalize(torch.randn(batch, length, heads, dim, generator=gen), dim=-1).requires_grad_()
    return {
        "q": q,
        "k": k,
        "v": v,
        "log_decay": (-0.1 * torch.rand(batch, length, heads, generator=gen)).requires_grad_(),
        "noise": (0.05 + torch.rand(batch, length, heads, generator=gen)).requires_grad_(),
        "retention": torch.rand(batch, length, heads, generator=gen).requires_grad_(),
        "grad": torch.randn(batch, length, heads, dim, generator=gen),
        "state": BayesState(torch.zeros(batch, heads, dim, dim), torch.eye(dim).expand(batch, heads, dim, dim).clone()),
    }


def interleaved_medians(
    cases: dict[Hashable, Callable[[], object]], rounds: int, skip: int = 0, rng: random.Random | None = None
) -> dict[Hashable, float]:
    """Median seconds of each case over ``rounds`` rounds (the first ``skip`` left out), every round running each
    case once in a random order — a shared machine's drift and the allocator's state then affect all alike. Each
    case runs once first, untimed."""
    rng = rng or random.Random()
    for call in cases.values():
        call()
    times = {name: [] for name in cases}
    for _ in range(rounds):
        for name, call in rng.sample(list(cases.items()), len(cases)):
            start = time.perf_counter()
            call()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values[skip:]) for name, values in times.items()}
