"""Any design model's exact filter, in the form ``impl`` — the one dispatcher of the functional core.

``impl`` is resolved in one place (:func:`~probseq.types.resolve_impl`):

- ``"reference"`` — :func:`probseq.design.reference_filter`, the token loop that asks each part of the
  design model for its step (docs/design-model.md); float64-capable.
- ``"recurrent"`` — the fused per-token update used for decoding (:mod:`probseq.ops.bayes.recurrent`,
  :mod:`probseq.ops.superposition.recurrent`).
- ``"chunked"`` — the exact chunk-parallel training form (docs/chunked-algorithm.md).
- ``"auto"`` — ``recurrent`` for a single token, else ``chunked``.

All forms return :class:`~probseq.types.FilterOutput`, compute in :func:`~probseq.design.compute_dtype`
of all inputs and agree to float rounding (tests/). :func:`run_filter` is the public entry for a
hand-built design model; :func:`filter_design` is what every public entry point calls once its
inputs are validated.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from probseq.design import (
    R_MAX,
    DesignModel,
    LinearReadout,
    MemoryDynamics,
    RegressionWrite,
    SuperpositionWrite,
    compute_dtype,
    reference_filter,
)
from probseq.ops.bayes.chunked import bayes_chunked
from probseq.ops.bayes.native import MAX_CHUNK
from probseq.ops.bayes.recurrent import bayes_recurrent
from probseq.ops.precision import full_precision
from probseq.ops.superposition.chunked import superposition_chunked
from probseq.ops.superposition.recurrent import superposition_recurrent
from probseq.ops.validation import (
    ValueChecks,
    check_chunk_size,
    check_covariance_dtype,
    check_cu_seqlens,
    check_gate,
    check_qkv,
    check_scale,
    check_state,
)
from probseq.ops.varlen import Packing
from probseq.types import BayesState, FilterOutput, Impl, resolve_impl

SEGMENT_CHUNKS = 64  # the chunked forms run over segments of at most this many chunks


def run_filter(
    design: DesignModel,
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    impl: Impl = "auto",
    chunk_size: int = 64,
    output_final_state: bool = False,
    output_variance: bool = False,
    cu_seqlens: Tensor | None = None,
    validate: bool = True,
    covariance_dtype: torch.dtype | None = None,
    mean_chunk_size: int | None = None,
) -> FilterOutput:
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
        validate: check values (finiteness, gate ranges, the prior's range, a numerical breakdown of the
            result) with one host synchronisation; ``False`` skips them (structure is always checked).
        covariance_dtype: ``torch.float64`` runs the chunked form's covariance path in float64 (float32
            accuracy near recursive least squares, where float32 loses up to 1e-2; docs/numerics.md);
            ``None`` uses the compute dtype.
        mean_chunk_size: regression designs only: the chunk length of the chunked form's mean path
            (``chunk_size`` then chunks only the covariance path; without a retention, the covariance reset, there
            is no covariance path and this is the one chunk length); ``None``: ``chunk_size``. Superposition
            designs have no covariance path and refuse it.

    Returns:
        :class:`FilterOutput` ``(output [B, T, H, V], state or None, variance [B, T, H] or None)``.
    """
    batch, length, heads, key_dim, value_dim = check_qkv(q, k, v)
    form = resolve_impl(impl, length)
    chunk_size = check_chunk_size(chunk_size)
    mean_chunk_size = None if mean_chunk_size is None else check_chunk_size(mean_chunk_size, "mean_chunk_size")
    covariance_dtype = check_covariance_dtype(covariance_dtype)
    checks = ValueChecks() if validate else None
    cu_seqlens = check_cu_seqlens(cu_seqlens, batch, length, checks)
    batch_state = batch if cu_seqlens is None else cu_seqlens.numel() - 1
    design = _check_design(design, (batch, length, heads), key_dim, value_dim, batch_state, checks, k.device)
    if mean_chunk_size is not None and not design.tracks_covariance:
        raise ValueError("mean_chunk_size is for regression designs; a superposition design has one chunk length")
    if checks is not None:
        for name, x in (("q", q), ("k", k), ("v", v)):
            checks.finite(name, x)
        checks.resolve()
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


