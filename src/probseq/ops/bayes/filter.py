"""Public entry points of the Bayesian Layer's filter: validate once, build the design, filter."""

from __future__ import annotations

import torch
from torch import Tensor

from probseq.design import R_MIN, compute_dtype, regression_design
from probseq.ops.bayes.recurrent import bayes_step_core
from probseq.ops.run import filter_design
from probseq.ops.validation import (
    ValueChecks,
    check_chunk_size,
    check_covariance_dtype,
    check_cu_seqlens,
    check_gate,
    check_qkv,
    check_r_min,
    check_scale,
    check_state,
)
from probseq.types import BayesState, FilterOutput, Impl, resolve_impl


def bayes_filter(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    g: Tensor | None,
    beta: Tensor,
    gamma: Tensor | None,
    *,
    scale: float | None = None,
    initial_state: BayesState | None = None,
    output_final_state: bool = False,
    output_variance: bool = False,
    impl: Impl = "auto",
    chunk_size: int = 64,
    r_min: float = R_MIN,
    cu_seqlens: Tensor | None = None,
    validate: bool = True,
    covariance_dtype: torch.dtype | None = None,
    mean_chunk_size: int | None = None,
) -> FilterOutput:
    """The Bayesian Layer: exact filter of the regression design (docs/design-model.md; symbols and names:
    docs/notation.md).

    Args:
        q, k: ``[B, T, H, K]`` queries and keys (used as given; no normalisation inside).
        v: ``[B, T, H, V]`` values.
        g: ``[B, T, H]`` log decay ``≤ 0`` (``α = exp(g)``; ``-inf`` is ``α = 0``); ``None`` means ``α = 1``.
        beta: ``[B, T, H]`` write strength ``β`` in ``[0, 1]`` — the regression family's meaning of ``beta``
            (Gated DeltaNet's): it sets the write noise ``r = clamp((1 − β)/β, r_min, 1e30)``, so ``β = 0`` is
            "no write" and, on a unit key with ``γ = 0``, ``β`` is the fraction of the innovation written.
        gamma: ``[B, T, H]`` certainty retention in ``[0, 1]``; ``None`` is the covariance reset
            (``γ ≡ 0``, the Gated DeltaNet fast path). A ``gamma`` tensor always takes the general path,
            even when it is all zeros (so its gradient exists).
        scale: query scale, default ``K**-0.5``.
        initial_state: :class:`BayesState` ``(mean [B, H, V, K], cov [B, H, K, K] or None)``; ``None`` is the
            prior ``(0, I)``. The covariance is symmetrised and checked to lie in ``[0, I]``.
        output_final_state, output_variance: return the final state / predictive variance ``[B, T, H]``.
        impl: ``"reference" | "recurrent" | "chunked" | "auto"``.
        chunk_size: ``C`` for the chunked form (with ``mean_chunk_size``: of its covariance path only).
        mean_chunk_size: the chunk length of the chunked form's mean path, when it should differ from the
            covariance path's (``None``: ``chunk_size``). Exact for any pair: the mean path needs only the
            per-token write keys (docs/chunked-algorithm.md, "Two chunk lengths"). With ``gamma=None`` there is
            no covariance path, and this is the one chunk length.
        r_min: floor on ``r`` (``0`` is exact for the delta rule; with ``γ = β = 1`` it makes the
            covariance singular after ``K`` writes).
        cu_seqlens: packed variable-length sequences (``B == 1``), see :func:`probseq.ops.run_filter`.
        validate: check values — finiteness of every input, gate ranges, the range of a given covariance,
            ``cu_seqlens`` ordering and a finite result — with one host synchronisation. ``False`` skips
            them all (no synchronisation; for trusted training loops and ``torch.compile``).
        covariance_dtype: ``torch.float64`` runs the chunked covariance path in float64 — float32 accuracy
            near recursive least squares (γ ≈ β ≈ 1), where the float32 path loses up to 1e-2
            (docs/numerics.md, "Accuracy per regime"); ``None``: the compute dtype.

    Returns:
        :class:`FilterOutput` ``(output [B, T, H, V], state, variance)``; output in the dtype of ``v``,
        state and variance in the compute dtype (``float64`` if any input is, else ``float32``).
    """
    batch, length, heads, key_dim, value_dim = check_qkv(q, k, v)
    form = resolve_impl(impl, length)
    chunk_size, scale, r_min = check_chunk_size(chunk_size), check_scale(scale, key_dim), check_r_min(r_min)
    mean_chunk_size = None if mean_chunk_size is None else check_chunk_size(mean_chunk_size, "mean_chunk_size")
    covariance_dtype = check_covariance_dtype(covariance_dtype)
    checks = ValueChecks() if validate else None
    cu_seqlens = check_cu_seqlens(cu_seqlens, batch, length, checks)
    shape, layout = (batch, length, heads), "[B, T, H]"
    check_gate("g (log decay)", g, shape, layout, checks, high=0.0, device=k.device)
    check_gate("beta", beta, shape, layout, checks, low=0.0, high=1.0, device=k.device)
    check_gate("gamma (certainty retention)", gamma, shape, layout, checks, low=0.0, high=1.0, device=k.device)
    state = check_state(
        "initial_state",
        initial_state,
        batch if cu_seqlens is None else cu_seqlens.numel() - 1,
        heads,
        key_dim,
        value_dim,
        checks,
        with_cov=True,
    )
    if checks is not None:
        for name, x in (("q", q), ("k", k), ("v", v)):
            checks.finite(name, x)
        checks.resolve()
    dtype = compute_dtype(q, k, v, g, beta, gamma, *(state or ()))
    design = regression_design(g, beta, gamma, scale=scale, initial_state=state, r_min=r_min, dtype=dtype)
    return filter_design(
        design,
        q,
        k,
        v,
        form=form,
        chunk_size=chunk_size,
        output_final_state=output_final_state,
        output_variance=output_variance,
        cu_seqlens=cu_seqlens,
        validate=validate,
        covariance_dtype=covariance_dtype,
        mean_chunk_size=mean_chunk_size,
    )


