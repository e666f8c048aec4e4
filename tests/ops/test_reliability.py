"""The reliability contract of every public entry point: a correct result or a clear ``ValueError`` naming
the argument (docs/numerics.md, "Validation"). Each test is a regression test of a case found by a review of
the ops, named for what it checks."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from probseq import presets
from probseq.ops import BayesState, bayes_filter, bayes_step, run_filter, superposition_filter, superposition_step
from tests.helpers import FIELDS, assert_close, bayes_inputs

IMPLS = ("reference", "recurrent", "chunked")


def _gates(x):
    return {n: x[n] for n in FIELDS}


# 2. Derived gates are formed in the compute dtype, never in half precision.
@pytest.mark.parametrize("half", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("impl", IMPLS)
def test_half_beta_forms_noise_in_float32(impl, half):
    x = bayes_inputs(1, 40, 2, 8, 4, dtype=torch.float32, seed=2, with_state=False)
    beta_half = x["beta"].to(half)
    a = bayes_filter(**{**_gates(x), "beta": beta_half}, output_final_state=True, impl=impl, chunk_size=16)
    b = bayes_filter(**{**_gates(x), "beta": beta_half.float()}, output_final_state=True, impl=impl, chunk_size=16)
    assert_close(a.state.mean, b.state.mean, 1e-6, "mean with a half beta")
    assert_close(a.output, b.output, 1e-6, "output with a half beta")


# 3. One dtype rule for every form: float64 if any input is float64.
@pytest.mark.parametrize("which", ["q", "g", "initial_state"])
def test_mixed_dtypes_one_rule(which):
    x = bayes_inputs(1, 20, 2, 4, 3, dtype=torch.float32, seed=3)
    if which == "initial_state":
        x["initial_state"] = BayesState(*(t.double() for t in x["initial_state"]))
    else:
        x[which] = x[which].double()
    results = {
        impl: bayes_filter(
            **_gates(x),
            initial_state=x["initial_state"],
            output_final_state=True,
            output_variance=True,
            impl=impl,
            chunk_size=8,
        )
        for impl in IMPLS
    }
    for impl, out in results.items():
        assert out.output.dtype == torch.float32, impl  # the dtype of v
        assert out.state.mean.dtype == out.state.cov.dtype == out.variance.dtype == torch.float64, impl
        assert_close(out.state.cov, results["reference"].state.cov, 1e-9, impl)


# 4. Non-finite inputs are named; with validate=False nothing is checked.
@pytest.mark.parametrize("name", ["q", "k", "v", "initial_state.mean", "g", "beta", "gamma"])
@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_nonfinite_inputs_are_named(name, impl, bad):
    x = bayes_inputs(1, 9, 2, 4, 3, dtype=torch.float32, seed=4)
    if name == "initial_state.mean":
        mean = x["initial_state"].mean.clone()
        mean[0, 1, 2, 3] = bad
        x["initial_state"] = BayesState(mean, x["initial_state"].cov)
    else:
        x[name] = x[name].clone()
        x[name][0, 5, 1] = bad if name not in ("g",) else -bad  # g = -inf is α = 0, legal: test +inf / nan
    if name == "g" and bad == float("inf"):
        x[name][0, 5, 1] = float("inf")
    pattern = name.split(".")[0] if name != "initial_state.mean" else r"initial_state\.mean"
    with pytest.raises(ValueError, match=pattern):
        bayes_filter(**_gates(x), initial_state=x["initial_state"], impl=impl)


def test_nonfinite_keys_get_no_misleading_error_and_validate_false_skips():
    x = bayes_inputs(1, 9, 2, 4, 3, dtype=torch.float32, seed=4)
    x["k"] = x["k"].clone()
    x["k"][0, 3, 0, 0] = float("nan")
    with pytest.raises(ValueError, match=r"k contains NaN or Inf \(1 NaN"):
        bayes_filter(**_gates(x), impl="chunked")
    out = bayes_filter(**_gates(x), impl="recurrent", validate=False)  # no check, no error: NaN propagates
    assert torch.isnan(out.output).any()


@pytest.mark.parametrize(
    "entry",
    ["bayes_step", "superposition_filter", "superposition_step", "run_filter", "gated_deltanet", "mamba2", "longhorn"],
)
def test_nonfinite_inputs_every_entry_point(entry):
    x = bayes_inputs(2, 6, 2, 4, 3, dtype=torch.float32, seed=5, with_state=False)
    v = x["v"].clone()
    v[1, 2, 0, 0] = float("inf")
    step = {n: x[n][:, 2] for n in FIELDS}
    with pytest.raises(ValueError, match=r"\b(v|x) contains NaN or Inf"):
        if entry == "bayes_step":
            bayes_step(step["q"], step["k"], v[:, 2], step["g"], step["beta"], step["gamma"], None)
        elif entry == "superposition_filter":
            superposition_filter(x["q"], x["k"], v)
        elif entry == "superposition_step":
            superposition_step(step["q"], step["k"], v[:, 2])
        elif entry == "run_filter":
            from probseq.ops import regression_design

            run_filter(regression_design(x["g"], x["beta"], x["gamma"], scale=0.5), x["q"], x["k"], v)
        elif entry == "gated_deltanet":
            presets.gated_deltanet(x["q"], x["k"], v, x["g"], x["beta"])
        elif entry == "mamba2":
            presets.mamba2(v, x["beta"], -torch.ones(2), x["k"], x["q"])
        elif entry == "longhorn":
            presets.longhorn(x["q"], x["k"], v, x["beta"])


# 5. An empty batch is an empty result, in every form.
@pytest.mark.parametrize("impl", IMPLS + ("auto",))
def test_empty_batch(impl):
    x = bayes_inputs(0, 7, 2, 4, 3, seed=5, with_state=False)
    out = bayes_filter(**_gates(x), output_final_state=True, output_variance=True, impl=impl)
    assert out.output.shape == (0, 7, 2, 3) and out.variance.shape == (0, 7, 2)
    assert out.state.mean.shape == (0, 2, 3, 4) and out.state.cov.shape == (0, 2, 4, 4)
    sup = superposition_filter(x["q"], x["k"], x["v"], impl=impl, output_final_state=True)
    assert sup.output.shape == (0, 7, 2, 3) and sup.state.mean.shape == (0, 2, 3, 4)


# 6. A non-finite initial covariance is named, not an internal LinAlgError.
def test_nan_initial_covariance():
    x = bayes_inputs(1, 5, 2, 4, 3, seed=6)
    cov = x["initial_state"].cov.clone()
    cov[0, 0, 1, 2] = float("nan")
    with pytest.raises(ValueError, match=r"initial_state\.cov contains NaN or Inf"):
        bayes_filter(**_gates(x), initial_state=BayesState(x["initial_state"].mean, cov))


# 7. Scalars: finite positive reals of any kind.
@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(scale=float("inf")), "scale"),
        (dict(scale=float("nan")), "scale"),
        (dict(r_min=float("inf")), "r_min"),
        (dict(scale=True), "scale"),
        (dict(chunk_size=np.float32(8)), "chunk_size"),
    ],
)
def test_bad_scalars(kwargs, match):
    x = bayes_inputs(1, 5, 2, 4, 3, seed=7, with_state=False)
    with pytest.raises(ValueError, match=match):
        bayes_filter(**_gates(x), **kwargs)


def test_numpy_scalars_are_numbers():
    x = bayes_inputs(1, 5, 2, 4, 3, seed=7, with_state=False)
    a = bayes_filter(**_gates(x), scale=np.float32(0.5), r_min=np.float64(1e-3), chunk_size=np.int64(4))
    b = bayes_filter(**_gates(x), scale=0.5, r_min=1e-3, chunk_size=4)
    assert torch.equal(a.output, b.output)


# 8. Gates must be floating point; an all-zero integer γ is not silently the reset path.
@pytest.mark.parametrize("dtype", [torch.int64, torch.bool])
def test_integer_gates_rejected(dtype):
    x = bayes_inputs(1, 5, 2, 4, 3, seed=8, with_state=False)
    for name in ("gamma", "beta", "g"):
        with pytest.raises(ValueError, match=rf"{name}.* must have a floating dtype"):
            bayes_filter(**{**_gates(x), name: torch.zeros_like(x[name], dtype=dtype)})


# 9. Subnormal and zero β: every form agrees; β = 0 is "no write".
@pytest.mark.parametrize("beta_value", [1e-39, 1e-45, 0.0])
def test_tiny_and_zero_beta_agree_across_forms(beta_value):
    x = bayes_inputs(1, 24, 2, 4, 3, dtype=torch.float32, seed=9)
    beta = x["beta"].clone()
    beta[0, ::3] = beta_value
    results = {
        impl: bayes_filter(
            **{**_gates(x), "beta": beta},
            initial_state=x["initial_state"],
            output_final_state=True,
            output_variance=True,
            impl=impl,
            chunk_size=8,
        )
        for impl in IMPLS
    }
    for impl, out in results.items():
        assert_close(out.output, results["reference"].output, 1e-5, f"{impl} output")
        assert_close(out.state.cov, results["reference"].state.cov, 1e-5, f"{impl} cov")


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("retention", ["tensor", "reset"])
def test_zero_beta_is_no_write_with_finite_gradients(impl, retention):
    """β = 0 exactly (a sigmoid that underflowed) leaves the memory as a zero key would, and every gradient is
    finite: a training run must not stop there."""
    x = bayes_inputs(1, 20, 2, 4, 3, seed=10)
    gamma = x["gamma"] if retention == "tensor" else None
    beta, k_zeroed = x["beta"].clone(), x["k"].clone()
    beta[0, 4::5], k_zeroed[0, 4::5] = 0.0, 0.0
    leaves = {"beta": beta.requires_grad_(), "k": x["k"].clone().requires_grad_()}
    out = bayes_filter(
        x["q"],
        leaves["k"],
        x["v"],
        x["g"],
        leaves["beta"],
        gamma,
        initial_state=x["initial_state"],
        output_final_state=True,
        impl=impl,
        chunk_size=8,
    )
    ref = bayes_filter(
        x["q"],
        k_zeroed,
        x["v"],
        x["g"],
        x["beta"],
        gamma,
        initial_state=x["initial_state"],
        output_final_state=True,
        impl="reference",
    )
    assert_close(out.output, ref.output, 1e-12, "output")
    assert_close(out.state.mean, ref.state.mean, 1e-12, "mean")
    (out.output.sum() + out.state.cov.sum()).backward()
    assert torch.isfinite(leaves["beta"].grad).all() and torch.isfinite(leaves["k"].grad).all()


def test_closed_gate_intervals_accepted():
    x = bayes_inputs(1, 12, 2, 4, 3, seed=11)
    ones, zeros = torch.ones_like(x["beta"]), torch.zeros_like(x["beta"])
    for g, beta, gamma in [
        (zeros, ones, zeros),
        (zeros, ones, ones * 0.5),
        (-torch.full_like(zeros, float("inf")), ones * 0.5, ones),
    ]:
        outs = [
            bayes_filter(x["q"], x["k"], x["v"], g, beta, gamma, output_final_state=True, impl=impl, chunk_size=4)
            for impl in IMPLS
        ]
        for out in outs[1:]:
            assert_close(out.output, outs[0].output, 1e-9, "closed intervals")


# 10. Recursive least squares without a floor: a clear error from every form, not NaN.
@pytest.mark.parametrize("impl", IMPLS)
def test_singular_rls_is_a_clear_error(impl):
    gen = torch.Generator().manual_seed(10)
    b, t, h, kd, vd = 1, 12, 1, 3, 2
    q, k = torch.randn(b, t, h, kd, generator=gen), F.normalize(torch.randn(b, t, h, kd, generator=gen), dim=-1)
    v = torch.randn(b, t, h, vd, generator=gen)
    ones = torch.ones(b, t, h)
    with pytest.raises(ValueError, match="r_min"):
        bayes_filter(q, k, v, None, ones, ones, r_min=0.0, impl=impl, chunk_size=4)


# Host synchronisation: with validate=False no value check runs.
def test_validate_false_resolves_no_checks(monkeypatch):
    from probseq.ops.validation import ValueChecks

    def forbidden(self):
        raise AssertionError("a value check was resolved (host synchronisation) with validate=False")

    monkeypatch.setattr(ValueChecks, "resolve", forbidden)
    x = bayes_inputs(1, 20, 2, 4, 3, seed=12)
    for impl in IMPLS:
        bayes_filter(**_gates(x), initial_state=x["initial_state"], impl=impl, validate=False, output_final_state=True)
    bayes_step(*(x[n][:, 0] for n in FIELDS), x["initial_state"], validate=False)
    superposition_filter(x["q"], x["k"], x["v"], x["g"], validate=False)
    superposition_step(x["q"][:, 0], x["k"][:, 0], x["v"][:, 0], validate=False)
    presets.gated_deltanet(x["q"], x["k"], x["v"], x["g"], x["beta"], validate=False)


def test_validate_true_resolves_once(monkeypatch):
    """All value checks of a call are resolved together: one synchronisation for the inputs, one for the result."""
    from probseq.ops.validation import ValueChecks

    calls = []
    original = ValueChecks.resolve
    monkeypatch.setattr(ValueChecks, "resolve", lambda self: (calls.append(len(self._flags)), original(self)))
    x = bayes_inputs(1, 20, 2, 4, 3, seed=12)
    bayes_filter(**_gates(x), initial_state=x["initial_state"], impl="chunked")
    assert len(calls) == 2 and calls[0] >= 8, calls


def test_gamma_fast_path_is_chosen_by_argument_not_by_values(monkeypatch):
    """γ = None takes the reset path; an all-zero γ tensor runs the general path (and equals it)."""
    import probseq.ops.bayes.chunked as chunked

    calls = []
    original = chunked._covariance_path
    monkeypatch.setattr(chunked, "_covariance_path", lambda *a, **kw: (calls.append(1), original(*a, **kw))[1])
    x = bayes_inputs(1, 20, 2, 4, 3, seed=13, regime="reset")
    explicit = bayes_filter(**_gates(x), initial_state=x["initial_state"], impl="chunked", output_final_state=True)
    assert calls, "an all-zero gamma tensor must take the general path"
    calls.clear()
    reset = bayes_filter(
        **{**_gates(x), "gamma": None}, initial_state=x["initial_state"], impl="chunked", output_final_state=True
    )
    assert not calls, "gamma=None must take the reset path"
    assert_close(reset.output, explicit.output, 1e-12, "output")
    assert_close(reset.state.cov, explicit.state.cov, 1e-12, "cov")


@pytest.mark.parametrize("mixer", ["bayesian", "gated_deltanet", "deltanet", "linear_attention", "mamba2"])
def test_layers_skip_value_checks_by_default(monkeypatch, mixer):
    """A layer in a training loop or a decoding step runs no value check (no host synchronisation, no O(K³)
    covariance check per generated token); ``validate=True`` turns them on."""
    from probseq.layers import MIXERS
    from probseq.ops.validation import ValueChecks

    kwargs = dict(hidden_size=32, num_heads=2)
    if mixer in ("bayesian", "gated_deltanet"):
        kwargs.update(head_dim=16, expand_v=1)
    elif mixer == "mamba2":
        kwargs = dict(hidden_size=32, head_dim=16, state_size=8)
    calls = []
    monkeypatch.setattr(ValueChecks, "resolve", lambda self: calls.append(1))
    layer = MIXERS[mixer](**kwargs)
    layer(torch.randn(2, 9, 32))
    assert not calls
    layer = MIXERS[mixer](**kwargs, validate=True)
    layer(torch.randn(2, 9, 32))
    assert calls