def _check_design(
    design: DesignModel,
    shape: tuple[int, int, int],
    key_dim: int,
    value_dim: int,
    batch_state: int,
    checks: ValueChecks | None,
    device: torch.device,
) -> DesignModel:
    """Validate a hand-built design's per-token tensors and prior; return it with a symmetrised prior covariance."""
    if not isinstance(design, DesignModel):
        raise ValueError(f"design must be a probseq.design.DesignModel, got {type(design).__name__}")
    layout = "[B, T, H]"
    regression = isinstance(design.write, RegressionWrite)
    dyn = design.dynamics
    check_gate(
        "g (log decay)",
        dyn.log_decay,
        shape,
        layout,
        checks,
        high=0.0,
        allow_channel=None if regression else key_dim,
        device=device,
    )
    if dyn.retention is not None and not regression:
        raise ValueError(
            "gamma (certainty retention) applies to regression designs only; the superposition "
            "design tracks no covariance"
        )
    check_gate("gamma (certainty retention)", dyn.retention, shape, layout, checks, low=0.0, high=1.0, device=device)
    if regression:
        check_gate("noise r", design.write.noise, shape, layout, checks, low=0.0, high=R_MAX, device=device)
    elif isinstance(design.write, SuperpositionWrite):
        check_gate("beta (evidence weight)", design.write.weight, shape, layout, checks, low=0.0, device=device)
        if checks is not None and design.write.weight is not None:
            checks.finite("beta (evidence weight)", design.write.weight)
    else:
        raise ValueError(
            f"design.write must be RegressionWrite or SuperpositionWrite, got {type(design.write).__name__}"
        )
    if not isinstance(design.readout, LinearReadout):
        raise ValueError(f"design.readout must be LinearReadout, got {type(design.readout).__name__}")
    check_scale(design.readout.scale, key_dim)
    if design.prior.mean is None and design.prior.cov is not None:
        raise ValueError("initial_state.mean must be given with initial_state.cov")
    given = None if design.prior.mean is None else BayesState(design.prior.mean, design.prior.cov)
    prior = check_state("initial_state", given, batch_state, shape[2], key_dim, value_dim, checks, with_cov=regression)
    if prior is None:
        return design
    return DesignModel(type(design.prior)(prior.mean, prior.cov), design.dynamics, design.write, design.readout)


def filter_design(
    design: DesignModel,
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    form: str,
    chunk_size: int,
    output_final_state: bool,
    output_variance: bool,
    cu_seqlens: Tensor | None,
    validate: bool,
    covariance_dtype: torch.dtype | None = None,
    mean_chunk_size: int | None = None,
) -> FilterOutput:
    """Filter validated inputs: compute dtype, varlen packing, dispatch to one form, and (with ``validate``)
    the check that the result is finite — all with the shapes of :func:`run_filter`.

    The compute dtype is :func:`~probseq.design.compute_dtype` of every input; the design's tensors are
    cast to it before any form runs, so derived gates are never formed in half precision.
    """
    dtype = compute_dtype(q, k, v, *design.tensors())
    design = design.to(dtype)
    packing = None if cu_seqlens is None else Packing(cu_seqlens, k.device)
    padded = design
    k_packed = k
    if packing is not None:
        padded, q, k, v = _pad_sequences(design, q, k, v, packing)
    with full_precision(k.device.type):  # the forms compute in `dtype`; autocast must not cast their matmuls down
        result, failed = _dispatch(
            padded, q, k, v, form, chunk_size, output_final_state, output_variance, covariance_dtype, mean_chunk_size
        )
    if packing is not None:
        state = result.state
        if state is not None and design.tracks_covariance and design.dynamics.retention is None:
            state = BayesState(state.mean, _reset_final_cov(design, k_packed.to(dtype), packing))
        result = FilterOutput(packing.unpad(result.output), state, packing.unpad(result.variance))
    if validate:
        checks = ValueChecks()
        if failed is not None:
            checks.require(
                ~failed,
                lambda: (
                    "the chunk covariance matrix lost positive definiteness (γ ≈ 1 and β ≈ 1 over more than K tokens "
                    "of a chunk); raise r_min (the floor on the write noise), use a smaller chunk_size or "
                    "impl='recurrent'"
                ),
            )
        for name, x in (("output", result.output), ("variance", result.variance)):
            if x is not None:
                checks.require(
                    torch.isfinite(x.detach()).all(),
                    lambda name=name: (
                        f"the filter's {name} is not finite although its inputs are: the covariance became singular "
                        "(γ = 1 and r = 0, i.e. r_min = 0 with β = 1, after more writes than key dimensions) or "
                        "values overflowed; raise r_min or rescale the inputs"
                    ),
                )
        checks.resolve()
    return result


