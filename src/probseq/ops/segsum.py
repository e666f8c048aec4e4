"""Segment sums and in-chunk gate ratios computed in log space (docs/chunked-algorithm.md).

Every ratio of cumulative products the chunked algorithms need, ``∏_{l=j+1}^{t} a_l`` (≤ 1), is
``exp(segsum(log a))[t, j]`` — never a division of cumulative products, so ``a = 0`` and ``a → 0`` work.
"""

from __future__ import annotations

import torch
from torch import Tensor


def segsum(x: Tensor) -> Tensor:
    """Segment sums of ``x [..., C]``.

    Returns:
        ``[..., C, C]`` with ``out[..., t, j] = Σ_{l=j+1}^{t} x_l`` for ``j ≤ t`` (0 on the diagonal)
        and ``-inf`` above the diagonal, so ``exp(out)`` is the lower-triangular ratio matrix.
    """
    size = x.shape[-1]
    x = x[..., :, None].expand(*x.shape, size)  # x[..., l, j] = x_l
    strictly_lower = torch.ones(size, size, dtype=torch.bool, device=x.device).tril(-1)
    out = x.masked_fill(~strictly_lower, 0).cumsum(dim=-2)  # Σ_{j < l ≤ t} x_l
    lower = torch.ones(size, size, dtype=torch.bool, device=x.device).tril()
    return out.masked_fill(~lower, float("-inf"))


#: log-space values below this are treated as it: exp of any sum containing one is exactly 0 in every dtype
LOG_FLOOR = -1e3


class _SegmentRatios(torch.autograd.Function):
    """``exp(segsum(x))`` with a written-out backward; see :func:`segment_ratios`."""

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:
        # Cumulative sums in float64: the difference cs_t − cs_j of two large sums then keeps the segment sum's
        # own precision (float32 would lose |cs|·eps of it, e.g. after γ ≈ 0 early in a chunk).
        cumulative = x.double().clamp_min(LOG_FLOOR).cumsum(-1)
        ratios = (cumulative[..., :, None] - cumulative[..., None, :]).to(x.dtype).exp_().tril_()
        ctx.save_for_backward(ratios)
        return ratios

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        # out_tj = exp(Σ_{j<l≤t} x_l): ∂L/∂x_l = Σ_{t≥l} Σ_{j<l} P_tj with P = grad ∘ out — a sum over the ratios that
        # span l only (a difference of row and column sums would cancel O(1) terms against each other, and the
        # gradient at γ = 0 is ~1e-15 before its 1/eps² factor): A = U P with U_lt = [t ≥ l] (one batched product),
        # then the strictly lower part of each row of A summed.
        (ratios,) = ctx.saved_tensors
        size = ratios.shape[-1]
        upper = torch.ones(size, size, dtype=grad.dtype, device=grad.device).triu_()
        spans = upper @ (grad * ratios)  # [..., C, C]: A_lj = Σ_{t ≥ l} P_tj
        return spans.tril_(-1).sum(-1)


def segment_ratios(x: Tensor) -> Tensor:
    """``exp(segsum(x))``: ``out[..., t, j] = exp(Σ_{l=j+1}^{t} x_l)`` for ``j ≤ t`` (1 on the diagonal), 0 above it.

    For float32 and half-precision ``x`` (training), equal to ``segsum(x).exp()`` to float rounding, values and
    gradients, at a fraction of its passes over the ``[..., C, C]`` tensors: the segment sums are differences of
    float64 cumulative sums (accurate to the working precision however large the sums before them), and the backward
    is written out (a product and two reductions instead of the masked cumulative sum's flips and masks). Entries
    below ``LOG_FLOOR`` (``-inf``: a gate of 0) are taken as it, which changes no ratio (exp of it is 0) and no
    gradient (each ratio through it is 0). Float64 ``x`` (the reference precision) takes ``segsum(x).exp()`` itself:
    a difference of float64 sums would lose ``|cs|·eps`` there, more than float64's own rounding. (So does MPS, which
    has no float64.) The forward's float64 ``[..., C, C]`` difference raises its peak memory by about half the
    output's size over the masked cumulative sum's; ``torch.func`` transforms are not supported (no
    ``setup_context``).
    """
    if x.dtype == torch.float64 or x.device.type == "mps":  # MPS has no float64
        return segsum(x).exp()
    return _SegmentRatios.apply(x)


def log_retention(retention: Tensor) -> Tensor:
    """``log γ`` of the certainty retention ``γ``, floored at ``eps(dtype)²`` in value only; the gradient is
    ``1/max(γ, floor)``.

    ``log 0 = -inf`` would make the gradient of every ratio that contains a zero ``0 · ∞ = NaN``. The
    floored value changes ratios by at most ``eps²`` (invisible at the working precision) while the
    gradient stays the derivative of the filter at ``γ = floor``, i.e. the correct one at ``γ = 0`` to
    ``O(eps²)``: the layer can start at ``γ ≡ 0`` and still learn ``γ``.
    """
    floor = torch.finfo(retention.dtype).eps ** 2
    floored = torch.where(retention < floor, floor + (retention - retention.detach()), retention)
    return floored.log()


class _OneMinusExp(torch.autograd.Function):
    """``1 − exp(x)`` computed as ``−expm1(x)``, with the derivative ``−exp(x)``.

    ``torch.expm1``'s backward is ``grad · (expm1(x) + 1)``, which rounds to 0 for ``x ≪ 0`` (at
    ``x = −40`` it returns 0 instead of 4e-18). Here that derivative carries ``d(1 − G_t)/d log γ``
    when ``G_t`` is tiny; dropping it makes the gradient w.r.t. ``γ`` wrong at small ``γ``.
    """

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:
        ctx.save_for_backward(x)
        return -torch.expm1(x)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        (x,) = ctx.saved_tensors
        return -grad * x.exp()


def one_minus_exp(x: Tensor) -> Tensor:
    """``1 − exp(x)``, accurate for ``x → 0`` (value) and ``x ≪ 0`` (gradient)."""
    return _OneMinusExp.apply(x)
