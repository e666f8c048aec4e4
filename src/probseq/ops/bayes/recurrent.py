"""Recurrent (decoding) form of the regression design — the Bayesian Layer — one token at a time.

The per-token update of docs/design-model.md §2 in its generalised-delta-rule form, with write key
``w_t = u_t / s_t``::

    P_t^- = (1 - γ_t) I + γ_t P_{t-1}        u_t = P_t^- k_t        s_t = k_tᵀ u_t + r_t
    M_t   = α_t M_{t-1} + (v_t - α_t M_{t-1} k_t) w_tᵀ               P_t = P_t^- - u_t u_tᵀ / s_t
    o_t   = M_t q̃_t                          σ²_t = q̃_tᵀ P_t q̃_t

One token costs ``O(K² + KV)`` per head, independent of its position. ``P`` stays exactly symmetric:
the rank-one term is the outer product of one vector ``u/√s`` with itself.
"""

from __future__ import annotations

import torch
from torch import Tensor

from probseq.types import BayesState


def bayes_step_core(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    log_decay: Tensor,
    noise: Tensor,
    retention: Tensor | None,
    state: BayesState,
    scale: float,
) -> tuple[Tensor, BayesState, Tensor]:
    """One filter step on validated inputs in the compute dtype (names: docs/notation.md).

    Args:
        q, k: ``[B, H, K]``; v: ``[B, H, V]``; log_decay ``log α``, noise ``r``: ``[B, H]``; retention ``γ``:
            ``[B, H]`` or ``None`` (covariance reset, ``γ = 0``).
        state: ``BayesState(mean [B, H, V, K], cov [B, H, K, K])``.

    Returns:
        ``(output [B, H, V], state, variance [B, H])``.
    """
    mean, cov = state
    eye = torch.eye(k.shape[-1], dtype=k.dtype, device=k.device)
    if retention is None:
        u, cov_pred = k, eye
    else:
        retention = retention[..., None]
        u = retention * torch.einsum("bhij,bhj->bhi", cov, k) + (1 - retention) * k  # P⁻k without forming P⁻
        cov_pred = retention[..., None] * cov + (1 - retention[..., None]) * eye
    s = ((k * u).sum(-1) + noise).clamp_min(torch.finfo(k.dtype).tiny)[..., None]
    decay = log_decay.exp()[..., None, None]
    innovation = v - decay[..., 0] * torch.einsum("bhvk,bhk->bhv", mean, k)
    mean = decay * mean + torch.einsum("bhv,bhk->bhvk", innovation, u / s)
    x = u * s.rsqrt()  # the scaled write direction x = u/√s: u uᵀ/s = x xᵀ
    cov = cov_pred - x[..., :, None] * x[..., None, :]
    q = q * scale
    output = torch.einsum("bhvk,bhk->bhv", mean, q)
    variance = torch.einsum("bhi,bhij,bhj->bh", q, cov, q)
    return output, BayesState(mean, cov), variance


def bayes_recurrent(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    log_decay: Tensor,
    noise: Tensor,
    retention: Tensor | None,
    state: BayesState,
    scale: float,
) -> tuple[Tensor, BayesState, Tensor]:
    """:func:`bayes_step_core` over ``T`` tokens.

    Args:
        q, k: ``[B, T, H, K]``; v: ``[B, T, H, V]``; log_decay, noise, retention: ``[B, T, H]`` (retention may be
            ``None``).

    Returns:
        ``(output [B, T, H, V], state, variance [B, T, H])``.
    """
    outputs, variances = [], []
    # unbind, not x[:, t]: each slice's backward would allocate a full-size gradient (quadratic in T).
    retentions = [None] * k.shape[1] if retention is None else retention.unbind(1)
    for q_t, k_t, v_t, log_decay_t, noise_t, retention_t in zip(
        q.unbind(1), k.unbind(1), v.unbind(1), log_decay.unbind(1), noise.unbind(1), retentions
    ):
        out, state, var = bayes_step_core(q_t, k_t, v_t, log_decay_t, noise_t, retention_t, state, scale)
        outputs.append(out)
        variances.append(var)
    return torch.stack(outputs, dim=1), state, torch.stack(variances, dim=1)
