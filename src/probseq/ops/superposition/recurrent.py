"""Recurrent (decoding) form of the superposition design — the linear-attention family.

The write model assumes every key addresses a fresh, empty slot, so the innovation is the value and
the exact filter is (docs/design-model.md)::

    M_t = M_{t-1} ⊙ decay_t + β_t v_t k_tᵀ          o_t = M_t q̃_t

with ``decay_t = α_t`` (scalar per head) or ``diag(α_t)`` on the columns (per key channel, GLA).
"""

from __future__ import annotations

import torch
from torch import Tensor


def _decay_columns(mean: Tensor, log_decay: Tensor) -> Tensor:
    """``M ⊙ decay``: scalar ``log_decay [B, H]`` or per key channel ``[B, H, K]``."""
    decay = log_decay.exp()
    return mean * (decay[..., None, None] if decay.dim() == 2 else decay[:, :, None, :])


def superposition_step_core(
    q: Tensor, k: Tensor, v: Tensor, log_decay: Tensor | None, weight: Tensor | None, mean: Tensor, scale: float
) -> tuple[Tensor, Tensor]:
    """One token: ``q, k [B, H, K]``, ``v [B, H, V]``, ``log_decay [B, H]`` or ``[B, H, K]``, evidence weight
    ``weight [B, H]`` (names: docs/notation.md).

    Returns:
        ``(output [B, H, V], mean [B, H, V, K])``.
    """
    if log_decay is not None:
        mean = _decay_columns(mean, log_decay)
    if weight is not None:
        v = v * weight[..., None]
    mean = mean + v[..., :, None] * k[..., None, :]
    return torch.einsum("bhvk,bhk->bhv", mean, q * scale), mean


def superposition_recurrent(
    q: Tensor, k: Tensor, v: Tensor, log_decay: Tensor | None, weight: Tensor | None, mean: Tensor, scale: float
) -> tuple[Tensor, Tensor]:
    """:func:`superposition_step_core` over ``T`` tokens; inputs ``[B, T, H, ·]``.

    Returns:
        ``(output [B, T, H, V], mean [B, H, V, K])``.
    """
    length = k.shape[1]
    gates = [None if x is None else x.unbind(1) for x in (log_decay, weight)]
    gates = [[None] * length if x is None else x for x in gates]
    outputs = []
    for q_t, k_t, v_t, log_decay_t, weight_t in zip(q.unbind(1), k.unbind(1), v.unbind(1), *gates):
        out, mean = superposition_step_core(q_t, k_t, v_t, log_decay_t, weight_t, mean, scale)
        outputs.append(out)
    return torch.stack(outputs, dim=1), mean
