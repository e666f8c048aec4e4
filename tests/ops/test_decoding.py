"""Prefill plus single-token steps equals one parallel pass (docs/layers.md, "Decoding state"); the decoding step equals
the filter token by token."""

from __future__ import annotations

import pytest
import torch

from probseq.ops import bayes_filter, bayes_step, superposition_filter, superposition_step
from tests.helpers import FIELDS, assert_close, bayes_inputs


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-9), (torch.float32, 1e-4)])
@pytest.mark.parametrize("prefill_impl", ["chunked", "recurrent"])
def test_bayes_prefill_then_steps_equals_one_pass(dtype, tol, prefill_impl):
    total, prefill = 45, 37
    x = bayes_inputs(2, total, 2, 8, 5, dtype=dtype, seed=1)
    full = bayes_filter(
        **{n: x[n] for n in FIELDS},
        initial_state=x["initial_state"],
        output_final_state=True,
        output_variance=True,
        impl="chunked",
        chunk_size=16,
    )
    head = bayes_filter(
        **{n: x[n][:, :prefill] for n in FIELDS},
        initial_state=x["initial_state"],
        output_final_state=True,
        output_variance=True,
        impl=prefill_impl,
        chunk_size=16,
    )
    state, outputs, variances = head.state, [head.output], [head.variance]
    for t in range(prefill, total):
        step = bayes_step(*(x[n][:, t] for n in FIELDS), state)
        state = step.state
        outputs.append(step.output[:, None])
        variances.append(step.variance[:, None])
    assert_close(torch.cat(outputs, 1), full.output, tol, "outputs")
    assert_close(torch.cat(variances, 1), full.variance, tol, "variances")
    assert_close(state.mean, full.state.mean, tol, "mean")
    assert_close(state.cov, full.state.cov, tol, "cov")


def test_bayes_step_from_prior_and_reset_gamma():
    x = bayes_inputs(1, 3, 2, 4, 3, seed=2, regime="reset", with_state=False)
    full = bayes_filter(**{n: x[n] for n in FIELDS}, output_final_state=True, impl="reference")
    state = None
    for t in range(3):
        out = bayes_step(x["q"][:, t], x["k"][:, t], x["v"][:, t], x["g"][:, t], x["beta"][:, t], None, state)
        state = out.state
        assert_close(out.output, full.output[:, t], 1e-12, f"token {t}")
    assert_close(state.mean, full.state.mean, 1e-12, "mean")


@pytest.mark.parametrize("per_channel", [False, True])
def test_superposition_prefill_then_steps_equals_one_pass(per_channel):
    gen = torch.Generator().manual_seed(3)
    b, t, h, kd, vd, prefill = 2, 30, 2, 8, 4, 21
    q, k = (torch.randn(b, t, h, kd, generator=gen, dtype=torch.float64) for _ in range(2))
    v = torch.randn(b, t, h, vd, generator=gen, dtype=torch.float64)
    g = -torch.rand(b, t, h, *((kd,) if per_channel else ()), generator=gen, dtype=torch.float64)
    beta = torch.rand(b, t, h, generator=gen, dtype=torch.float64) + 0.5
    full = superposition_filter(q, k, v, g, beta, output_final_state=True, impl="chunked")
    head = superposition_filter(
        q[:, :prefill],
        k[:, :prefill],
        v[:, :prefill],
        g[:, :prefill],
        beta[:, :prefill],
        output_final_state=True,
        impl="chunked",
    )
    state, outputs = head.state, [head.output]
    for i in range(prefill, t):
        out = superposition_step(q[:, i], k[:, i], v[:, i], g[:, i], beta[:, i], state)
        state, outputs = out.state, outputs + [out.output[:, None]]
    assert_close(torch.cat(outputs, 1), full.output, 1e-9, "outputs")
    assert_close(state.mean, full.state.mean, 1e-9, "state")


def test_step_at_a_late_position_is_constant_size_and_exact():
    """Decoding memory does not grow with position — the state is [B, H, V, K] + [B, H, K, K] at token 200
    as at token 1 — and the step there still equals the parallel pass."""
    x = bayes_inputs(1, 201, 1, 4, 3, seed=4, with_state=False)
    head = bayes_filter(**{n: x[n][:, :200] for n in FIELDS}, output_final_state=True)
    full = bayes_filter(**{n: x[n] for n in FIELDS}, output_final_state=True, output_variance=True, impl="reference")
    step = bayes_step(*(x[n][:, -1] for n in FIELDS), head.state)
    assert step.state.mean.shape == (1, 1, 3, 4) and step.state.cov.shape == (1, 1, 4, 4)
    assert_close(step.output, full.output[:, -1], 1e-9, "output")
    assert_close(step.variance, full.variance[:, -1], 1e-9, "variance")
    assert_close(step.state.cov, full.state.cov, 1e-9, "cov")
