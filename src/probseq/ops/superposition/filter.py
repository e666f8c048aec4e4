"""Public entry points of the superposition design (the linear-attention family)."""

from __future__ import annotations

import torch
from torch import Tensor

from probseq.design import compute_dtype, superposition_design
from probseq.ops.run import filter_design
from probseq.ops.superposition.recurrent import superposition_step_core
from probseq.ops.validation import (
    ValueChecks,
    check_chunk_size,
    check_cu_seqlens,
    check_gate,
    check_qkv,
    check_scale,
    check_state,
)
from probseq.types import BayesState, FilterOutput, Impl, resolve_impl


def _check_gates(
    g: Tensor | None,
    beta: Tensor | None,
    shape: tuple[int, ...],
    layout: str,
    key_dim: int,
    checks: ValueChecks | None,
    device: torch.device,
) -> None:
    check_gate("g (log decay)", g, shape, layout, checks, high=0.0, allow_channel=key_dim, device=device)
    check_gate("beta (evidence weight)", beta, shape, layout, checks, low=0.0, device=device)
    if checks is not None and beta is not None:
        checks.finite("beta (evidence weight)", beta)


def superposition_filter(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    g: Tensor | None = None,
    beta: Tensor | None = None,
    *,
    scale: float | None = None,
    initial_state: BayesState | Tensor | None = None,
    output_final_state: bool = False,
    impl: Impl = "auto",
    chunk_size: int | None = None,
    cu_seqlens: Tensor | None = None,
    validate: bool = True,
) -> FilterOutput:
    """Exact filter of the superposition design: ``M_t = M_{t-1} ⊙ decay_t + β_t v_t k_tᵀ``
    (docs/design-model.md §7; symbols and names: docs/notation.md).

    Args:
        q, k: ``[B, T, H, K]``; v: ``[B, T, H, V]``.
        g: log decay ``≤ 0``, ``[B, T, H]`` (scalar per head) or ``[B, T, H, K]`` (per key channel);
            ``None`` means no decay.
        beta: ``[B, T, H]`` evidence weight ``β ≥ 0`` (default 1) — the superposition family's meaning of
            ``beta``: the value is written as ``β v``, unbounded (Mamba-2's ``Δ``), with no write noise
            (unlike :func:`~probseq.ops.bayes_filter`'s write strength).
        scale: query scale, default ``K**-0.5``.
        initial_state: mean ``[B, H, V, K]`` (a tensor or ``BayesState(mean, None)``).
        chunk_size: default 64 for scalar decay, 16 for per-channel decay (its masks are ``[C, C, K]``).
        validate: as in :func:`probseq.ops.bayes_filter`.

    Returns:
        :class:`FilterOutput` ``(output [B, T, H, V], BayesState(mean, None) or None, None)``.
    """
    batch, length, heads, key_dim, value_dim = check_qkv(q, k, v)
    form = resolve_impl(impl, length)
    if chunk_size is None:
        chunk_size = 16 if g is not None and g.dim() == 4 else 64
    chunk_size, scale = check_chunk_size(chunk_size), check_scale(scale, key_dim)
    checks = ValueChecks() if validate else None
    cu_seqlens = check_cu_seqlens(cu_seqlens, batch, length, checks)
    _check_gates(g, beta, (batch, length, heads), "[B, T, H]", key_dim, checks, k.device)
    state = check_state(
        "initial_state",
        initial_state,
        batch if cu_seqlens is None else cu_seqlens.numel() - 1,
        heads,
        key_dim,
        value_dim,
        checks,
        with_cov=False,
    )
    if checks is not None:
        for name, x in (("q", q), ("k", k), ("v", v)):
            checks.finite(name, x)
        checks.resolve()
    dtype = compute_dtype(q, k, v, g, beta, *(state or ()))
    design = superposition_design(g, beta, scale=scale, initial_state=state, dtype=dtype)
    return filter_design(
        design,
        q,
        k,
        v,
        form=form,
        chunk_size=chunk_size,
        output_final_state=output_final_state,
        output_variance=False,
        cu_seqlens=cu_seqlens,
        validate=validate,
    )


def superposition_step(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    g: Tensor | None = None,
    beta: Tensor | None = None,
    state: BayesState | Tensor | None = None,
    *,
    scale: float | None = None,
    validate: bool = True,
) -> FilterOutput:
    """One decoding step of the superposition design: ``q, k [B, H, K]``, ``v [B, H, V]``, ``g [B, H]`` or
    ``[B, H, K]``, ``beta [B, H]`` the evidence weight ``β ≥ 0`` (as in :func:`superposition_filter`).

    Returns:
        :class:`FilterOutput` ``(output [B, H, V], BayesState(mean, None), None)``.
    """
    batch, _, heads, key_dim, value_dim = check_qkv(q, k, v, step=True)
    scale = check_scale(scale, key_dim)
    checks = ValueChecks() if validate else None
    _check_gates(g, beta, (batch, heads), "[B, H]", key_dim, checks, k.device)
    state = check_state("state", state, batch, heads, key_dim, value_dim, checks, with_cov=False)
    if checks is not None:
        for name, x in (("q", q), ("k", k), ("v", v)):
            checks.finite(name, x)
        checks.resolve()
    dtype = compute_dtype(q, k, v, g, beta, *(state or ()))
    mean = (
        torch.zeros(batch, heads, value_dim, key_dim, dtype=dtype, device=v.device)
        if state is None
        else state.mean.to(dtype)
    )
    output, mean = superposition_step_core(
        q.to(dtype),
        k.to(dtype),
        v.to(dtype),
        None if g is None else g.to(dtype),
        None if beta is None else beta.to(dtype),
        mean,
        scale,
    )
    return FilterOutput(output.to(v.dtype), BayesState(mean, None), None)
