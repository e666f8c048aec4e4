"""Independent implementations of named models that share nothing with the filter recursion.

Used by the unification tests and by ``probseq demo`` to show that each preset *is* its named model
(docs/numerics.md, "How the tests compare numbers"; docs/design-model.md §8): Mamba-2's SSD in its quadratic
(attention) form, Longhorn's online-regression ``argmin`` solved densely, and — when installed —
flash-linear-attention's pure-PyTorch references (test-only dependency). All run in float64 on small inputs.
"""

from __future__ import annotations

import warnings

import torch
from torch import Tensor


def ssd_quadratic(
    x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor, h0: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """Mamba-2 / SSD in attention form (no ``D`` skip), float64.

    ``y_t = Σ_{s≤t} (C_t·B_s) L_ts Δ_s x_s + (∏_{l≤t} e^{Δ_l A}) h_0 C_t`` with the decay
    ``L_ts = ∏_{l=s+1}^{t} e^{Δ_l A}`` written as an explicit product — no recurrence.

    Args:
        x: ``[B, T, H, P]``; dt: ``[B, T, H]``; A: ``[H]``; B, C: ``[B, T, H, N]``; h0: ``[B, H, P, N]``.

    Returns:
        ``(y [B, T, H, P], h_T [B, H, P, N])``.
    """
    x, dt, B, C = (t.double() for t in (x, dt, B, C))
    batch, length, heads, p = x.shape
    h0 = torch.zeros(batch, heads, p, B.shape[-1], dtype=torch.float64) if h0 is None else h0.double()
    decay = torch.exp(dt * A.double())  # [B, T, H]
    L = torch.zeros(batch, heads, length, length, dtype=torch.float64)
    for t in range(length):
        for s in range(t + 1):
            L[:, :, t, s] = decay[:, s + 1 : t + 1].prod(dim=1)
    from_start = torch.stack([decay[:, : t + 1].prod(dim=1) for t in range(length)], dim=2)  # [B, H, T]
    scores = torch.einsum("bthn,bshn->bhts", C, B) * L
    y = torch.einsum("bhts,bsh,bshp->bthp", scores, dt, x) + torch.einsum("bhpn,bthn,bht->bthp", h0, C, from_start)
    h_last = torch.einsum("bhs,bsh,bshp,bshn->bhpn", L[:, :, -1], dt, x, B) + from_start[:, :, -1, None, None] * h0
    return y, h_last


def longhorn_argmin(
    q: Tensor, k: Tensor, v: Tensor, beta: Tensor, scale: float, s0: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """Longhorn's update as the online regression it is defined by, solved densely, float64:
    ``S_t = argmin_S ‖S − S_{t−1}‖² + β_t ‖S k_t − v_t‖²``, i.e. ``S_t (I + β k kᵀ) = S_{t−1} + β v kᵀ``.

    Args:
        q, k: ``[B, T, H, K]``; v: ``[B, T, H, V]``; beta: ``[B, T, H]``; s0: ``[B, H, V, K]``.

    Returns:
        ``(o [B, T, H, V], S_T [B, H, V, K])`` with ``o_t = S_t (scale · q_t)``.
    """
    q, k, v, beta = (t.double() for t in (q, k, v, beta))
    batch, length, heads, key_dim = k.shape
    s = torch.zeros(batch, heads, v.shape[-1], key_dim, dtype=torch.float64) if s0 is None else s0.double()
    eye = torch.eye(key_dim, dtype=torch.float64)
    outputs = []
    for t in range(length):
        kt, vt, bt = k[:, t], v[:, t], beta[:, t, :, None, None]
        lhs = eye + bt * kt[..., :, None] * kt[..., None, :]  # symmetric
        rhs = s + bt * vt[..., :, None] * kt[..., None, :]
        s = torch.linalg.solve(lhs, rhs.transpose(-1, -2)).transpose(-1, -2)
        outputs.append(torch.einsum("bhvk,bhk->bhv", s, q[:, t] * scale))
    return torch.stack(outputs, dim=1), s


def fla_references() -> dict[str, object] | None:
    """flash-linear-attention's pure-PyTorch reference functions, or ``None`` when not installed."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from fla.ops.delta_rule.naive import delta_rule_recurrence
            from fla.ops.gated_delta_rule.naive import naive_recurrent_gated_delta_rule
            from fla.ops.gla.naive import naive_recurrent_gla
            from fla.ops.linear_attn.naive import naive_recurrent_linear_attn
            from fla.ops.simple_gla.naive import naive_recurrent_simple_gla
    except ImportError:
        return None
    return {
        "linear_attention": naive_recurrent_linear_attn,
        "simple_gla": naive_recurrent_simple_gla,
        "gla": naive_recurrent_gla,
        "deltanet": delta_rule_recurrence,
        "gated_deltanet": naive_recurrent_gated_delta_rule,
    }
