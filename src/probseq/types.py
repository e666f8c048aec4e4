"""Typed containers and the one place where ``impl`` is resolved."""

from __future__ import annotations

from typing import Literal, NamedTuple

from torch import Tensor

Impl = Literal["reference", "recurrent", "chunked", "auto"]
IMPLS: tuple[str, ...] = ("reference", "recurrent", "chunked", "auto")


class BayesState(NamedTuple):
    """Memory state of one layer: the posterior of ``W`` after the last write.

    Attributes:
        mean: ``M`` ``[B, H, V, K]`` (value-first: maps keys to values), float32 or float64.
        cov: ``P`` ``[B, H, K, K]`` column covariance over key dimensions, ``0 ⪯ P ⪯ I``;
            ``None`` for designs that do not track a covariance (the superposition family).
    """

    mean: Tensor
    cov: Tensor | None = None


class FilterOutput(NamedTuple):
    """What every filter form returns.

    Attributes:
        output: predictive mean ``o_t = M_t q̃_t``, ``[B, T, H, V]`` (``[B, H, V]`` for a single step),
            in the dtype of ``v``.
        state: the final :class:`BayesState` when requested, else ``None``.
        variance: predictive variance ``σ²_t = q̃_tᵀ P_t q̃_t``, ``[B, T, H]`` (``[B, H]`` for a step),
            when requested and the design tracks a covariance, else ``None``.
    """

    output: Tensor
    state: BayesState | None = None
    variance: Tensor | None = None


def resolve_impl(impl: str, length: int) -> str:
    """Map ``impl`` to a concrete form: ``auto`` is ``recurrent`` for a single token, else ``chunked``."""
    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
    if impl == "auto":
        return "recurrent" if length <= 1 else "chunked"
    return impl
