"""Public filter entry points: validate, build the design model, dispatch to one form.

``impl`` is resolved in one place (:func:`~probseq.types.resolve_impl`):

- ``"reference"`` — :func:`probseq.design.reference_filter`, the token loop that asks each part of the
  design model for its step (SPEC §1); float64-capable.
- ``"recurrent"`` — the fused per-token update used for decoding (:mod:`probseq.ops.bayes_recurrent`,
  :mod:`probseq.ops.superposition`).
- ``"chunked"`` — the exact chunk-parallel training form (SPEC §2).
- ``"auto"`` — ``recurrent`` for a single token, else ``chunked``.

All forms return :class:`~probseq.types.FilterOutput` and agree to float rounding (tests/).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from probseq.design import (R_MIN, DesignModel, LinearReadout, MatrixNormalPrior, MemoryDynamics, RegressionWrite,
                            SuperpositionWrite, reference_filter)
from probseq.ops.bayes_chunked import bayes_chunked
from probseq.ops.bayes_recurrent import bayes_recurrent, bayes_step_core
from probseq.ops.superposition import superposition_chunked, superposition_recurrent, superposition_step_core
from probseq.types import BayesState, FilterOutput, Impl, resolve_impl
from probseq.ops.validation import (as_state, check_chunk_size, check_cu_seqlens, check_gate, check_qkv,
                                    check_scale, check_state)
from probseq.ops.varlen import Packing



def compute_dtype(*tensors: Tensor | None) -> torch.dtype:
    """float64 if any input is float64, else float32 (state and factorisations never run in half)."""
    return torch.float64 if any(x is not None and x.dtype == torch.float64 for x in tensors) else torch.float32


def _check_design(design: DesignModel, batch: int, length: int, heads: int, key_dim: int, value_dim: int,
                  batch_state: int) -> DesignModel:
    """Validate the design's per-token tensors and prior; return it with a symmetrised prior covariance."""
    if not isinstance(design, DesignModel):
        raise ValueError(f"design must be a probseq.design.DesignModel, got {type(design).__name__}")
    shape, layout = (batch, length, heads), "[B, T, H]"
    regression = isinstance(design.write, RegressionWrite)
    dyn = design.dynamics
    check_gate("g (log decay)", dyn.log_decay, shape, layout, high=0.0,
               allow_channel=None if regression else key_dim)
    if dyn.retention is not None and not regression:
        raise ValueError("gamma (certainty retention) applies to regression designs only; the superposition "
                         "design tracks no covariance")
    check_gate("gamma (certainty retention)", dyn.retention, shape, layout, low=0.0, high=1.0)
    if regression:
        check_gate("noise r", design.write.noise, shape, layout, low=0.0)
    elif isinstance(design.write, SuperpositionWrite):
        check_gate("beta (evidence weight)", design.write.weight, shape, layout, low=0.0, low_open=True)
    else:
        raise ValueError(f"design.write must be RegressionWrite or SuperpositionWrite, got {type(design.write).__name__}")
    if not isinstance(design.readout, LinearReadout):
        raise ValueError(f"design.readout must be LinearReadout, got {type(design.readout).__name__}")
    check_scale(design.readout.scale, key_dim)
    prior = check_state("initial_state", BayesState(design.prior.mean, design.prior.cov)
                        if design.prior.mean is not None else None, batch_state, heads, key_dim, value_dim,
                        with_cov=regression)
    if design.prior.mean is None and design.prior.cov is not None:
        raise ValueError("initial_state.mean must be given with initial_state.cov")
    if prior is not None:
        design = DesignModel(MatrixNormalPrior(prior.mean, prior.cov), design.dynamics, design.write, design.readout)
    return design


