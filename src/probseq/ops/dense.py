"""Dense-conditioning oracle for regression designs (docs/design-model.md §2) — no filter recursion inside: an
oracle that shares no code with the filter it checks (docs/numerics.md, "How the tests compare numbers").

Each row ``w`` of the memory (one value channel; ``Σ`` factors out) follows the linear-Gaussian model

    z = (w_0, e_1, …, e_T) ~ N((m_0, 0, …, 0), blockdiag(P_0, Q_1, …, Q_T))
    w_s = Σ_j c_{s,j} z_j,   c_{s,j} = ∏_{l=j+1}^{s} α_l   (j ≤ s)
    y_s = k_sᵀ w_s + ε_s,    ε_s ~ N(0, r_s)

with ``Q_t = (1 − γ_t) I + (γ_t − α_t²) P_{t-1}``. For every ``t`` the filtered posterior
``w_t | y_1..y_t`` is computed by one dense Gaussian conditioning of this joint. ``P_{t-1}`` inside
``Q_t`` is itself taken from the previous dense conditioning, so the Kalman recursion is never used.
Cost grows like ``T⁴ K³``: an oracle for tests with small ``T`` and ``K``, always in float64.
"""

from __future__ import annotations

import torch
from torch import Tensor

from probseq.design import DesignModel, RegressionWrite
from probseq.types import BayesState, FilterOutput


def dense_conditioning(design: DesignModel, q: Tensor, k: Tensor, v: Tensor) -> FilterOutput:
    """Filtered outputs, variances and final state of a regression design by dense conditioning.

    Args:
        design: a regression :class:`~probseq.design.DesignModel` with scalar decay.
        q, k: ``[B, T, H, K]``; v: ``[B, T, H, V]``.

    Returns:
        :class:`FilterOutput` in float64: ``output [B, T, H, V]``, ``state (M_T, P_T)``,
        ``variance [B, T, H]``.
    """
    if not isinstance(design.write, RegressionWrite):
        raise ValueError("dense_conditioning needs a regression design (RegressionWrite)")
    f64 = torch.float64
    q, k, v = (x.to(f64).transpose(1, 2) for x in (q, k, v))  # [B, H, T, ·]
    batch, heads, length, key_dim = k.shape
    value_dim = v.shape[-1]
    eye = torch.eye(key_dim, dtype=f64)
    dyn = design.dynamics
    decay = (
        torch.ones(batch, heads, length, dtype=f64)
        if dyn.log_decay is None
        else dyn.log_decay.to(f64).exp().transpose(1, 2)
    )
    retention = (
        torch.zeros(batch, heads, length, dtype=f64) if dyn.retention is None else dyn.retention.to(f64).transpose(1, 2)
    )
    noise = design.write.noise.to(f64).transpose(1, 2)
    mean0 = (
        torch.zeros(batch, heads, value_dim, key_dim, dtype=f64)
        if design.prior.mean is None
        else design.prior.mean.to(f64)
    )
    cov0 = eye.expand(batch, heads, key_dim, key_dim) if design.prior.cov is None else design.prior.cov.to(f64)
    query = q * design.readout.scale

    # c[s, j] = ∏_{l=j+1}^{s} α_l for j ≤ s (s, j = 0..T; α_l is decay[..., l-1]).
    coef = torch.zeros(batch, heads, length + 1, length + 1, dtype=f64)
    for s in range(length + 1):
        coef[..., s, s] = 1.0
        for j in range(s - 1, -1, -1):
            coef[..., s, j] = coef[..., s, j + 1] * decay[..., j]

    blocks = [cov0]  # Λ_0 = P_0, then Q_1, Q_2, …
    cov_prev, outputs, variances = cov0, [], []
    mean_t = mean0
    for t in range(1, length + 1):
        retention_t, decay_t = retention[..., t - 1, None, None], decay[..., t - 1, None, None]
        blocks.append((1 - retention_t) * eye + (retention_t - decay_t**2) * cov_prev)  # Q_t
        lam = torch.stack(blocks, dim=2)  # [B, H, t+1, K, K]
        c = coef[..., : t + 1, : t + 1]
        # Cov(w_s, w_u) = Σ_j c[s,j] c[u,j] Λ_j for s, u = 0..t
        cov_w = torch.einsum("bhsj,bhuj,bhjkl->bhsukl", c, c, lam)
        keys = k[..., :t, :]  # y_1..y_t observe w_1..w_t
        cov_ww = cov_w[..., 1:, 1:, :, :]  # [B, H, t, t, K, K]
        cov_yy = torch.einsum("bhsk,bhsukl,bhul->bhsu", keys, cov_ww, keys) + torch.diag_embed(noise[..., :t])
        cov_wy = torch.einsum("bhukl,bhul->bhku", cov_w[..., t, 1:, :, :], keys)  # Cov(w_t, y_u)
        prior_mean_w = c[..., :, 0, None, None] * mean0[..., None, :, :]  # E w_s = c[s,0] m_0 (rows)
        prior_y = torch.einsum("bhsvk,bhsk->bhvs", prior_mean_w[..., 1:, :, :], keys)  # [B, H, V, t]
        residual = v[..., :t, :].transpose(-1, -2) - prior_y
        gain = torch.linalg.solve(cov_yy, cov_wy.transpose(-1, -2)).transpose(-1, -2)  # Cov(w,y) Cov(y)^-1
        mean_t = prior_mean_w[..., t, :, :] + residual @ gain.transpose(-1, -2)
        cov_t = cov_w[..., t, t, :, :] - gain @ cov_wy.transpose(-1, -2)
        cov_t = 0.5 * (cov_t + cov_t.transpose(-1, -2))
        q_t = query[..., t - 1, :]
        outputs.append(torch.einsum("bhvk,bhk->bhv", mean_t, q_t))
        variances.append(torch.einsum("bhk,bhkl,bhl->bh", q_t, cov_t, q_t))
        cov_prev = cov_t
    output = torch.stack(outputs, dim=1) if outputs else v.new_zeros(batch, 0, heads, value_dim)
    variance = torch.stack(variances, dim=1) if variances else v.new_zeros(batch, 0, heads)
    return FilterOutput(output, BayesState(mean_t, cov_prev), variance)
