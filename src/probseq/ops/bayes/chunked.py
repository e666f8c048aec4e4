"""Exact chunk-parallel form of the regression design — the Bayesian Layer's training path (docs/chunked-algorithm.md).

Within a chunk of length ``C`` starting from ``(M_0, P_0)``, with in-chunk cumulative products
``G_t = ∏_{i≤t} γ_i`` and ``A_t = ∏_{i≤t} α_i`` (every ratio from
:func:`~probseq.ops.segsum.segment_ratios`, in log space).
Matrices hold one token per *row* (``K`` is ``[C, K]``), as in docs/chunked-algorithm.md; symbols and
their names in the code: docs/notation.md.

docs/chunked-algorithm.md §3 relates the algorithm in the certainty ``Z = I − P`` to this one: substituting
``R = K Z_0 Kᵀ = S − K P_0 Kᵀ`` gives the same algebra in ``P``, which never forms a difference of
near-equal numbers when ``P → 0`` (recursive least squares). With ``K̂ = diag(√G) K``,
``g_it = sqrt(G_i/G_t)`` and ``1 − G_t`` from :func:`~probseq.ops.segsum.one_minus_exp`:

Covariance path (keys, gates, ``r`` and ``P_0`` only; sequential over chunks through ``P``):
  1. ``S = K Kᵀ``.
  2. ``B_it = g_it (1 − G_t) S_it + (K̂ P_0 K̂ᵀ)_it + δ_it r_i`` (``i ≥ t``, mirrored) — one ``baddbmm``.
  3. ``B = F Fᵀ`` (Cholesky); the squared pivots ``s_t = F_tt²`` are the innovation variances.
  4. ``X = (g ∘ F)⁻¹ ((1 − G) ∘ K + diag(G) K P_0)``, one non-unit triangular solve; the write
     directions are ``u_t = P_t^- k_t = √s_t x_t`` and the write keys ``w_t = x_t / √s_t``.
  5. ``P_C = (1 − G_C) I + G_C P_0 − Σ_i (G_C/G_i) x_i x_iᵀ``; symmetrised at the end.

Mean path (a generalised delta rule, erase keys ``K``, write keys ``W``):
  6. ``(I + T) E = V − diag(A) K M_0ᵀ``, ``T_ij = (A_i/A_j) k_iᵀ w_j`` strictly lower: rows of ``E`` are
     the innovations ``e_t``.
  7. ``O = diag(A) Q̃ M_0ᵀ + Ω E``, ``Ω_tj = (A_t/A_j) q̃_tᵀ w_j`` for ``j ≤ t``.
  8. ``σ²_t = (1 − G_t)‖q̃_t‖² + G_t q̃_tᵀ P_0 q̃_t − Σ_{j≤t} (G_t/G_j)(x_jᵀ q̃_t)²``.
  9. ``M_C = A_C M_0 + Eᵀ diag(A_C/A_j) W``.

With the covariance reset (``γ ≡ 0``: ``retention is None``) the covariance path is skipped: ``u = k``,
``s_t = ‖k_t‖² + r_t`` — the Gated DeltaNet chunk algorithm.

Because step 6 does not involve ``M_0``, it is solved for all chunks at once (``Ṽ = (I+T)⁻¹ V``,
``K̃ = (I+T)⁻¹ diag(A) K``); the loop over chunks then only carries ``M`` (two products per chunk)
and step 7 runs for all chunks afterwards. The covariance path must run chunk by chunk (``B``
depends on ``P_0``).

Steps 2–5 run in :func:`~probseq.ops.bayes.covariance_scan.covariance_path`: PyTorch ops and
:func:`~probseq.ops.bayes.covariance_scan.covariance_scan` (its backward written out), or on a CPU one compiled kernel
(:mod:`probseq.ops.bayes.native`).

Per chunk per head the cost is ``O(C K² + C²(K+V) + C³ + C K V)``.

Everything runs in float32 (float64 for float64 inputs); per-chunk tensors come from ``unbind``
(a slice's backward would allocate a full-size gradient per chunk, quadratic in ``T``).
"""

from __future__ import annotations

import torch
from torch import Tensor

from probseq.ops.bayes.covariance_scan import covariance_path, retention_terms
from probseq.ops.chunks import from_chunks, to_chunks
from probseq.ops.segsum import log_retention, segment_ratios
from probseq.ops.triangular import solve_lower
from probseq.types import BayesState