def run_filter(design: DesignModel, q: Tensor, k: Tensor, v: Tensor, *, impl: Impl = "auto",
               chunk_size: int = 64, output_final_state: bool = False, output_variance: bool = False,
               cu_seqlens: Tensor | None = None) -> FilterOutput:
    """The exact filter of any design model, in the form ``impl``.

    Args:
        design: a :class:`~probseq.design.DesignModel`; per-token tensors ``[B, T, H]`` (per-channel
            decay ``[B, T, H, K]`` for superposition designs); prior ``mean [B, H, V, K]``,
            ``cov [B, H, K, K]`` (``B`` = number of sequences with ``cu_seqlens``).
        q, k: ``[B, T, H, K]``; v: ``[B, T, H, V]``. Keys are used as given (no normalisation).
        impl: ``"reference" | "recurrent" | "chunked" | "auto"``.
        chunk_size: chunk length ``C`` of the chunked form.
        output_final_state: return the final :class:`BayesState`.
        output_variance: return the predictive variance (regression designs).
        cu_seqlens: ``[S + 1]`` sequence boundaries of packed inputs (``B == 1``); the state is reset to
            the prior at each boundary, as if each sequence were filtered on its own.

    Returns:
        :class:`FilterOutput` ``(output [B, T, H, V], state or None, variance [B, T, H] or None)``.
    """
    batch, length, heads, key_dim, value_dim = check_qkv(q, k, v)
    form = resolve_impl(impl, length)
    chunk_size = check_chunk_size(chunk_size)
    cu_seqlens = check_cu_seqlens(cu_seqlens, batch, length)
    packing = None if cu_seqlens is None else Packing(cu_seqlens, k.device)
    batch_state = batch if packing is None else packing.num_sequences
    design = _check_design(design, batch, length, heads, key_dim, value_dim, batch_state)
    if packing is not None:
        design, q, k, v = _pad_sequences(design, q, k, v, packing)
    result = _dispatch(design, q, k, v, form, chunk_size, output_final_state, output_variance)
    if packing is not None:
        result = FilterOutput(packing.unpad(result.output), result.state, packing.unpad(result.variance))
    return result


def _pad_sequences(design: DesignModel, q: Tensor, k: Tensor, v: Tensor,
                   packing: Packing) -> tuple[DesignModel, Tensor, Tensor, Tensor]:
    """Packed ``[1, T]`` → padded ``[S, T_max]``, padding with state-preserving tokens."""
    dyn, write = design.dynamics, design.write
    dynamics = MemoryDynamics(packing.pad(dyn.log_decay, 0.0), packing.pad(dyn.retention, 1.0))
    if isinstance(write, RegressionWrite):
        write = RegressionWrite(packing.pad(write.noise, 1.0))
    else:
        write = SuperpositionWrite(packing.pad(write.weight, 1.0))
    design = DesignModel(design.prior, dynamics, write, design.readout)
    return design, packing.pad(q), packing.pad(k), packing.pad(v)


def _dispatch(design: DesignModel, q: Tensor, k: Tensor, v: Tensor, form: str, chunk_size: int,
              output_final_state: bool, output_variance: bool) -> FilterOutput:
    if form == "reference":
        return reference_filter(design, q, k, v, output_final_state=output_final_state,
                                output_variance=output_variance)
    batch, length, heads, key_dim = k.shape
    out_dtype, dtype = v.dtype, compute_dtype(q, k, v)
    q, k, v = (x.to(dtype) for x in (q, k, v))
    regression = design.tracks_covariance
    state = design.prior.initial_state(batch, heads, key_dim, v.shape[-1], track_cov=regression, dtype=dtype,
                                       device=v.device)
    if length == 0:
        variance = v.new_zeros(v.shape[:3]) if output_variance and regression else None
        return FilterOutput(v.to(out_dtype), state if output_final_state else None, variance)
    chunk_size = min(chunk_size, length)  # a chunk longer than the sequence is pure padding
    log_alpha = None if design.dynamics.log_decay is None else design.dynamics.log_decay.to(dtype)
    if regression:
        output, state, variance = _regression(design, q, k, v, log_alpha, state, form, chunk_size, output_variance)
    else:
        output, state, variance = _superposition(design, q, k, v, log_alpha, state, form, chunk_size)
    return FilterOutput(output.to(out_dtype), state if output_final_state else None, variance)


