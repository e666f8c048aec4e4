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