def _pad_sequences(
    design: DesignModel, q: Tensor, k: Tensor, v: Tensor, packing: Packing
) -> tuple[DesignModel, Tensor, Tensor, Tensor]:
    """Packed ``[1, T]`` → padded ``[S, T_max]``, padding with state-preserving tokens (``k = 0``, ``α = 1``,
    ``γ = 1``). Without a retention tensor (covariance reset) the padding resets ``P``; the final covariance
    is then rebuilt from each sequence's last token (:func:`_reset_final_cov`)."""
    dyn, write = design.dynamics, design.write
    dynamics = MemoryDynamics(packing.pad(dyn.log_decay, 0.0), packing.pad(dyn.retention, 1.0))
    if isinstance(write, RegressionWrite):
        write = RegressionWrite(packing.pad(write.noise, 1.0))
    else:
        write = SuperpositionWrite(packing.pad(write.weight, 1.0))
    design = DesignModel(design.prior, dynamics, write, design.readout)
    return design, packing.pad(q), packing.pad(k), packing.pad(v)


def _reset_final_cov(design: DesignModel, k: Tensor, packing: Packing) -> Tensor:
    """Final covariance of each packed sequence under the covariance reset: ``P = I − k kᵀ/s`` of its last
    token (``s = ‖k‖² + r``), or the prior covariance for an empty sequence.

    Args:
        k: packed keys ``[1, T, H, K]``.

    Returns:
        ``[S, H, K, K]``.
    """
    last = packing.last_index  # [S], clamped to 0 for empty sequences
    k_last = k[0, last]  # [S, H, K]
    s = (k_last.square().sum(-1) + design.write.noise[0, last]).clamp_min(torch.finfo(k.dtype).tiny)
    u = k_last * s.rsqrt()[..., None]
    heads, key_dim = k.shape[2], k.shape[3]
    eye = torch.eye(key_dim, dtype=k.dtype, device=k.device)
    cov = eye - u[..., :, None] * u[..., None, :]
    prior = eye.expand(packing.num_sequences, heads, key_dim, key_dim) if design.prior.cov is None else design.prior.cov
    return torch.where(packing.nonempty[:, None, None, None], cov, prior)


def _dispatch(
    design: DesignModel,
    q: Tensor,
    k: Tensor,
    v: Tensor,
    form: str,
    chunk_size: int,
    output_final_state: bool,
    output_variance: bool,
    covariance_dtype: torch.dtype | None,
    mean_chunk_size: int | None = None,
) -> tuple[FilterOutput, Tensor | None]:
    """One form on inputs already in the design's dtype. Returns the output and the chunked form's
    factorisation failure flag (``None`` for the other forms)."""
    batch, length, heads, key_dim = k.shape
    regression = design.tracks_covariance
    dtype = compute_dtype(q, k, v, *design.tensors())  # the design is already in it
    out_dtype = v.dtype
    if batch * length * heads == 0:  # nothing to filter: the prior is the final state
        state = design.prior.initial_state(
            batch, heads, key_dim, v.shape[-1], track_cov=regression, dtype=dtype, device=v.device
        )
        variance = v.new_zeros(v.shape[:3]) if output_variance and regression else None
        return FilterOutput(v.clone(), state if output_final_state else None, variance), None
    if form == "reference":
        return reference_filter(
            design, q, k, v, output_final_state=output_final_state, output_variance=output_variance
        ), None
    q, k, v = (x.to(dtype) for x in (q, k, v))
    state = design.prior.initial_state(
        batch, heads, key_dim, v.shape[-1], track_cov=regression, dtype=dtype, device=v.device
    )
    if mean_chunk_size is None:
        chunk_size = mean_chunk_size = balanced_chunk_size(chunk_size, length)
    else:
        chunk_size, mean_chunk_size = balanced_chunk_sizes(chunk_size, mean_chunk_size, length)
    if regression:
        output, state, variance, failed = _regression(
            design, q, k, v, state, form, chunk_size, output_variance, covariance_dtype, mean_chunk_size
        )
    else:
        output, state, variance, failed = _superposition(design, q, k, v, state, form, chunk_size)
    return FilterOutput(output.to(out_dtype), state if output_final_state else None, variance), failed


def _regression(
    design: DesignModel,
    q: Tensor,
    k: Tensor,
    v: Tensor,
    state: BayesState,
    form: str,
    chunk_size: int,
    output_variance: bool,
    covariance_dtype: torch.dtype | None,
    mean_chunk_size: int,
) -> tuple[Tensor, BayesState, Tensor | None, Tensor | None]:
    log_decay = design.dynamics.log_decay
    if log_decay is None:
        log_decay = k.new_zeros(k.shape[:3])
    noise, retention, scale = design.write.noise, design.dynamics.retention, design.readout.scale
    if form == "recurrent":
        output, state, variance = bayes_recurrent(q, k, v, log_decay, noise, retention, state, scale)
        return output, state, variance if output_variance else None, None
    if retention is None:  # the covariance reset has no covariance path: every chunk is the mean path's
        chunk_size = mean_chunk_size
    outputs, variances, failures = [], [], []
    # segments of SEGMENT_CHUNKS of the longer chunks (exact for any lengths: a segment's last chunk may be padded)
    segment = max(chunk_size, mean_chunk_size)
    for q_s, k_s, v_s, log_decay_s, noise_s, retention_s in _segments(segment, q, k, v, log_decay, noise, retention):
        out, state, var, failed = bayes_chunked(
            q_s,
            k_s,
            v_s,
            log_decay_s,
            noise_s,
            retention_s,
            state,
            scale,
            chunk_size,
            output_variance,
            covariance_dtype,
            mean_chunk_size,
        )
        outputs.append(out)
        variances.append(var)
        failures.append(failed)
    failed = None if retention is None else torch.stack(failures).any()
    return (torch.cat(outputs, dim=1), state, torch.cat(variances, dim=1) if output_variance else None, failed)


