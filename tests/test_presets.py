"""Unification, proven by test: every preset equals an independent implementation of its named model
(docs/design-model.md §6–8; docs/numerics.md, "How the tests compare numbers").

External oracles are flash-linear-attention 0.6.0's pure-PyTorch references (float32 inside; key-first
states ``[B, H, K, V]``, ours are value-first ``[B, H, V, K]``). Mamba-2 and Longhorn are checked against
:mod:`probseq.oracles`, formulations that share nothing with the recurrence: SSD's quadratic
(attention) form and Longhorn's online-regression ``argmin``, solved densely.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from probseq import presets
from probseq.ops import BayesState
from probseq.oracles import longhorn_argmin, ssd_quadratic
from tests.helpers import assert_close

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


@pytest.mark.parametrize("impl", IMPLS)
def test_mamba2_is_superposition_filter(impl):
    gen = torch.Generator().manual_seed(3)
    b, t, h, p, n = 2, 29, 3, 8, 16
    x, B, C = (torch.randn(b, t, h, d, generator=gen) for d in (p, n, n))
    dt = F.softplus(torch.randn(b, t, h, generator=gen) - 1)
    A = -torch.exp(torch.randn(h, generator=gen) * 0.5)
    h0 = torch.randn(b, h, p, n, generator=gen)
    ours = presets.mamba2(x, dt, A, B, C, initial_state=h0, output_final_state=True, impl=impl)
    y, hT = ssd_quadratic(x, dt, A, B, C, h0)
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
    o, s = fla_naive.naive_recurrent_gated_delta_rule(
        q, k, v, beta, g, initial_state=_key_first(s0), output_final_state=True
    )
    assert_close(ours.output, o, TOL, "output")
    assert_close(ours.state.mean, s.transpose(-1, -2), TOL, "state")
    # the same through the general Bayesian Layer with γ = 0 (default r_min floor is below 1/β − 1 here)
    bayes = presets.bayesian(
        q,
        k,
        v,
        g,
        beta.clamp(max=0.999),
        torch.zeros_like(g),
        initial_state=BayesState(s0),
        output_final_state=True,
        impl=impl,
    )
    o2, s2 = fla_naive.naive_recurrent_gated_delta_rule(
        q, k, v, beta.clamp(max=0.999), g, initial_state=_key_first(s0), output_final_state=True
    )
    assert_close(bayes.output, o2, TOL, "bayesian(gamma=0) output")
    assert_close(bayes.state.mean, s2.transpose(-1, -2), TOL, "bayesian(gamma=0) state")


def test_gated_deltanet_l2norm_in_kernel_matches_normalised_keys():
    q, k, v, s0, gen = _qkv(SHAPES[0], 6)
    g = F.logsigmoid(torch.randn(v.shape[:3], generator=gen) + 3)
    beta = torch.rand(v.shape[:3], generator=gen)
    ours = presets.gated_deltanet(q, k, v, g, beta, use_qk_l2norm_in_kernel=True)
    o, _ = fla_naive.naive_recurrent_gated_delta_rule(F.normalize(q, dim=-1), F.normalize(k, dim=-1), v, beta, g)
    assert_close(ours.output, o, TOL, "output")


@pytest.mark.parametrize("impl", IMPLS)
def test_longhorn_is_covariance_reset_regression_on_raw_keys(impl):
    q, k, v, s0, gen = _qkv(SHAPES[0], 7)  # raw, unnormalised keys
    beta = torch.rand(v.shape[:3], generator=gen) * 3 + 0.01
    ours = presets.longhorn(q, k, v, beta, initial_state=s0, output_final_state=True, impl=impl)
    o, s = longhorn_argmin(q, k, v, beta, k.shape[-1] ** -0.5, s0)
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