def _regression(design, q, k, v, log_alpha, state, form, chunk_size, output_variance):
    if log_alpha is None:
        log_alpha = k.new_zeros(k.shape[:3])
    noise = design.write.noise.to(k.dtype)
    gamma = None if design.dynamics.retention is None else design.dynamics.retention.to(k.dtype)
    scale = design.readout.scale
    if form == "recurrent":
        output, state, variance = bayes_recurrent(q, k, v, log_alpha, noise, gamma, state, scale)
        return output, state, variance if output_variance else None
    outputs, variances = [], []
    for q_s, k_s, v_s, g_s, r_s, gamma_s in _segments(chunk_size, q, k, v, log_alpha, noise, gamma):
        out, state, var = bayes_chunked(q_s, k_s, v_s, g_s, r_s, gamma_s, state, scale, chunk_size, output_variance)
        outputs.append(out)
        variances.append(var)
    return torch.cat(outputs, dim=1), state, torch.cat(variances, dim=1) if output_variance else None


def _superposition(design, q, k, v, log_alpha, state, form, chunk_size):
    weight = None if design.write.weight is None else design.write.weight.to(k.dtype)
    scale, mean = design.readout.scale, state.mean
    if form == "recurrent":
        output, mean = superposition_recurrent(q, k, v, log_alpha, weight, mean, scale)
    else:
        outputs = []
        for q_s, k_s, v_s, g_s, b_s in _segments(chunk_size, q, k, v, log_alpha, weight):
            out, mean = superposition_chunked(q_s, k_s, v_s, g_s, b_s, mean, scale, chunk_size)
            outputs.append(out)
        output = torch.cat(outputs, dim=1)
    return output, BayesState(mean, None), None


SEGMENT_CHUNKS = 64  # the chunked forms run over segments of at most this many chunks


def _segments(chunk_size: int, *tensors: Tensor | None) -> list[tuple[Tensor | None, ...]]:
    """Split ``[B, T, ...]`` tensors into time segments of ``SEGMENT_CHUNKS`` chunks (``None`` passes through).

    The chunked forms are exact from any state, so filtering segment by segment, carrying the state,
    changes nothing but the size of every intermediate: ``[N, B·H, C, C]`` tensors stay below the size
    the allocator serves from fresh pages, which keeps long sequences linear in ``T`` (at ``T = 16384``
    unsegmented tensors are 16 MB each and page-fault on every call). ``split`` keeps the backward
    linear too: its gradient is one concatenation.
    """
    size = SEGMENT_CHUNKS * chunk_size
    parts = [[None] * math.ceil(tensors[0].shape[1] / size) if x is None else x.split(size, dim=1)
             for x in tensors]
    return list(zip(*parts))


def regression_design(g: Tensor | None, beta: Tensor, gamma: Tensor | None, *, scale: float,
                      initial_state: BayesState | None = None, r_min: float = R_MIN) -> DesignModel:
    """The Bayesian Layer's design model from its gates (SPEC §1.1): ``α = exp(g)``,
    ``r = max((1 − β)/β, r_min)``, retention ``γ`` (``None``: covariance reset)."""
    prior = MatrixNormalPrior() if initial_state is None else MatrixNormalPrior(*initial_state)
    return DesignModel(prior, MemoryDynamics(g, gamma), RegressionWrite.from_strength(beta, r_min),
                       LinearReadout(scale))


def _check_r_min(r_min: float) -> float:
    if isinstance(r_min, bool) or not isinstance(r_min, (int, float)) or not r_min >= 0:
        raise ValueError(f"r_min must be a float >= 0, got {r_min!r}")
    return float(r_min)