def bayes_step(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    g: Tensor | None,
    beta: Tensor,
    gamma: Tensor | None,
    state: BayesState | None,
    *,
    scale: float | None = None,
    r_min: float = R_MIN,
    validate: bool = True,
) -> FilterOutput:
    """One decoding step of the Bayesian Layer, ``O(K² + KV)`` per head at any position.

    Args:
        q, k: ``[B, H, K]``; v: ``[B, H, V]``; g, beta, gamma: ``[B, H]`` (``g``/``gamma`` may be ``None``), as in
            :func:`bayes_filter`: log decay, write strength ``β ∈ [0, 1]`` (noise ``r = (1 − β)/β``), certainty
            retention.
        state: the previous :class:`BayesState` (``None``: the prior). Its shapes are checked; with
            ``validate`` its values must be finite (its covariance range is not checked: ``O(K³)`` per
            token — :func:`bayes_filter` checks it).
        validate: as in :func:`bayes_filter` (one synchronisation per step; a decoding loop on a GPU
            passes ``False``).

    Returns:
        :class:`FilterOutput` ``(output [B, H, V], state, variance [B, H])``, equal to the filter's
        token ``t`` given the state after token ``t − 1``.
    """
    batch, _, heads, key_dim, value_dim = check_qkv(q, k, v, step=True)
    scale, r_min = check_scale(scale, key_dim), check_r_min(r_min)
    checks = ValueChecks() if validate else None
    shape = (batch, heads)
    check_gate("g", g, shape, "[B, H]", checks, high=0.0, device=k.device)
    check_gate("beta", beta, shape, "[B, H]", checks, low=0.0, high=1.0, device=k.device)
    check_gate("gamma", gamma, shape, "[B, H]", checks, low=0.0, high=1.0, device=k.device)
    state = check_state("state", state, batch, heads, key_dim, value_dim, checks, with_cov=True, check_range=False)
    if checks is not None:
        for name, x in (("q", q), ("k", k), ("v", v)):
            checks.finite(name, x)
        checks.resolve()
    dtype = compute_dtype(q, k, v, g, beta, gamma, *(state or ()))
    design = regression_design(g, beta, gamma, scale=scale, initial_state=state, r_min=r_min, dtype=dtype)
    current = design.prior.initial_state(batch, heads, key_dim, value_dim, track_cov=True, dtype=dtype, device=v.device)
    log_decay = q.new_zeros(shape, dtype=dtype) if g is None else design.dynamics.log_decay
    output, current, variance = bayes_step_core(
        q.to(dtype), k.to(dtype), v.to(dtype), log_decay, design.write.noise, design.dynamics.retention, current, scale
    )
    if checks is not None:
        checks.require(
            torch.isfinite(output.detach()).all(),
            lambda: (
                "the step's output is not finite although its inputs are: the covariance became singular "
                "(γ = 1 with r = 0) or values overflowed; raise r_min or rescale the inputs"
            ),
        )
        checks.resolve()
    return FilterOutput(output.to(v.dtype), current, variance)