def bayes_chunked(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    log_decay: Tensor,
    noise: Tensor,
    retention: Tensor | None,
    state: BayesState,
    scale: float,
    chunk_size: int,
    output_variance: bool,
    covariance_dtype: torch.dtype | None = None,
    mean_chunk_size: int | None = None,
) -> tuple[Tensor, BayesState, Tensor | None, Tensor | None]:
    """Chunk-parallel exact filter on validated inputs in the compute dtype (names: docs/notation.md).

    Padding tokens (``k = 0``, ``α = γ = 1``, ``r = 1``) leave the state unchanged.

    Args:
        q, k: ``[B, T, H, K]``; v: ``[B, T, H, V]``; log_decay ``log α``, noise ``r``: ``[B, T, H]``;
            retention ``γ``: ``[B, T, H]`` or ``None`` (covariance reset).
        state: ``BayesState(mean [B, H, V, K], cov [B, H, K, K])``.
        covariance_dtype: dtype of steps 1–5 (``None``: the compute dtype).
        chunk_size: the chunk length of steps 1–5 (and of 6–9 unless ``mean_chunk_size`` is given).
        mean_chunk_size: the chunk length of steps 6–9 (``None``: ``chunk_size``). The write keys ``w_t`` are
            per token, so the mean path may chunk the sequence differently from the covariance path: the
            covariance path is cheapest at short chunks (its C × C factorisation is sequential), the mean
            path at the longer ones Gated DeltaNet uses.

    Returns:
        ``(output [B, T, H, V], state, variance [B, T, H] or None, failed)``; ``failed`` is a bool scalar
        tensor, true when a chunk's Cholesky factorisation failed (``None`` on the reset path). The
        caller decides whether to synchronise on it (:func:`probseq.ops.run.filter_design`).
    """
    batch, length, heads, key_dim = k.shape
    size = chunk_size
    mean_size = mean_chunk_size or size
    q_tokens, k_tokens = q * scale, k
    q, k, v, log_decay = (to_chunks(x, mean_size) for x in (q_tokens, k_tokens, v, log_decay))
    mean = state.mean.flatten(0, 1)  # [B·H, V, K]

    # In-chunk decay ratios (mean path): A_t and A_t/A_j, lower triangular.
    decay_cum = log_decay.cumsum(-1).exp()  # [N, B·H, C]
    decay_ratio = segment_ratios(log_decay)  # [N, B·H, C, C]

    if retention is None:
        noise = to_chunks(noise, mean_size, pad_value=1.0)
        # Covariance reset: P_t^- = I, so u_t = k_t and s_t = ‖k_t‖² + r_t (Gated DeltaNet).
        s = ((k * k).sum(-1) + noise).clamp_min(torch.finfo(k.dtype).tiny)
        w = k / s[..., None]
        failed = None
    else:
        # The covariance path may run in a wider dtype (docs/numerics.md, "Accuracy per regime"): near recursive
        # least squares its chunk matrix has condition ~1/r, and float64 there restores float32 accuracy.
        wide = covariance_dtype or k.dtype
        # The covariance path runs at chunks of `size`. When the mean path's chunks are a multiple of them (and no
        # variance is asked for, which is per covariance chunk), it takes the mean path's chunked tensors as they are
        # (rows of mean_size / size chunks): nothing is re-chunked on the way in or out.
        layout = mean_size if mean_size == size or (mean_size % size == 0 and not output_variance) else size
        qc = None if not output_variance else q if layout == mean_size else to_chunks(q_tokens, size)
        kc = k if layout == mean_size else to_chunks(k_tokens, size)
        noise = to_chunks(noise, layout, pad_value=1.0)
        # a zero key writes nothing whatever r is (u_t = P⁻k_t = 0), but with r = 0 its row and column of the chunk
        # matrix would be zero (no Cholesky): give it r = 1, as the chunks' padding gets — exact, not a change
        noise = torch.where(kc.abs().amax(-1) == 0, 1.0, noise)  # = (kc == 0).all(-1), 5× faster on a CPU
        paths = _covariance_path(
            None if qc is None else qc.to(wide),
            *(t.to(wide) for t in (kc, noise, to_chunks(retention, layout, pad_value=1.0), state.cov.flatten(0, 1))),
            output_variance,
            chunk=size,
        )
        x, pivot, retention_ratio, prior_var, cov_final, failed = (
            t.to(k.dtype) if t is not None and t.is_floating_point() else t for t in paths
        )
        w = x / pivot[..., None]
        if layout != mean_size:
            w = to_chunks(from_chunks(w, length, batch), mean_size)

    # 6. (I + T) Ẽ = ·, solved for all chunks at once (T strictly lower; unit diagonal implied).
    t_low = decay_ratio * (k @ w.transpose(-1, -2))
    v_tilde, k_tilde = solve_lower(t_low, torch.cat([v, decay_cum[..., None] * k], dim=-1), unitriangular=True).split(
        [v.shape[-1], key_dim], dim=-1
    )
    w_decayed = decay_ratio[..., -1, :, None] * w  # 9. diag(A_C/A_j) W
    decay_chunk = decay_cum[..., -1, None, None]  # A_C

    starts, innovations = [], []
    for v_n, k_n, w_n, decay_n in zip(v_tilde.unbind(0), k_tilde.unbind(0), w_decayed.unbind(0), decay_chunk.unbind(0)):
        innovation = torch.baddbmm(v_n, k_n, mean.transpose(-1, -2), alpha=-1)  # rows e_t = ṽ_t − k̃_t M_0ᵀ
        starts.append(mean)
        innovations.append(innovation)
        mean = torch.baddbmm(decay_n * mean, innovation.transpose(-1, -2), w_n)  # 9.
    starts, innovations = torch.stack(starts), torch.stack(innovations)
    omega = decay_ratio * (q @ w.transpose(-1, -2))  # 7. Ω (zero above the diagonal)
    output = (decay_cum[..., None] * q) @ starts.transpose(-1, -2) + omega @ innovations
    output = from_chunks(output, length, batch)

    if retention is None:
        # P_T = I − u uᵀ/s of the last real token (the covariance is reset before every write).
        last = (length - 1) % mean_size
        u_last = k[-1, :, last] * s[-1, :, last, None].rsqrt()
        cov = torch.eye(key_dim, dtype=k.dtype, device=k.device) - u_last[..., :, None] * u_last[..., None, :]
    else:
        cov = cov_final

    variance = None
    if output_variance:
        if retention is None:  # only the token's own write survives the reset
            variance = (q * q).sum(-1) - (q * k).sum(-1).square() / s
        else:  # 8., with (u_jᵀ q̃_t)² / s_j = (x_jᵀ q̃_t)²
            variance = prior_var - (retention_ratio * (qc @ x.transpose(-1, -2)).square()).sum(-1)
        variance = from_chunks(variance, length, batch)
    unflat = (batch, heads)
    return output, BayesState(mean.unflatten(0, unflat), cov.unflatten(0, unflat)), variance, failed


