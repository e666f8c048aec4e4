"""Cross-entropy of a linear head, computed in row chunks without materialising the logits.

A language model's loss is ``Σ_n CE(h_n Wᵀ, y_n)`` over the supervised positions. Written as
``F.cross_entropy(lm_head(h), y)`` it makes the ``[N, V]`` logits, their log-softmax, the gradient of that and
the gradient of the logits — four tensors of ``N·V`` floats (134 MB each for the small teacher's
``N = 4096`` tokens and ``V = 8192``), each written and read once from memory. On a CPU those passes cost more than
the three ``N·D·V`` products of the head itself (measured in docs/training.md, "The language-model loss").

Here the rows are taken ``rows`` at a time (the chunk's logits fit in cache), and for each chunk

    z = h Wᵀ,    ℓ = logsumexp(z) − z_y,    ∂ℓ/∂z = softmax(z) − onehot(y),
    ∂/∂h = (softmax(z) − onehot(y)) W,     ∂/∂W += (softmax(z) − onehot(y))ᵀ h,

so the gradients are computed in the forward pass (when autograd will want them) and the backward only scales
them by the incoming gradient: the loss is a scalar, ``∂L/∂h = ḡ · ∂ℓ/∂h``. The result is
``F.cross_entropy(h Wᵀ, y, reduction="sum")`` to float rounding, gradients included (tests/ops/test_cross_entropy.py).
The logits are at least float32 (transformers' loss upcasts half-precision logits too); the products run in the
inputs' dtype, or the autocast dtype inside ``torch.autocast``. Double backward is not supported (the gradients
are precomputed).
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

IGNORE_INDEX = -100  # PyTorch's and transformers' label of an unscored position

#: chunk logits of about this many numbers (32 MiB in float32): 1,024 rows at a vocabulary of 8,192. Fewer rows
#: stream the weight more often: 256 rows made the head's products 40 % slower on a CPU core.
CHUNK_NUMBERS = 1 << 23


def linear_cross_entropy(
    hidden: Tensor,
    weight: Tensor,
    targets: Tensor,
    ignore_index: int = IGNORE_INDEX,
    rows: int | None = None,
    validate: bool = True,
) -> Tensor:
    """``Σ_n CE(hidden_n weightᵀ, targets_n)`` over the positions whose target is not ``ignore_index``.

    Args:
        hidden: ``[..., D]`` (e.g. ``[B, T, D]``, already shifted against the targets for next-token prediction).
        weight: ``[V, D]`` (the head's ``nn.Linear.weight``; no bias).
        targets: ``[...]`` integer ids in ``[0, V)`` or ``ignore_index``, the leading shape of ``hidden``.
        rows: rows per chunk (default: ``CHUNK_NUMBERS // V``, at least 16).
        validate: check that every target is in range (one host synchronisation; ``False`` when the caller has).

    Returns:
        The summed loss, a scalar in float32 (float64 for float64 inputs); 0 when no position is supervised.
        Divide by the count you average over.
    """
    if not isinstance(hidden, Tensor) or not isinstance(weight, Tensor) or not isinstance(targets, Tensor):
        raise TypeError("hidden, weight and targets must be tensors")
    if weight.dim() != 2 or hidden.dim() < 1 or hidden.shape[-1] != weight.shape[1]:
        raise ValueError(
            f"hidden must be [..., D] and weight [V, D] with the same D, got hidden {list(hidden.shape)} "
            f"and weight {list(weight.shape)}"
        )
    if targets.shape != hidden.shape[:-1] or targets.dtype.is_floating_point or targets.dtype == torch.bool:
        raise ValueError(
            f"targets must be integer ids of shape {list(hidden.shape[:-1])} (hidden's without D), got "
            f"{targets.dtype} {list(targets.shape)}"
        )
    if rows is not None and rows < 1:
        raise ValueError(f"rows must be >= 1, got {rows}")
    vocab = weight.shape[0]
    targets = targets.reshape(-1)
    supervised = targets != ignore_index
    if validate:
        outside = supervised & ((targets < 0) | (targets >= vocab))
        if bool(outside.any()):
            bad = targets[outside][0].item()
            raise ValueError(f"targets must be in [0, {vocab}) or {ignore_index} (ignored), got {bad}")
    rows = rows or max(16, CHUNK_NUMBERS // vocab)
    # gradients only where autograd will ask for them (ctx.needs_input_grad ignores torch.no_grad)
    grad = torch.is_grad_enabled()
    return _LinearCrossEntropy.apply(hidden, weight, targets, supervised, rows, grad)


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, targets, supervised, rows, grad_enabled):
        shape = hidden.shape
        flat = hidden.reshape(-1, shape[-1])
        index = supervised.nonzero().squeeze(-1)
        h_all, y_all = flat.index_select(0, index), targets.index_select(0, index)
        want_hidden, want_weight = grad_enabled and ctx.needs_input_grad[0], grad_enabled and ctx.needs_input_grad[1]
        wide = torch.promote_types(torch.promote_types(hidden.dtype, weight.dtype), torch.float32)
        grad_h = torch.empty(h_all.shape, dtype=wide, device=hidden.device) if want_hidden else None
        grad_w = torch.zeros(weight.shape, dtype=wide, device=weight.device) if want_weight else None
        total = torch.zeros((), dtype=wide, device=hidden.device)
        for start in range(0, h_all.shape[0], rows):
            h, y = h_all[start : start + rows], y_all[start : start + rows]
            logits = h @ weight.transpose(0, 1)  # autocast picks the product's dtype
            z = logits.to(wide)
            lse = torch.logsumexp(z, dim=-1)
            total += (lse - z.gather(1, y[:, None]).squeeze(1)).sum()
            if want_hidden or want_weight:
                dz = z.sub_(lse[:, None]).exp_()  # softmax, in place of z
                dz[torch.arange(y.shape[0], device=y.device), y] -= 1
                dz = dz.to(logits.dtype)
                if want_hidden:
                    grad_h[start : start + rows] = dz @ weight.to(dz.dtype)
                if want_weight:
                    grad_w += dz.transpose(0, 1) @ h.to(dz.dtype)
        if want_hidden:
            full = torch.zeros(flat.shape, dtype=wide, device=hidden.device)
            full.index_copy_(0, index, grad_h)
            grad_h = full.reshape(shape).to(hidden.dtype)
        if want_weight:
            grad_w = grad_w.to(weight.dtype)
        ctx.save_for_backward(grad_h, grad_w)
        return total

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_total):
        grad_h, grad_w = ctx.saved_tensors
        return (
            None if grad_h is None else grad_h * grad_total.to(grad_h.dtype),
            None if grad_w is None else grad_w * grad_total.to(grad_w.dtype),
            None,
            None,
            None,
            None,
        )
