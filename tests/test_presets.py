"""Unification, proven by test: every preset equals an independent implementation of its named model
(SPEC §1.2–1.3, CONVENTIONS 4–5).

External oracles are flash-linear-attention 0.6.0's pure-PyTorch references (float32 inside; key-first
states ``[B, H, K, V]``, ours are value-first ``[B, H, V, K]``). Mamba-2 and Longhorn are checked against
formulations written here that share nothing with the recurrence: SSD's quadratic (attention) form and
Longhorn's online-regression ``argmin``, solved densely.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from probseq import presets
from probseq.ops import BayesState
from tests.conftest import assert_close

fla_naive = pytest.importorskip("fla.ops.gated_delta_rule.naive")
from fla.ops.delta_rule.naive import delta_rule_recurrence  # noqa: E402
from fla.ops.gla.naive import naive_recurrent_gla  # noqa: E402
from fla.ops.linear_attn.naive import naive_recurrent_linear_attn  # noqa: E402
from fla.ops.simple_gla.naive import naive_recurrent_simple_gla  # noqa: E402

TOL = 1e-5  # float32, outputs and final state
SHAPES = [(2, 33, 3, 16, 8), (1, 70, 2, 32, 32)]
IMPLS = ["recurrent", "chunked"]


def _qkv(shape, seed, unit_keys=False):
    b, t, h, kd, vd = shape
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(b, t, h, kd, generator=gen)
    k = torch.randn(b, t, h, kd, generator=gen)
    v = torch.randn(b, t, h, vd, generator=gen)
    if unit_keys:
        q, k = F.normalize(q, dim=-1), F.normalize(k, dim=-1)
    state = torch.randn(b, h, vd, kd, generator=gen)  # value-first, ours
    return q, k, v, state, gen


def _key_first(state):
    return state.transpose(-1, -2).contiguous()


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("impl", IMPLS)
def test_linear_attention_is_superposition_filter(shape, impl):
    q, k, v, s0, _ = _qkv(shape, 0)
    ours = presets.linear_attention(q, k, v, initial_state=s0, output_final_state=True, impl=impl)
    o, s = naive_recurrent_linear_attn(q, k, v, initial_state=_key_first(s0), output_final_state=True)
    assert_close(ours.output, o, TOL, "output")
    assert_close(ours.state.mean, s.transpose(-1, -2), TOL, "state")


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("impl", IMPLS)
def test_simple_gla_is_superposition_filter(shape, impl):
    q, k, v, s0, gen = _qkv(shape, 1)
    g = F.logsigmoid(torch.randn(v.shape[:3], generator=gen) + 2)
    ours = presets.simple_gla(q, k, v, g, initial_state=s0, output_final_state=True, impl=impl)
    o, s = naive_recurrent_simple_gla(q, k, v, g, initial_state=_key_first(s0), output_final_state=True)
    assert_close(ours.output, o, TOL, "output")
    assert_close(ours.state.mean, s.transpose(-1, -2), TOL, "state")


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("impl", IMPLS)
def test_gla_is_superposition_filter(shape, impl):
    q, k, v, s0, gen = _qkv(shape, 2)
    gk = F.logsigmoid(torch.randn(k.shape, generator=gen) + 2)
    ours = presets.gla(q, k, v, gk, initial_state=s0, output_final_state=True, impl=impl)
    o, s = naive_recurrent_gla(q, k, v, gk, initial_state=_key_first(s0), output_final_state=True)
    assert_close(ours.output, o, TOL, "output")
    assert_close(ours.state.mean, s.transpose(-1, -2), TOL, "state")


def _ssd_quadratic(x, dt, A, B, C, h0):
    """Mamba-2's SSD in its attention form, float64: y_t = Σ_{s≤t} (C_t·B_s) L_ts Δ_s x_s + C_t h0-part,
    with L_ts = exp(A Σ_{l=s+1}^{t} Δ_l) written as an explicit product (no recurrence)."""
    x, dt, B, C, h0 = (t.double() for t in (x, dt, B, C, h0))
    A = A.double()
    b, t, h, p = x.shape
    decay = torch.exp(dt * A)  # [B,T,H] per-step factors
    L = torch.zeros(b, h, t, t, dtype=torch.float64)
    for i in range(t):
        for j in range(i + 1):
            L[:, :, i, j] = decay[:, j + 1:i + 1].prod(dim=1)
    to_start = torch.stack([decay[:, :i + 1].prod(dim=1) for i in range(t)], dim=2)  # [B,H,T]
    scores = torch.einsum("bthn,bshn->bhts", C, B) * L
    y = torch.einsum("bhts,bsh,bshp->bthp", scores, dt, x)
    y = y + torch.einsum("bhpn,bthn,bht->bthp", h0, C, to_start)
    hT = torch.einsum("bhs,bsh,bshp,bshn->bhpn", L[:, :, -1], dt, x, B) + to_start[:, :, -1, None, None] * h0
    return y, hT


@pytest.mark.parametrize("impl", IMPLS)
def test_mamba2_is_superposition_filter(impl):
    gen = torch.Generator().manual_seed(3)
    b, t, h, p, n = 2, 29, 3, 8, 16
    x, B, C = (torch.randn(b, t, h, d, generator=gen) for d in (p, n, n))
    dt = F.softplus(torch.randn(b, t, h, generator=gen) - 1)
    A = -torch.exp(torch.randn(h, generator=gen) * 0.5)
    h0 = torch.randn(b, h, p, n, generator=gen)
    ours = presets.mamba2(x, dt, A, B, C, initial_state=h0, output_final_state=True, impl=impl)
    y, hT = _ssd_quadratic(x, dt, A, B, C, h0)
    assert_close(ours.output, y, TOL, "y")
    assert_close(ours.state.mean, hT, TOL, "state")


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("impl", IMPLS)
def test_deltanet_is_covariance_reset_regression(shape, impl):
    q, k, v, s0, gen = _qkv(shape, 4, unit_keys=True)
    beta = torch.rand(v.shape[:3], generator=gen)
    beta[0, 0, 0] = 1.0  # β = 1 exactly is DeltaNet too (no floor on r in the preset)
    ours = presets.deltanet(q, k, v, beta, initial_state=s0, output_final_state=True, impl=impl)
    head_first = [x.transpose(1, 2) for x in (q, k, v)]
    o, s = delta_rule_recurrence(*head_first, beta.transpose(1, 2), initial_state=_key_first(s0))
    assert_close(ours.output, o.transpose(1, 2), TOL, "output")
    assert_close(ours.state.mean, s.transpose(-1, -2), TOL, "state")


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("impl", IMPLS)
def test_reduces_to_gated_deltanet(shape, impl):
    q, k, v, s0, gen = _qkv(shape, 5, unit_keys=True)
    g = F.logsigmoid(torch.randn(v.shape[:3], generator=gen) + 3)
    beta = torch.rand(v.shape[:3], generator=gen)
    ours = presets.gated_deltanet(q, k, v, g, beta, initial_state=s0, output_final_state=True, impl=impl)
    o, s = fla_naive.naive_recurrent_gated_delta_rule(q, k, v, beta, g, initial_state=_key_first(s0),
                                                      output_final_state=True)
    assert_close(ours.output, o, TOL, "output")
    assert_close(ours.state.mean, s.transpose(-1, -2), TOL, "state")
    # the same through the general Bayesian Layer with γ = 0 (default r_min floor is below 1/β − 1 here)
    bayes = presets.bayesian(q, k, v, g, beta.clamp(max=0.999), torch.zeros_like(g), initial_state=BayesState(s0),
                             output_final_state=True, impl=impl)
    o2, s2 = fla_naive.naive_recurrent_gated_delta_rule(q, k, v, beta.clamp(max=0.999), g,
                                                        initial_state=_key_first(s0), output_final_state=True)
    assert_close(bayes.output, o2, TOL, "bayesian(gamma=0) output")
    assert_close(bayes.state.mean, s2.transpose(-1, -2), TOL, "bayesian(gamma=0) state")


def test_gated_deltanet_l2norm_in_kernel_matches_normalised_keys():
    q, k, v, s0, gen = _qkv(SHAPES[0], 6)
    g = F.logsigmoid(torch.randn(v.shape[:3], generator=gen) + 3)
    beta = torch.rand(v.shape[:3], generator=gen)
    ours = presets.gated_deltanet(q, k, v, g, beta, use_qk_l2norm_in_kernel=True)
    o, _ = fla_naive.naive_recurrent_gated_delta_rule(F.normalize(q, dim=-1), F.normalize(k, dim=-1), v, beta, g)
    assert_close(ours.output, o, TOL, "output")


def _longhorn_argmin(q, k, v, beta, s0, scale):
    """S_t = argmin_S ‖S − S_{t−1}‖² + β‖S k_t − v_t‖², i.e. S_t (I + β k kᵀ) = S_{t−1} + β v kᵀ, solved densely."""
    q, k, v, beta, s = (t.double() for t in (q, k, v, beta, s0))
    eye = torch.eye(k.shape[-1], dtype=torch.float64)
    outs = []
    for t in range(k.shape[1]):
        kt, vt, bt = k[:, t], v[:, t], beta[:, t, :, None, None]
        lhs = eye + bt * kt[..., :, None] * kt[..., None, :]
        rhs = s + bt * vt[..., :, None] * kt[..., None, :]
        s = torch.linalg.solve(lhs, rhs.transpose(-1, -2)).transpose(-1, -2)  # lhs symmetric
        outs.append(torch.einsum("bhvk,bhk->bhv", s, q[:, t] * scale))
    return torch.stack(outs, dim=1), s


@pytest.mark.parametrize("impl", IMPLS)
def test_longhorn_is_covariance_reset_regression_on_raw_keys(impl):
    q, k, v, s0, gen = _qkv(SHAPES[0], 7)  # raw, unnormalised keys
    beta = torch.rand(v.shape[:3], generator=gen) * 3 + 0.01
    ours = presets.longhorn(q, k, v, beta, initial_state=s0, output_final_state=True, impl=impl)
    o, s = _longhorn_argmin(q, k, v, beta, s0, k.shape[-1] ** -0.5)
    assert_close(ours.output, o, TOL, "output")
    assert_close(ours.state.mean, s, TOL, "state")


def test_delta_presets_reject_unnormalised_keys():
    q, k, v, _, gen = _qkv(SHAPES[0], 8)
    beta = torch.rand(v.shape[:3], generator=gen)
    with pytest.raises(ValueError, match="unit-norm keys"):
        presets.deltanet(q, k, v, beta)


def test_bayesian_preset_is_bayes_filter():
    q, k, v, s0, gen = _qkv(SHAPES[0], 9, unit_keys=True)
    g = F.logsigmoid(torch.randn(v.shape[:3], generator=gen) + 3)
    beta, gamma = (torch.rand(v.shape[:3], generator=gen) for _ in range(2))
    from probseq.ops import bayes_filter
    a = presets.bayesian(q, k, v, g, beta, gamma, output_variance=True)
    b = bayes_filter(q, k, v, g, beta, gamma, output_variance=True, impl="reference")
    assert_close(a.output, b.output, 1e-5, "output")
    assert_close(a.variance, b.variance, 1e-5, "variance")