def _covariance_path(
    q: Tensor | None,
    k: Tensor,
    noise: Tensor,
    retention: Tensor,
    cov0: Tensor,
    output_variance: bool,
    chunk: int | None = None,
) -> tuple[Tensor, Tensor, Tensor, Tensor | None, Tensor, Tensor]:
    """Steps 1–5, chunk by chunk through the covariance ``P`` (the P-form: docs/chunked-algorithm.md §3).

    Args:
        q, k: ``[N, B·H, C, K]`` (``q`` already scaled; only read, and may be ``None``, without ``output_variance``);
            noise ``r``, retention ``γ``: ``[N, B·H, C]``; cov0: the chunk-start ``P_0`` ``[B·H, K, K]``.
        chunk: the covariance path's chunk length when it is shorter than ``C``, a divisor (each row then holds
            ``C / chunk`` chunks: :func:`~probseq.ops.bayes.covariance_scan.covariance_path`; not with
            ``output_variance``).

    Returns:
        ``x [N, B·H, C, K]`` (``u_t = √s_t x_t``), the pivots ``√s [N, B·H, C]``, ``G_t/G_j [N, B·H, C, C]``
        and the prior part of the variance ``(1 − G_t)‖q̃_t‖² + G_t q̃_tᵀ P_0 q̃_t`` ``[N, B·H, C]`` (both
        ``None`` unless ``output_variance``), the final covariance ``P [B·H, K, K]`` and ``failed`` (a bool
        scalar: some chunk matrix was not positive definite; checked by the caller, without a sync here).
    """
    half_log_retention = 0.5 * log_retention(retention)
    # the in-chunk retention terms (retention_terms), step 2's chunk-local inputs (scan_inputs), then 3–5 chunk by chunk
    # (covariance_scan: its backward is written out); on a CPU all in one compiled kernel (covariance_path, native.py)
    terms = retention_terms(half_log_retention) if output_variance else None
    xs, pivots, starts, cov, info = covariance_path(k, noise, half_log_retention, cov0, terms, chunk)
    failed = (info != 0).any()
    cov = 0.5 * (cov + cov.transpose(-1, -2))
    if not output_variance:
        return xs, pivots, None, None, cov, failed
    retention_ratio_sqrt, retention_cum_sqrt, reset, _ = terms
    retention_cum = retention_cum_sqrt.square()  # G_t
    prior_var = reset * (q * q).sum(-1) + retention_cum * ((q @ starts) * q).sum(-1)
    return xs, pivots, retention_ratio_sqrt.square(), prior_var, cov, failed  # G_t/G_j