def bayes_filter(q: Tensor, k: Tensor, v: Tensor, g: Tensor | None, beta: Tensor, gamma: Tensor | None, *,
                 scale: float | None = None, initial_state: BayesState | None = None,
                 output_final_state: bool = False, output_variance: bool = False, impl: Impl = "auto",
                 chunk_size: int = 64, r_min: float = R_MIN, cu_seqlens: Tensor | None = None) -> FilterOutput:
    """The Bayesian Layer: exact filter of the regression design (SPEC §1.1).

    Args:
        q, k: ``[B, T, H, K]`` queries and keys (used as given; no normalisation inside).
        v: ``[B, T, H, V]`` values.
        g: ``[B, T, H]`` log decay ``≤ 0`` (``α = exp(g)``); ``None`` means ``α = 1``.
        beta: ``[B, T, H]`` write strength in ``(0, 1]``; noise ``r = max((1 − β)/β, r_min)``.
        gamma: ``[B, T, H]`` certainty retention in ``[0, 1]``; ``None`` or all zeros (without grad)
            takes the covariance-reset fast path (Gated DeltaNet).
        scale: query scale, default ``K**-0.5``.
        initial_state: :class:`BayesState` ``(mean [B, H, V, K], cov [B, H, K, K] or None)``; ``None`` is
            the prior ``(0, I)``. The covariance is symmetrised and checked to lie in ``[0, I]``.
        output_final_state, output_variance: return the final state / predictive variance ``[B, T, H]``.
        impl: ``"reference" | "recurrent" | "chunked" | "auto"``.
        chunk_size: ``C`` for the chunked form.
        r_min: floor on ``r`` (``0`` is allowed with ``γ ≡ 0``).
        cu_seqlens: packed variable-length sequences (``B == 1``), see :func:`run_filter`.

    Returns:
        :class:`FilterOutput` ``(output [B, T, H, V], state, variance)``.
    """
    batch, length, heads, key_dim, _ = check_qkv(q, k, v)
    check_gate("beta", beta, (batch, length, heads), "[B, T, H]", low=0.0, high=1.0, low_open=True)
    if gamma is not None and not gamma.requires_grad and gamma.shape == (batch, length, heads) \
            and bool((gamma == 0).all()):
        gamma = None
    design = regression_design(g, beta, gamma, scale=check_scale(scale, key_dim),
                               initial_state=as_state("initial_state", initial_state),
                               r_min=_check_r_min(r_min))
    return run_filter(design, q, k, v, impl=impl, chunk_size=chunk_size, output_final_state=output_final_state,
                      output_variance=output_variance, cu_seqlens=cu_seqlens)


def superposition_design(g: Tensor | None, beta: Tensor | None, *, scale: float,
                         initial_state: BayesState | Tensor | None = None) -> DesignModel:
    """The linear-attention family's design model (SPEC §1.3)."""
    state = as_state("initial_state", initial_state)
    prior = MatrixNormalPrior() if state is None else MatrixNormalPrior(state.mean, state.cov)
    return DesignModel(prior, MemoryDynamics(g, None), SuperpositionWrite(beta), LinearReadout(scale))


def superposition_filter(q: Tensor, k: Tensor, v: Tensor, g: Tensor | None = None, beta: Tensor | None = None, *,
                         scale: float | None = None, initial_state: BayesState | Tensor | None = None,
                         output_final_state: bool = False, impl: Impl = "auto", chunk_size: int | None = None,
                         cu_seqlens: Tensor | None = None) -> FilterOutput:
    """Exact filter of the superposition design: ``M_t = M_{t-1} ⊙ decay_t + β_t v_t k_tᵀ`` (SPEC §1.3).

    Args:
        q, k: ``[B, T, H, K]``; v: ``[B, T, H, V]``.
        g: log decay ``≤ 0``, ``[B, T, H]`` (scalar per head) or ``[B, T, H, K]`` (per key channel);
            ``None`` means no decay.
        beta: ``[B, T, H]`` evidence weight ``> 0`` (default 1).
        scale: query scale, default ``K**-0.5``.
        initial_state: mean ``[B, H, V, K]`` (a tensor or ``BayesState(mean, None)``).
        chunk_size: default 64 for scalar decay, 16 for per-channel decay (its masks are ``[C, C, K]``).

    Returns:
        :class:`FilterOutput` ``(output [B, T, H, V], BayesState(mean, None) or None, None)``.
    """
    _, _, _, key_dim, _ = check_qkv(q, k, v)
    if chunk_size is None:
        chunk_size = 16 if g is not None and g.dim() == 4 else 64
    design = superposition_design(g, beta, scale=check_scale(scale, key_dim), initial_state=initial_state)
    return run_filter(design, q, k, v, impl=impl, chunk_size=chunk_size, output_final_state=output_final_state,
                      cu_seqlens=cu_seqlens)


