"""The Bayesian Layer is the exact Bayesian filter of its design model: the float64 reference equals
dense Gaussian conditioning of the joint model (src/probseq/ops/dense.py), which never runs the filter recursion;
and the named special cases of the regression design hold (docs/design-model.md §2)."""

from __future__ import annotations

import pytest
import torch

from probseq.design import DesignModel, LinearReadout, MatrixNormalPrior, MemoryDynamics, RegressionWrite
from probseq.ops import bayes_filter, dense_conditioning, regression_design, run_filter
from tests.helpers import assert_close, bayes_inputs, stable_seed


@pytest.mark.parametrize("regime", ["random", "retain", "reset", "mixed"])
@pytest.mark.parametrize("shape", [(2, 9, 2, 4, 3), (1, 6, 3, 6, 5)])
@pytest.mark.parametrize("with_state", [True, False])
def test_reference_equals_dense_conditioning(regime, shape, with_state):
    b, t, h, kd, vd = shape
    x = bayes_inputs(
        b,
        t,
        h,
        kd,
        vd,
        regime=regime,
        with_state=with_state,
        unit_keys=False,
        seed=stable_seed(regime, shape, with_state),
    )
    design = regression_design(x["g"], x["beta"], x["gamma"], scale=kd**-0.5, initial_state=x["initial_state"])
    dense = dense_conditioning(design, x["q"], x["k"], x["v"])
    for impl in ("reference", "chunked"):
        ours = run_filter(
            design, x["q"], x["k"], x["v"], impl=impl, chunk_size=4, output_final_state=True, output_variance=True
        )
        assert_close(ours.output, dense.output, 1e-9, f"{impl} output")
        assert_close(ours.variance, dense.variance, 1e-9, f"{impl} variance")
        assert_close(ours.state.mean, dense.state.mean, 1e-9, f"{impl} M_T")
        assert_close(ours.state.cov, dense.state.cov, 1e-9, f"{impl} P_T")


def test_recursive_least_squares_is_ridge_regression():
    """γ = α = 1: the posterior mean is the ridge solution M = V Kᵀ (K Kᵀ + r I)⁻¹ (prior P_0 = I)."""
    x = bayes_inputs(1, 30, 2, 6, 4, with_state=False, unit_keys=False, seed=1)
    beta = torch.full_like(x["beta"], 0.8)  # r = 0.25
    ones = torch.ones_like(beta)
    out = bayes_filter(x["q"], x["k"], x["v"], None, beta, ones, output_final_state=True, impl="chunked", chunk_size=8)
    keys, values = x["k"][0].transpose(0, 1), x["v"][0].transpose(0, 1)  # [H, T, ·]
    gram = keys.transpose(-1, -2) @ keys + 0.25 * torch.eye(6, dtype=torch.float64)
    ridge = torch.linalg.solve(gram, keys.transpose(-1, -2) @ values).transpose(-1, -2)  # [H, V, K]
    assert_close(out.state.mean[0], ridge, 1e-9, "ridge")
    assert_close(out.state.cov[0], 0.25 * torch.linalg.inv(gram), 1e-9, "posterior covariance r (KᵀK + rI)⁻¹")


def test_stationary_design_keeps_unit_marginal_covariance():
    """γ = α²: with no evidence (zero keys) the memory covariance stays I — the stationary Gauss–Markov prior."""
    x = bayes_inputs(1, 12, 2, 5, 3, with_state=False, seed=2)
    zero_keys = torch.zeros_like(x["k"])
    out = bayes_filter(
        x["q"], zero_keys, x["v"], x["g"], x["beta"], (2 * x["g"]).exp(), output_final_state=True, impl="reference"
    )
    assert_close(out.state.cov, torch.eye(5, dtype=torch.float64).expand(1, 2, 5, 5), 1e-12, "P_T")


def test_a_custom_design_model_runs_through_every_form():
    """The framework takes any design model value, not only the presets' gates."""
    x = bayes_inputs(2, 20, 2, 4, 3, seed=4)
    noise = torch.rand_like(x["beta"]) * 2  # r given directly, no β parametrisation
    design = DesignModel(
        MatrixNormalPrior(*x["initial_state"]),
        MemoryDynamics(x["g"], x["gamma"]),
        RegressionWrite(noise),
        LinearReadout(0.7),
    )
    outs = [
        run_filter(design, x["q"], x["k"], x["v"], impl=impl, output_variance=True, chunk_size=8)
        for impl in ("reference", "recurrent", "chunked")
    ]
    dense = dense_conditioning(design, x["q"], x["k"], x["v"])
    for out in outs:
        assert_close(out.output, dense.output, 1e-9, "output")
        assert_close(out.variance, dense.variance, 1e-9, "variance")


def test_covariance_steers_writes_and_shrinks_gains():
    """The qualitative claims, measured: repeated writes of one key shrink the gain (1/(n+1+r)), and a
    direction already known is barely overwritten while an unknown one takes the full write."""
    key = torch.zeros(1, 6, 1, 2, dtype=torch.float64)
    key[..., 0] = 1.0
    values = torch.ones(1, 6, 1, 1, dtype=torch.float64)
    beta = torch.full((1, 6, 1), 0.5, dtype=torch.float64)  # r = 1
    out = bayes_filter(
        key, key, values, None, beta, torch.ones_like(beta), scale=1.0, impl="reference", output_variance=True
    )
    readouts = out.output[0, :, 0, 0]  # shrunk averages n/(n + r)
    assert_close(readouts, torch.tensor([n / (n + 1) for n in range(1, 7)], dtype=torch.float64), 1e-12, "shrinkage")
    assert (out.variance[0, 1:, 0] < out.variance[0, :-1, 0]).all()  # uncertainty falls with evidence
