"""The sequential part of the chunked covariance path (steps 3–5 of :mod:`probseq.ops.bayes.chunked`), with a
hand-written backward.

The scan is a loop over chunks of small batched factorisations and solves. Left to autograd, its backward
cost more than twice its forward (a node per op, per chunk; broadcast reductions; the gradient of every
``unbind`` re-stacked); written out (below) it is a second loop of the same kind of calls. Everything before
and after the loop (the chunk-local masks and ratios, batched over all chunks) stays with autograd.

Per chunk (one token per row; ``P`` the chunk-start covariance, ``[B·H, K, K]``):

    pk = K̂ P                               (rows √G_t (P k_t)ᵀ)
    F  = chol(B + pk K̂ᵀ)                   (B: the P-free part of the chunk matrix, symmetric)
    X  = (g ∘ F)⁻¹ (Rb + c ∘ pk)            (g = sqrt(G_i/G_t), c = √G_t, Rb = (1 − G_t) k_t)
    P' = (1 − G_C) I + G_C P − X̃ᵀ X̃,  X̃ = τ ∘ X  (τ = sqrt(G_C/G_i))

Backward of one chunk, given the gradients ``X̄`` (of X), ``d̄`` (of diag F) and ``P̄'`` (of P'):

    X̃̄ = −X̃ (P̄' + P̄'ᵀ);   X̄ += τ ∘ X̃̄;   τ̄ = Σ_k X ∘ X̃̄
    R̄ = (g ∘ F)⁻ᵀ X̄;      (g ∘ F)̄ = −tril(R̄ Xᵀ)
    F̄ = g ∘ (g ∘ F)̄ + diag(d̄);   ḡ = F ∘ (g ∘ F)̄
    B̄ = F⁻ᵀ Φ(Fᵀ F̄) F⁻¹,   Φ(A) = ½ (tril A + (tril₋₁ A)ᵀ)   (torch's symmetric gradient of a Cholesky
                                                          factorisation)
    p̄k = c ∘ R̄ + B̄ K̂;      K̂̄ = B̄ pk + p̄k Pᵀ;      P̄ = G_C P̄' + K̂ᵀ p̄k (+ the gradient of P as an output)
    c̄ = Σ_k pk ∘ R̄;   Ḡ_C = ⟨P, P̄'⟩;   (1 − G_C)̄ = tr P̄'

``P̄`` is carried to the previous chunk. The result equals autograd's to float rounding
(tests/ops/test_covariance_scan.py). Under ``create_graph=True`` (double backward) the backward is instead
autograd through the plain loop (:func:`scan_reference`), exact to any order at autograd's cost.
"""

from __future__ import annotations

import torch
from torch import Tensor

from probseq.ops.bayes import native
from probseq.ops.segsum import one_minus_exp, segment_ratios
from probseq.ops.triangular import solve_lower