def bayes_step(q: Tensor, k: Tensor, v: Tensor, g: Tensor | None, beta: Tensor, gamma: Tensor | None,
               state: BayesState | None, *, scale: float | None = None, r_min: float = R_MIN) -> FilterOutput:
    """One decoding step of the Bayesian Layer, ``O(K² + KV)`` per head at any position.

    Args:
        q, k: ``[B, H, K]``; v: ``[B, H, V]``; g, beta, gamma: ``[B, H]`` (``g``/``gamma`` may be ``None``).
        state: the previous :class:`BayesState` (``None``: the prior). Its shapes are checked, its
            covariance range is not (that costs ``O(K³)``; :func:`bayes_filter` checks it).

    Returns:
        :class:`FilterOutput` ``(output [B, H, V], state, variance [B, H])``, equal to the filter's
        token ``t`` given the state after token ``t − 1``.
    """
    batch, _, heads, key_dim, value_dim = check_qkv(q, k, v, step=True)
    shape = (batch, heads)
    check_gate("g", g, shape, "[B, H]", high=0.0)
    check_gate("beta", beta, shape, "[B, H]", low=0.0, high=1.0, low_open=True)
    check_gate("gamma", gamma, shape, "[B, H]", low=0.0, high=1.0)
    scale = check_scale(scale, key_dim)
    dtype = compute_dtype(q, k, v)
    state = check_state("state", as_state("state", state), batch, heads, key_dim, value_dim, with_cov=True,
                        check_range=False)
    state = MatrixNormalPrior(*(state or (None, None))).initial_state(
        batch, heads, key_dim, value_dim, track_cov=True, dtype=dtype, device=v.device)
    noise = RegressionWrite.from_strength(beta, _check_r_min(r_min)).noise.to(dtype)
    log_alpha = torch.zeros(shape, dtype=dtype, device=v.device) if g is None else g.to(dtype)
    output, state, variance = bayes_step_core(q.to(dtype), k.to(dtype), v.to(dtype), log_alpha, noise,
                                              None if gamma is None else gamma.to(dtype), state, scale)
    return FilterOutput(output.to(v.dtype), state, variance)


def superposition_step(q: Tensor, k: Tensor, v: Tensor, g: Tensor | None = None, beta: Tensor | None = None,
                       state: BayesState | Tensor | None = None, *, scale: float | None = None) -> FilterOutput:
    """One decoding step of the superposition design: ``q, k [B, H, K]``, ``v [B, H, V]``, ``g [B, H]`` or
    ``[B, H, K]``, ``beta [B, H]``.

    Returns:
        :class:`FilterOutput` ``(output [B, H, V], BayesState(mean, None), None)``.
    """
    batch, _, heads, key_dim, value_dim = check_qkv(q, k, v, step=True)
    check_gate("g", g, (batch, heads), "[B, H]", high=0.0, allow_channel=key_dim)
    check_gate("beta", beta, (batch, heads), "[B, H]", low=0.0, low_open=True)
    scale = check_scale(scale, key_dim)
    dtype = compute_dtype(q, k, v)
    state = check_state("state", as_state("state", state), batch, heads, key_dim, value_dim, with_cov=False)
    mean = (torch.zeros(batch, heads, value_dim, key_dim, dtype=dtype, device=v.device) if state is None
            else state.mean.to(dtype))
    output, mean = superposition_step_core(q.to(dtype), k.to(dtype), v.to(dtype),
                                           None if g is None else g.to(dtype),
                                           None if beta is None else beta.to(dtype), mean, scale)
    return FilterOutput(output.to(v.dtype), BayesState(mean, None), None)
