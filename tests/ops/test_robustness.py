"""The numerical contract (docs/numerics.md): no NaN/Inf for long sequences, extreme gates, zero keys and half
inputs; the covariance stays symmetric with eigenvalues in [−1e-5, 1 + 1e-5]; the near-singular chunk
regime (γ ≈ 1, β ≈ 1, C > K) stays accurate."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F

from probseq.ops import bayes_filter
from tests.helpers import assert_close

EIG_TOL = 1e-5


def _check_state(state, what):
    cov = state.cov.double()
    assert torch.isfinite(state.mean).all() and torch.isfinite(cov).all(), f"{what}: non-finite state"
    assert torch.equal(state.cov, state.cov.transpose(-1, -2)), f"{what}: P not symmetric"
    eig = torch.linalg.eigvalsh(cov)
    assert eig.min() >= -EIG_TOL and eig.max() <= 1 + EIG_TOL, f"{what}: eig(P) in [{eig.min():.3g}, {eig.max():.3g}]"


def _inputs(length, heads=2, key_dim=16, value_dim=16, seed=0, dtype=torch.float32):
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(1, length, heads, key_dim, generator=gen)
    k = F.normalize(torch.randn(1, length, heads, key_dim, generator=gen), dim=-1)
    v = torch.randn(1, length, heads, value_dim, generator=gen)
    return [x.to(dtype) for x in (q, k, v)], gen


def test_long_sequence_float32():
    length = 65_536
    (q, k, v), gen = _inputs(length, heads=1)
    shape = (1, length, 1)
    g = -torch.rand(shape, generator=gen) * 0.05
    beta = torch.rand(shape, generator=gen)
    for gamma in (torch.rand(shape, generator=gen), torch.ones(shape)):
        with torch.no_grad():
            out = bayes_filter(q, k, v, g, beta, gamma, output_final_state=True, output_variance=True, impl="chunked")
        assert torch.isfinite(out.output).all() and torch.isfinite(out.variance).all()
        assert out.variance.min() >= -EIG_TOL
        _check_state(out.state, f"T={length}")


EXTREMES = {"g": [float("-inf"), 0.0], "gamma": [0.0, 1.0], "beta": [1e-6, 1.0]}


@pytest.mark.parametrize("g,gamma,beta", list(itertools.product(*EXTREMES.values())))
def test_constant_extreme_gates(g, gamma, beta):
    (q, k, v), _ = _inputs(300)
    k[:, ::7] = 0.0  # zero keys too
    shape = (1, 300, 2)
    leaves = [x.clone().requires_grad_() for x in (q, k, v)]
    gates = [torch.full(shape, value).requires_grad_() for value in (g, beta, gamma)]
    out = bayes_filter(
        *leaves, gates[0], gates[1], gates[2], output_final_state=True, output_variance=True, impl="chunked"
    )
    ref = bayes_filter(
        *(x.detach().double() for x in leaves + gates), output_final_state=True, output_variance=True, impl="reference"
    )
    _check_state(out.state, f"g={g} gamma={gamma} beta={beta}")
    # γ = β = 1 over 300 tokens is recursive least squares at r = r_min: float32 is ~1e-3 there (docs/numerics.md)
    tol = 5e-3 if gamma == 1.0 and beta == 1.0 else 1e-4
    for name, a, e in [
        ("output", out.output, ref.output),
        ("variance", out.variance, ref.variance),
        ("mean", out.state.mean, ref.state.mean),
        ("cov", out.state.cov, ref.state.cov),
    ]:
        assert_close(a, e, tol, f"g={g} gamma={gamma} beta={beta} {name}")
    (out.output.sum() + out.variance.sum() + out.state.mean.sum() + out.state.cov.sum()).backward()
    for x in leaves + gates:
        assert torch.isfinite(x.grad).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_random_extreme_gates_match_reference(dtype):
    """Gates drawn from the extreme sets, per token: chunked equals the reference and stays in range."""
    length = 200
    (q, k, v), gen = _inputs(length, dtype=dtype)
    k[:, 5::11] = 0.0
    shape = (1, length, 2)

    def pick(values):
        return torch.tensor(values, dtype=torch.float64)[torch.randint(len(values), shape, generator=gen)]

    g, gamma, beta = pick([0.0, -0.01, -1.0, float("-inf")]), pick([0.0, 1.0, 0.5, 0.999]), pick([1e-6, 1.0, 0.5])
    out = bayes_filter(q, k, v, g, beta, gamma, output_final_state=True, output_variance=True, impl="chunked")
    ref = bayes_filter(
        *(x.double() for x in (q, k, v, g, beta, gamma)),
        output_final_state=True,
        output_variance=True,
        impl="reference",
    )
    _check_state(out.state, str(dtype))
    # the reference sees the rounded inputs: the float32 variance and covariance must be float32-accurate;
    # only the output is in the half dtype.
    assert_close(
        out.output, ref.output, {torch.float32: 1e-4, torch.bfloat16: 2e-2, torch.float16: 1e-2}[dtype], "output"
    )
    assert_close(out.variance, ref.variance, 1e-4, "variance")
    assert_close(out.state.cov, ref.state.cov, 1e-4, "cov")


@pytest.mark.parametrize("gamma,beta,tol", [(1.0, 1.0, 1e-2), (0.999, 0.999, 1e-4)])
def test_near_singular_chunk_regime(gamma, beta, tol):
    """γ ≈ 1, β ≈ 1, C = 64 > K = 16: B is rank-deficient up to diag(r); r_min keeps it factorisable.
    At γ = β = 1 (recursive least squares with r = 1e-4) the problem itself is ill-conditioned: the
    float32 recurrent form is off by ~2e-4 there, the chunked one by ~1e-3."""
    (q, k, v), _ = _inputs(512)
    shape = (1, 512, 2)
    args = (q, k, v, torch.zeros(shape), torch.full(shape, beta), torch.full(shape, gamma))
    out = bayes_filter(*args, output_final_state=True, output_variance=True, impl="chunked", chunk_size=64)
    ref = bayes_filter(*(x.double() for x in args), output_final_state=True, output_variance=True, impl="reference")
    _check_state(out.state, "near-singular")
    assert_close(out.output, ref.output, tol, "output")
    assert_close(out.state.cov, ref.state.cov, tol, "cov")
    assert_close(out.variance, ref.variance, tol, "variance")


@pytest.mark.slow
def test_long_sequence_recurrent_and_chunked_agree():
    """65,536 tokens in float32: the decoding recurrence and the chunked form stay together (the
    chunked state passes through 1,024 chunk boundaries and 16 segments)."""
    length = 65_536
    (q, k, v), gen = _inputs(length, heads=1)
    shape = (1, length, 1)
    args = (
        q,
        k,
        v,
        F.logsigmoid(torch.randn(shape, generator=gen) + 5),
        torch.rand(shape, generator=gen),
        torch.rand(shape, generator=gen),
    )
    with torch.no_grad():
        chunked = bayes_filter(*args, output_final_state=True, output_variance=True, impl="chunked")
        recurrent = bayes_filter(*args, output_final_state=True, output_variance=True, impl="recurrent")
    assert_close(chunked.output, recurrent.output, 1e-4, "output")
    assert_close(chunked.variance, recurrent.variance, 1e-4, "variance")
    assert_close(chunked.state.cov, recurrent.state.cov, 1e-4, "cov")
    _check_state(chunked.state, "chunked")


@pytest.mark.parametrize("r_min", [1e-4, 1e-5])
def test_float64_covariance_path_restores_float32_accuracy_near_rls(r_min):
    """γ = β = 1 (recursive least squares at r = r_min), float32 inputs, C = 64 > K = 8: the float32 chunked form
    loses ~1e-3 there; ``covariance_dtype=torch.float64`` brings outputs, state and gradients to float32 accuracy."""
    (q, k, v), _ = _inputs(300, key_dim=8, value_dim=8)
    shape = (1, 300, 2)
    ones = torch.ones(shape)
    leaves = [x.clone().requires_grad_() for x in (q, k, v)]
    out = bayes_filter(
        *leaves, None, ones, ones, r_min=r_min, output_final_state=True, impl="chunked", covariance_dtype=torch.float64
    )
    ref_leaves = [x.detach().double().requires_grad_() for x in (q, k, v)]
    ref = bayes_filter(
        *ref_leaves, None, ones.double(), ones.double(), r_min=r_min, output_final_state=True, impl="recurrent"
    )
    assert out.state.cov.dtype == torch.float32
    for name, a, e in [
        ("output", out.output, ref.output),
        ("mean", out.state.mean, ref.state.mean),
        ("cov", out.state.cov, ref.state.cov),
    ]:
        assert_close(a, e, 1e-5, name)
    out.output.sum().backward()
    ref.output.sum().backward()
    for name, a, e in zip("qkv", leaves, ref_leaves):
        assert_close(a.grad, e.grad, 1e-4, f"d{name}")