def covariance_scan(
    k_hat: Tensor,
    rhs_base: Tensor,
    retention_cum_sqrt: Tensor,
    b_base: Tensor,
    retention_ratio_sqrt: Tensor,
    retention_tail_sqrt: Tensor,
    retention_chunk: Tensor,
    reset_chunk: Tensor,
    cov0: Tensor,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Run the scan over the ``N`` chunks.

    Args:
        k_hat ``K̂``, rhs_base ``Rb``: ``[N, B·H, C, K]``; retention_cum_sqrt ``c``, retention_tail_sqrt ``τ``:
            ``[N, B·H, C, 1]``; b_base ``B`` (symmetric), retention_ratio_sqrt ``g`` (lower triangular):
            ``[N, B·H, C, C]``; retention_chunk ``G_C``, reset_chunk ``1 − G_C``: ``[N, B·H, 1, 1]``;
            cov0: ``[B·H, K, K]``.

    Returns:
        ``x [N, B·H, C, K]``, the pivots ``diag F [N, B·H, C]``, the chunk-start covariances
        ``[N, B·H, K, K]`` (``cov0`` first), the final covariance ``[B·H, K, K]`` (not symmetrised) and
        ``info [N, B·H]`` of the factorisations (non-zero where one failed; not differentiable).
    """
    return _CovarianceScan.apply(
        k_hat,
        rhs_base,
        retention_cum_sqrt,
        b_base,
        retention_ratio_sqrt,
        retention_tail_sqrt,
        retention_chunk,
        reset_chunk,
        cov0,
    )


class _CovarianceScan(torch.autograd.Function):
    @staticmethod
    def forward(ctx, k_hat, rhs_base, cum_sqrt, b_base, ratio_sqrt, tail_sqrt, retention_chunk, reset_chunk, cov0):
        ctx.set_materialize_grads(False)  # an unused output's gradient arrives as None: no zeros to add
        chunks = k_hat.shape[0]
        eye = torch.eye(k_hat.shape[-1], dtype=k_hat.dtype, device=k_hat.device)
        reset_eye = reset_chunk * eye  # (1 − G_C) I of every chunk, [N, B·H, K, K]
        starts = k_hat.new_empty(chunks, *cov0.shape)
        starts[0] = cov0
        xs, pks = torch.empty_like(k_hat), torch.empty_like(k_hat)
        factors_t = torch.empty_like(b_base)  # Fᵀ, row-major (LAPACK returns F column-major: F.mT is contiguous)
        infos = []
        for n in range(chunks):
            cov = starts[n]
            pk = torch.bmm(k_hat[n], cov, out=pks[n])
            factor, info = torch.linalg.cholesky_ex(torch.baddbmm(b_base[n], pk, k_hat[n].transpose(-1, -2)))
            factors_t[n] = factor.transpose(-1, -2)
            infos.append(info)
            x = solve_lower(ratio_sqrt[n] * factor, torch.addcmul(rhs_base[n], cum_sqrt[n], pk))
            xs[n] = x
            x_tail = tail_sqrt[n] * x
            # P' = (1 − G_C) I + G_C P − X̃ᵀ X̃, written where the next chunk reads it
            out = starts[n + 1] if n + 1 < chunks else None
            cov = torch.baddbmm(
                torch.addcmul(reset_eye[n], retention_chunk[n], cov),
                x_tail.transpose(-1, -2),
                x_tail,
                alpha=-1,
                out=out,
            )
        inputs = (k_hat, rhs_base, cum_sqrt, b_base, ratio_sqrt, tail_sqrt, retention_chunk, reset_chunk, cov0)
        ctx.save_for_backward(*inputs, starts, factors_t, xs, pks)
        info = torch.stack(infos)
        ctx.mark_non_differentiable(info)
        return xs, factors_t.diagonal(dim1=-2, dim2=-1), starts, cov, info

    @staticmethod
    def backward(ctx, grad_x, grad_pivots, grad_starts, grad_cov, _grad_info):
        *inputs, starts, factors_t, xs, pks = ctx.saved_tensors
        if torch.is_grad_enabled():  # create_graph=True: differentiate the plain loop, so higher orders are exact
            return _differentiable_backward(inputs, (grad_x, grad_pivots, grad_starts, grad_cov))
        k_hat, _, cum_sqrt, _, ratio_sqrt, tail_sqrt, retention_chunk, _, _ = inputs
        chunks = k_hat.shape[0]
        grad_k_hat, grad_rhs = torch.empty_like(k_hat), torch.empty_like(k_hat)
        grad_cum_sqrt = torch.empty_like(cum_sqrt)
        grad_b, grad_ratio_sqrt = torch.empty_like(factors_t), torch.empty_like(ratio_sqrt)
        grad_tail_sqrt, grad_retention_chunk = torch.empty_like(tail_sqrt), torch.empty_like(retention_chunk)
        grad_reset_chunk = torch.empty_like(retention_chunk)
        grad_cov_next = torch.zeros_like(starts[0]) if grad_cov is None else grad_cov
        for n in reversed(range(chunks)):
            cov, factor, x, pk, kh = starts[n], factors_t[n].transpose(-1, -2), xs[n], pks[n], k_hat[n]
            # P' = (1 − G_C) I + G_C P − X̃ᵀ X̃
            grad_reset_chunk[n] = grad_cov_next.diagonal(dim1=-2, dim2=-1).sum(-1)[..., None, None]
            grad_retention_chunk[n] = (cov * grad_cov_next).sum((-2, -1), keepdim=True)
            x_tail = tail_sqrt[n] * x
            grad_x_tail = -torch.bmm(x_tail, grad_cov_next + grad_cov_next.transpose(-1, -2))
            grad_tail_sqrt[n] = (x * grad_x_tail).sum(-1, keepdim=True)
            grad_x_n = tail_sqrt[n] * grad_x_tail
            if grad_x is not None:
                grad_x_n = grad_x_n + grad_x[n]
            # X = (g ∘ F)⁻¹ R
            scaled_factor = ratio_sqrt[n] * factor
            grad_r = solve_lower(scaled_factor, grad_x_n, transpose=True)
            grad_scaled_factor = -torch.bmm(grad_r, x.transpose(-1, -2)).tril_()
            grad_ratio_sqrt[n] = factor * grad_scaled_factor
            grad_factor = ratio_sqrt[n] * grad_scaled_factor
            if grad_pivots is not None:
                grad_factor.diagonal(dim1=-2, dim2=-1).add_(grad_pivots[n])
            # R = Rb + c ∘ pk
            grad_rhs[n] = grad_r
            grad_cum_sqrt[n] = (pk * grad_r).sum(-1, keepdim=True)
            # F = chol(B + pk K̂ᵀ): torch's symmetric gradient of the factorisation
            phi = torch.bmm(factor.transpose(-1, -2), grad_factor).tril_()
            phi = 0.5 * (phi + phi.tril(-1).transpose(-1, -2))
            grad_matrix = solve_lower(factor, phi, transpose=True)  # F⁻ᵀ Φ
            grad_matrix = solve_lower(factor, grad_matrix.transpose(-1, -2), transpose=True).transpose(-1, -2)  # · F⁻¹
            grad_b[n] = grad_matrix
            grad_pk = torch.baddbmm(cum_sqrt[n] * grad_r, grad_matrix, kh)
            # pk = K̂ P
            grad_k_hat[n] = torch.baddbmm(torch.bmm(grad_matrix, pk), grad_pk, cov.transpose(-1, -2))
            grad_cov = torch.baddbmm(retention_chunk[n] * grad_cov_next, kh.transpose(-1, -2), grad_pk)
            if grad_starts is not None:
                grad_cov = grad_cov + grad_starts[n]
            grad_cov_next = grad_cov
        return (
            grad_k_hat,
            grad_rhs,
            grad_cum_sqrt,
            grad_b,
            grad_ratio_sqrt,
            grad_tail_sqrt,
            grad_retention_chunk,
            grad_reset_chunk,
            grad_cov_next,
        )


def scan_reference(
    k_hat, rhs_base, cum_sqrt, b_base, ratio_sqrt, tail_sqrt, retention_chunk, reset_chunk, cov0
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The same recursion as plain differentiable ops (autograd's own derivatives, to any order): the scan's
    ``(x, pivots, starts, final covariance)``."""
    eye = torch.eye(k_hat.shape[-1], dtype=k_hat.dtype, device=k_hat.device)
    cov, xs, pivots, starts = cov0, [], [], []
    for n in range(k_hat.shape[0]):
        starts.append(cov)
        pk = k_hat[n] @ cov
        factor = torch.linalg.cholesky_ex(b_base[n] + pk @ k_hat[n].transpose(-1, -2))[0]
        x = torch.linalg.solve_triangular(ratio_sqrt[n] * factor, rhs_base[n] + cum_sqrt[n] * pk, upper=False)
        x_tail = tail_sqrt[n] * x
        cov = reset_chunk[n] * eye + retention_chunk[n] * cov - x_tail.transpose(-1, -2) @ x_tail
        xs.append(x)
        pivots.append(factor.diagonal(dim1=-2, dim2=-1))
    return torch.stack(xs), torch.stack(pivots), torch.stack(starts), cov


def _differentiable_backward(inputs, grads, function=None) -> tuple[Tensor | None, ...]:
    """The scan's backward as a graph (``create_graph=True``): autograd through :func:`scan_reference` (or
    ``function``, the same outputs from other inputs)."""
    outputs = (function or scan_reference)(*inputs)
    used = [(out, grad) for out, grad in zip(outputs, grads) if grad is not None]
    wanted = [t for t in inputs if t.requires_grad]
    result = iter(
        torch.autograd.grad(
            [out for out, _ in used], wanted, [grad for _, grad in used], create_graph=True, allow_unused=True
        )
        if used and wanted
        else [None] * len(wanted)
    )
    return tuple(next(result) if t.requires_grad else None for t in inputs)


def scan_inputs(
    k: Tensor, noise: Tensor, ratio_sqrt: Tensor, cum_sqrt: Tensor, reset: Tensor, retention_chunk: Tensor
) -> tuple[Tensor, ...]:
    """Step 2 of the chunked form: the scan's chunk-local inputs (all but ``cov0``, in :func:`covariance_scan`'s order)
    from the chunked keys ``k [N, B·H, C, K]``, the noise ``r``, ``g = sqrt(G_i/G_t)`` ``[N, B·H, C, C]`` (lower
    triangular), ``c = √G_t``, ``1 − G_t`` ``[N, B·H, C]`` and ``G_C`` ``[N, B·H]``.

    ``B_base = M ∘ (K Kᵀ) + diag(r)`` with ``M_it = g_it (1 − G_t)`` for ``i > t`` (mirrored) and ``M_tt = 1 − G_t``;
    ``K̂ = diag(c) K``; ``R_b = (1 − G) ∘ K``; ``τ = sqrt(G_C/G_t)``, the last row of ``g``.
    """
    mask = ratio_sqrt * reset[..., None, :]
    mask = mask + mask.transpose(-1, -2)
    mask.diagonal(dim1=-2, dim2=-1).sub_(reset)  # the diagonal (1 − G_t) was counted twice by the mirroring
    b_base = mask * (k @ k.transpose(-1, -2))
    b_base.diagonal(dim1=-2, dim2=-1).add_(noise)
    return (
        cum_sqrt[..., None] * k,
        reset[..., None] * k,
        cum_sqrt[..., None],
        b_base,
        # a node of its own: B_base and τ are made from ratio_sqrt, and the double backward
        # (_differentiable_backward) asks autograd for the gradient of each input separately — the same node here would
        # count the paths through B_base and τ twice
        ratio_sqrt.view_as(ratio_sqrt),
        ratio_sqrt[..., -1, :, None],
        retention_chunk[..., None, None],
        reset[..., -1, None, None],
    )


def retention_terms(half_log_retention: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The in-chunk retention terms of step 2 from ``h = ½ log γ`` ``[N, B·H, C]``, in :func:`scan_inputs`' order:
    ``g = sqrt(G_i/G_t)`` ``[N, B·H, C, C]`` (lower triangular with a unit diagonal:
    :func:`~probseq.ops.segsum.segment_ratios`), ``c = √G_t`` and ``1 − G_t`` ``[N, B·H, C]`` (the latter from
    :func:`~probseq.ops.segsum.one_minus_exp`: accurate when ``G_t ≈ 1``), and ``G_C`` ``[N, B·H]``."""
    cum = half_log_retention.cumsum(-1)
    cum_sqrt = cum.exp()
    return segment_ratios(half_log_retention), cum_sqrt, one_minus_exp(2 * cum), cum_sqrt[..., -1].square()


def covariance_path(
    k: Tensor,
    noise: Tensor,
    half_log_retention: Tensor,
    cov0: Tensor,
    terms: tuple[Tensor, Tensor, Tensor, Tensor] | None = None,
    chunk: int | None = None,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Steps 2–5 of the chunked form: :func:`retention_terms`, :func:`scan_inputs` and :func:`covariance_scan`, or,
    where the compiled CPU kernel applies (:func:`probseq.ops.bayes.native.usable`), all three in the kernel with its
    written-out backward.

    Args:
        k: the keys ``[R, B·H, M·C, K]``, each row ``M`` chunks of ``C = chunk`` tokens (``M = 1`` by default: the
            chunked keys); noise ``r``, half_log_retention ``h = ½ log γ``: ``[R, B·H, M·C]``; cov0 ``[B·H, K, K]``.
            With ``M > 1`` the per-token tensors keep the mean path's layout when its chunks are ``M`` covariance
            chunks long: the kernel reads and writes them in place, the PyTorch path re-chunks.
        terms: :func:`retention_terms` of ``h`` where the caller has them already (``M = 1``; the PyTorch path uses
            them, the kernel makes its own from ``h``, with the same gradient).

    Returns:
        ``x`` ``[R, B·H, M·C, K]`` and the pivots ``diag F`` ``[R, B·H, M·C]`` per token as ``k``; the chunk-start
        covariances ``[N, B·H, K, K]`` and ``info [N, B·H]`` per chunk (``N = R·M``, ``cov0`` first); the final
        covariance ``[B·H, K, K]`` (see :func:`covariance_scan`).
    """
    chunk = k.shape[2] if chunk is None else chunk
    if chunk < 1 or k.shape[2] % chunk:
        raise ValueError(f"covariance_path: chunk {chunk} does not divide the rows of {k.shape[2]} tokens")
    if terms is not None and chunk != k.shape[2]:
        raise ValueError("covariance_path: terms are for rows of one chunk (chunk = the row length)")
    if native.usable(k, chunk):
        return _CovariancePathKernel.apply(k, noise, half_log_retention, cov0, chunk)
    return _pytorch_path(covariance_scan, k, noise, half_log_retention, cov0, chunk, terms)


def _pytorch_path(scan, k, noise, half_log_retention, cov0, chunk, terms=None) -> tuple[Tensor, ...]:
    """Steps 2–5 in PyTorch ops with ``scan`` (:func:`covariance_scan`, or :func:`scan_reference`: plain autograd),
    rows of several chunks re-chunked to one a row and back; outputs as :func:`covariance_path`'s (``scan``'s)."""
    per_row = k.shape[2] // chunk
    if per_row > 1:
        k, noise, half_log_retention = (_split_rows(t, chunk) for t in (k, noise, half_log_retention))
    xs, pivots, *rest = scan(*scan_inputs(k, noise, *(terms or retention_terms(half_log_retention))), cov0)
    if per_row > 1:
        xs, pivots = _merge_rows(xs, per_row), _merge_rows(pivots, per_row)
    return xs, pivots, *rest


def _split_rows(x: Tensor, chunk: int) -> Tensor:
    """``[R, B·H, M·C, ...]`` → ``[R·M, B·H, C, ...]``: one chunk of ``C = chunk`` tokens per row."""
    return x.unflatten(2, (-1, chunk)).transpose(1, 2).flatten(0, 1)


def _merge_rows(x: Tensor, per_row: int) -> Tensor:
    """The inverse of :func:`_split_rows`: ``[R·M, B·H, C, ...]`` → ``[R, B·H, M·C, ...]``."""
    return x.unflatten(0, (-1, per_row)).transpose(1, 2).flatten(2, 3)


def _plain_path(k: Tensor, noise: Tensor, half_log_retention: Tensor, cov0: Tensor, chunk: int) -> tuple[Tensor, ...]:
    """Steps 2–5 as plain differentiable ops (the kernel's double backward): x, pivots, starts, final covariance."""
    return _pytorch_path(scan_reference, k, noise, half_log_retention, cov0, chunk)


class _CovariancePathKernel(torch.autograd.Function):
    """Steps 2–5 in the compiled kernel (csrc/covariance_scan.cpp): forward, and the backward of the scan chained
    through step 2 and the retention terms (docs/chunked-algorithm.md, "The covariance scan's backward")."""

    @staticmethod
    def forward(ctx, k, noise, half_log_retention, cov0, chunk):
        ctx.set_materialize_grads(False)
        inputs = (k, noise, half_log_retention, cov0)
        outputs = torch.ops.probseq_native.covariance_path_forward(*inputs, chunk)
        xs, pivots, factors_t, starts, cov, info, pks, grams = outputs
        ctx.chunk = chunk
        ctx.save_for_backward(*inputs, starts, factors_t, xs, pks, grams)
        ctx.mark_non_differentiable(info)
        return xs, pivots, starts, cov, info

    @staticmethod
    def backward(ctx, grad_x, grad_pivots, grad_starts, grad_cov, _grad_info):
        *inputs, starts, factors_t, xs, pks, grams = ctx.saved_tensors
        if torch.is_grad_enabled():  # create_graph=True: autograd through the plain ops, exact to any order
            grads = _differentiable_backward(
                inputs,
                (grad_x, grad_pivots, grad_starts, grad_cov),
                lambda *a: _plain_path(*a, chunk=ctx.chunk),
            )
            return *grads, None
        grads = torch.ops.probseq_native.covariance_path_backward(
            *inputs[:3], starts, factors_t, xs, pks, grams, ctx.chunk, grad_x, grad_pivots, grad_starts, grad_cov
        )
        return *grads, None