def _superposition(
    design: DesignModel, q: Tensor, k: Tensor, v: Tensor, state: BayesState, form: str, chunk_size: int
) -> tuple[Tensor, BayesState, None, None]:
    log_decay, weight = design.dynamics.log_decay, design.write.weight
    scale, mean = design.readout.scale, state.mean
    if form == "recurrent":
        output, mean = superposition_recurrent(q, k, v, log_decay, weight, mean, scale)
    else:
        outputs = []
        for q_s, k_s, v_s, log_decay_s, weight_s in _segments(chunk_size, q, k, v, log_decay, weight):
            out, mean = superposition_chunked(q_s, k_s, v_s, log_decay_s, weight_s, mean, scale, chunk_size)
            outputs.append(out)
        output = torch.cat(outputs, dim=1)
    return output, BayesState(mean, None), None, None


def balanced_chunk_size(chunk_size: int, length: int) -> int:
    """The chunk length the chunked forms run at: as many chunks as ``chunk_size`` needs for ``length`` tokens,
    evenly filled, ``⌈T / ⌈T / C⌉⌉`` — at most ``⌈T/C⌉ − 1`` tokens of padding instead of up to ``C − 1``. Every
    chunk length gives the same filter (to float rounding), so this only removes padding work: at the recall
    study's ``T = 54``, 16 → 14 and 32 → 27 (docs/numerics.md, "Chunk sizes"). A chunk longer than the sequence
    becomes the sequence. Integer arithmetic only, so ``torch.compile`` traces it with a symbolic length."""
    chunks = -(-length // chunk_size)
    return -(-length // chunks)


def balanced_chunk_sizes(chunk_size: int, mean_chunk_size: int, length: int) -> tuple[int, int]:
    """The covariance path's and the mean path's chunk lengths, each :func:`balanced_chunk_size` — except that when
    the mean chunk asked for is ``M`` covariance chunks (32 = 2 · 16), the covariance chunk stays a divisor of the
    balanced mean chunk where that costs little: ``1/M`` of it where ``M`` divides it, else all of it if that is at most
    twice the covariance chunk asked for and at most the compiled kernel's longest (``MAX_CHUNK``, 64). The covariance
    path then reads the mean path's chunks in place (:func:`~probseq.ops.bayes.covariance_scan.covariance_path`). At
    ``T = 256``: 16 and 32; at the recall study's ``T = 54``: 27 and 27 (14 and 27 would re-chunk, 14 and 28 would pad
    two tokens; both measured slower, docs/numerics.md, "Chunk sizes")."""
    mean = balanced_chunk_size(mean_chunk_size, length)
    if mean_chunk_size % chunk_size == 0:
        per_row = mean_chunk_size // chunk_size
        if mean % per_row == 0:
            return mean // per_row, mean
        if mean <= min(2 * chunk_size, MAX_CHUNK):
            return mean, mean
    return balanced_chunk_size(chunk_size, length), mean


def _segments(chunk_size: int, *tensors: Tensor | None) -> list[tuple[Tensor | None, ...]]:
    """Split ``[B, T, ...]`` tensors into time segments of ``SEGMENT_CHUNKS`` chunks (``None`` passes through).

    The chunked forms are exact from any state, so filtering segment by segment, carrying the state,
    changes nothing but the size of every intermediate: ``[N, B·H, C, C]`` tensors stay below the size
    the allocator serves from fresh pages, which keeps long sequences linear in ``T`` (at ``T = 16384``
    unsegmented tensors are 16 MB each and page-fault on every call). ``split`` keeps the backward
    linear too: its gradient is one concatenation.
    """
    size = SEGMENT_CHUNKS * chunk_size
    parts = [[None] * math.ceil(tensors[0].shape[1] / size) if x is None else x.split(size, dim=1) for x in tensors]
    return list(zip(*parts))
