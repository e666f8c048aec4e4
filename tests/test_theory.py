"""Monte Carlo checks of the closed-form retrieval dynamics (docs/theory.md) against the actual filters.

Two kinds of check. *Exact* ones feed one-hot values (value channel ``i`` carries only write ``i``),
so the readout's channels are the weights of the values in the readout; these must match the
formula per sample, for random keys, to float64 rounding. *Expectation* ones feed random values
(and noise) and compare the empirical mean error over trials with the formula within
``4 · SE + 1e-9`` (``SE`` the standard error over trials), for several seeds.
"""

from __future__ import annotations

import math

import pytest
import torch

from probseq import presets, theory
from probseq.ops import bayes_filter, superposition_filter

F64 = torch.float64
SEEDS = (0, 1, 2)


# ---------------------------------------------------------------------------------------------- helpers


def unit(gen: torch.Generator, *shape: int) -> torch.Tensor:
    """Keys uniform on the unit sphere, ``[..., K]``."""
    x = torch.randn(*shape, generator=gen, dtype=F64)
    return x / x.norm(dim=-1, keepdim=True)


def pair_with_cosine(gen: torch.Generator, batch: int, key_dim: int, rho: torch.Tensor | float):
    """Unit keys ``a, b`` ``[B, K]`` with ``aᵀb = ρ`` exactly (``ρ`` a float or ``[B]``)."""
    a = unit(gen, batch, key_dim)
    x = torch.randn(batch, key_dim, generator=gen, dtype=F64)
    perp = x - (x * a).sum(-1, keepdim=True) * a
    perp = perp / perp.norm(dim=-1, keepdim=True)
    rho = torch.as_tensor(rho, dtype=F64).reshape(-1, 1)
    return a, rho * a + (1 - rho.square()).sqrt() * perp


def gates(batch: int, length: int, value: float | torch.Tensor) -> torch.Tensor:
    """A ``[B, T, H=1]`` gate, constant over time (``value`` a float or ``[B]``)."""
    return torch.as_tensor(value, dtype=F64).reshape(-1, 1, 1).expand(batch, length, 1).contiguous()


def run(model: str, q, k, v, *, beta=0.5, gamma=1.0, alpha=1.0, final=False, variance=False):
    """Run one model on ``q, k [B, T, K]``, ``v [B, T, V]`` with ``H = 1``, ``scale = 1``."""
    q, k, v = (x.unsqueeze(2) for x in (q, k, v))
    batch, length = k.shape[:2]
    g = None if alpha == 1.0 else gates(batch, length, math.log(alpha))
    chunk = min(length, 64)  # short sequences: a chunk longer than T only costs padding
    if model == "linear":  # presets.linear_attention is this filter with g = β = None
        return superposition_filter(q, k, v, scale=1.0, output_final_state=final, impl="chunked", chunk_size=chunk)
    if model == "delta":
        return presets.gated_deltanet(
            q,
            k,
            v,
            gates(batch, length, 0.0) if g is None else g,
            gates(batch, length, beta),
            scale=1.0,
            output_final_state=final,
            impl="chunked",
            chunk_size=chunk,
        )
    return bayes_filter(
        q,
        k,
        v,
        g,
        gates(batch, length, beta),
        gates(batch, length, gamma),
        scale=1.0,
        output_final_state=final,
        output_variance=variance,
        impl="chunked",
        chunk_size=chunk,
    )


def assert_mean_matches(samples: torch.Tensor, expected, n_se: float = 4.0, atol: float = 1e-9) -> None:
    """``samples [trials, ...]``: the mean over trials is within ``n_se`` standard errors of ``expected``."""
    mean = samples.mean(0)
    se = samples.std(0) / math.sqrt(samples.shape[0])
    expected = torch.as_tensor(expected, dtype=F64).expand_as(mean)
    gap = (mean - expected).abs()
    assert bool((gap <= n_se * se + atol).all()), (
        f"simulation {mean.tolist()} vs theory {expected.tolist()} (SE {se.tolist()})"
    )


def repeated_key(seed: int, batch: int, length: int, key_dim: int = 8):
    """One random unit key per trial, written ``length`` times: ``[B, T, K]``."""
    key = unit(torch.Generator().manual_seed(seed), batch, 1, key_dim)
    return key.expand(batch, length, key_dim)


# ---------------------------------------------------------------------------------------------- 1, 2


@pytest.mark.parametrize("seed", SEEDS)
def test_gain_attenuation_and_shrunk_average(seed):
    """γ = α = 1: after n writes every value weighs 1/(n + r); the variance along the key is r/(r + n)."""
    betas = torch.tensor([0.2, 0.5, 0.9, 1.0], dtype=F64)
    length = 12
    k = repeated_key(seed, len(betas), length)
    onehot = torch.eye(length, dtype=F64).expand(len(betas), length, length)  # value i = e_i
    out = run("bayes", k, k, onehot, beta=betas, variance=True)
    weights, var = out.output[:, :, 0], out.variance[:, :, 0]
    r = theory.noise_from_strength(betas, 1e-4)[:, None]
    n = torch.arange(1, length + 1, dtype=F64)
    mask = torch.tril(torch.ones(length, length, dtype=F64))  # weights of writes 1..n after n writes
    torch.testing.assert_close(weights, mask * theory.repeated_key_readout_weight(n, r)[..., None], rtol=0, atol=1e-10)
    # the weight of the newest value is the gain of that write
    torch.testing.assert_close(weights.diagonal(dim1=1, dim2=2), theory.repeated_key_gain(n - 1, r), rtol=0, atol=1e-10)
    torch.testing.assert_close(var, theory.repeated_key_variance(n, r), rtol=0, atol=1e-10)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("gamma", [0.0, 0.5, 0.9, 0.99])
@pytest.mark.parametrize("alpha", [1.0, 0.9])
def test_riccati_gain_sequence_matches_filter(seed, gamma, alpha):
    """Any γ, α: the readout after n writes of one key is Σ w_i v_i with w from the scalar Riccati gains."""
    beta, length = 0.4, 20
    k = repeated_key(seed, 1, length)
    onehot = torch.eye(length, dtype=F64)[None]
    out = run("bayes", k, k, onehot, beta=beta, gamma=gamma, alpha=alpha, variance=True)
    path = theory.gain_sequence(length, gamma, theory.noise_from_strength(beta, 1e-4))
    for n in range(1, length + 1):
        expected = torch.zeros(length, dtype=F64)
        expected[:n] = theory.readout_weights(path.gain[:n], alpha)
        torch.testing.assert_close(out.output[0, n - 1, 0], expected, rtol=0, atol=1e-10)
    torch.testing.assert_close(out.variance[0, :, 0], path.post_var, rtol=0, atol=1e-10)


@pytest.mark.parametrize("gamma", [0.0, 0.5, 0.9, 0.99])
@pytest.mark.parametrize("beta", [0.3, 0.5, 0.8])
def test_steady_state_gain(gamma, beta):
    """A key written over and over settles at the gain β* of the quadratic; γ = 0 gives β* = β."""
    length = 200
    r = theory.noise_from_strength(beta, 1e-4)
    x = theory.steady_state_variance(gamma, r)
    assert abs(x * x + (1 - gamma) * (r - 1) * x - (1 - gamma) * r) < 1e-12 and x > 0
    # values 0 except the last write, v_T = 1: the readout after it is the gain of write T.
    k = repeated_key(int(100 * gamma + 10 * beta), 1, length)
    v = torch.zeros(1, length, 1, dtype=F64)
    v[0, -1] = 1
    out = run("bayes", k, k, v, beta=beta, gamma=gamma)
    assert abs(out.output[0, -1, 0, 0].item() - theory.steady_state_gain(gamma, r)) < 1e-9
    if gamma == 0:
        assert abs(theory.steady_state_gain(gamma, r) - beta) < 1e-12


# ---------------------------------------------------------------------------------------------- 3


def noisy_repeats(seed: int, trials: int, length: int, sigma: float, value_dim: int = 4):
    gen = torch.Generator().manual_seed(seed)
    k = unit(gen, trials, 1, 8).expand(trials, length, 8)
    clean = torch.randn(trials, 1, value_dim, generator=gen, dtype=F64)
    noisy = clean + sigma * torch.randn(trials, length, value_dim, generator=gen, dtype=F64)
    return k, clean, noisy


@pytest.mark.parametrize("seed", SEEDS)
def test_noisy_collisions(seed):
    """Same key, values v + σξ: Bayes averages the noise away, the delta rule plateaus, linear attention
    diverges — each as its formula says."""
    trials, length, sigma, beta = 3000, 24, 0.5, 0.5
    k, clean, noisy = noisy_repeats(seed, trials, length, sigma)
    n = torch.arange(1, length + 1, dtype=F64)
    r = theory.noise_from_strength(beta, 1e-4)
    cases = {
        ("bayes", 1.0, 1.0): theory.noisy_collision_error_bayes(n, r, sigma**2),
        ("bayes", 0.9, 1.0): theory.noisy_collision_curve(theory.gain_sequence(length, 0.9, r).gain, sigma**2),
        ("delta", 0.0, 1.0): theory.noisy_collision_error_delta(n, beta, sigma**2),
        ("delta", 0.0, 0.95): theory.noisy_collision_error_delta(n, beta, sigma**2, alpha=0.95),
        ("linear", 0.0, 1.0): theory.noisy_collision_error_linear(n, sigma**2),
    }
    for (model, gamma, alpha), expected in cases.items():
        out = run(model, k, k, noisy, beta=beta, gamma=gamma, alpha=alpha).output[:, :, 0]
        assert_mean_matches((out - clean).square().mean(-1), expected)


def test_noisy_collision_closed_forms_agree_with_recursion():
    r, noise = 0.7, 0.3
    n = torch.arange(1, 51, dtype=F64)
    bayes = theory.noisy_collision_curve(theory.gain_sequence(50, 1.0, r).gain, noise)
    torch.testing.assert_close(bayes, theory.noisy_collision_error_bayes(n, r, noise), rtol=1e-12, atol=0)
    beta = 1 / (1 + r)
    delta = theory.noisy_collision_curve(theory.gain_sequence(50, 0.0, r).gain, noise, alpha=0.9)
    torch.testing.assert_close(delta, theory.noisy_collision_error_delta(n, beta, noise, alpha=0.9), rtol=1e-12, atol=0)
    assert abs(theory.noisy_collision_error_delta(2000, beta, noise) - theory.delta_noise_plateau(beta, noise)) < 1e-12


# ---------------------------------------------------------------------------------------------- 4


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("beta", [0.5, 0.9])
def test_ridge_readout_weights_exact(seed, beta):
    """γ = α = 1 on n > K random keys: the readouts at the stored keys are V W, W = (G + rI)^{-1} G."""
    n, key_dim = 12, 8
    k = unit(torch.Generator().manual_seed(seed), 4, n, key_dim)
    out = run("bayes", k, k, torch.eye(n, dtype=F64).expand(4, n, n), beta=beta, final=True)
    readout = out.state.mean[:, 0] @ k.transpose(1, 2)  # [B, V=n, n]: column j is M k_j
    weights = theory.ridge_readout_weights(k @ k.transpose(1, 2), torch.ones(4, n), 1 / beta - 1)
    torch.testing.assert_close(readout, weights, rtol=0, atol=1e-9)


def random_pairs(seed: int, trials: int, n: int, key_dim: int = 8, value_dim: int = 4):
    gen = torch.Generator().manual_seed(seed)
    return unit(gen, trials, n, key_dim), torch.randn(trials, n, value_dim, generator=gen, dtype=F64)


def in_sample_error(model: str, k, v, **kw) -> torch.Tensor:
    """Mean over stored pairs of the per-channel error of ``M_n k_i``: ``[trials]``."""
    mean = run(model, k, k, v, final=True, **kw).state.mean[:, 0]  # [B, V, K]
    return (k @ mean.transpose(1, 2) - v).square().mean((1, 2))


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("n", [4, 8, 16, 32])
def test_capacity_ridge(seed, n):
    """γ = α = 1, n random keys in K = 8 dims: in-sample error (1/n) Σ (r/(λ + r))², exact given the keys."""
    k, v = random_pairs(seed, 1500, n)
    r = 1.0  # β = 0.5
    assert_mean_matches(in_sample_error("bayes", k, v, beta=0.5), theory.capacity_error_ridge(k, r).mean())


@pytest.mark.parametrize("n", [4, 16, 32])
def test_capacity_plateau(n):
    """r → 0 (β = 1, r = r_min): perfect recall up to K keys, then the plateau (1 − K/n)."""
    k, v = random_pairs(n, 1000, n)
    err = in_sample_error("bayes", k, v, beta=1.0)
    assert abs(err.mean().item() - theory.capacity_plateau(n, 8)) < 4 * err.std().item() / math.sqrt(1000) + 2e-3


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("n", [4, 16])
def test_capacity_linear_attention(seed, n):
    k, v = random_pairs(seed, 3000, n)
    assert_mean_matches(in_sample_error("linear", k, v), theory.capacity_error_linear(n, 8))


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("beta,alpha", [(0.5, 1.0), (1.0, 1.0), (0.7, 0.95)])
def test_delta_retained_signal(seed, beta, alpha):
    """Delta rule: an item followed by m random writes keeps E⟨M k_1, v_1⟩/E‖v_1‖² = β (α (1 − β/K))^m."""
    trials, length, key_dim = 3000, 24, 8
    gen = torch.Generator().manual_seed(seed)
    k = unit(gen, trials, length, key_dim)
    v = torch.randn(trials, length, 1, generator=gen, dtype=F64)
    v[:, 0] = 1.0  # the tracked item's value: the readout's channel is ⟨M k_1, v_1⟩/‖v_1‖²
    q = k[:, :1].expand_as(k)  # read the first key after every write
    signal = run("delta", q, k, v, beta=beta, alpha=alpha).output[:, :, 0, 0]
    m = torch.arange(length, dtype=F64)
    assert_mean_matches(signal, theory.delta_retained_signal(m, beta, key_dim, alpha))


# ---------------------------------------------------------------------------------------------- 5


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("gamma,alpha", [(0.0, 1.0), (0.0, 0.9), (0.6, 1.0), (0.6, 0.8), (1.0, 1.0)])
def test_two_key_coefficients_exact(seed, gamma, alpha):
    """(a, v_a) then (b, v_b), cosine ρ: M a = c_a v_a + c_b v_b for every γ, α, per sample."""
    gen = torch.Generator().manual_seed(seed)
    rho = torch.rand(16, generator=gen, dtype=F64) * 2 - 1
    a, b = pair_with_cosine(gen, 16, 8, rho)
    k = torch.stack([a, b], 1)
    beta = 0.6
    out = run(
        "bayes",
        a[:, None].expand_as(k),
        k,
        torch.eye(2, dtype=F64).expand(16, 2, 2),
        beta=beta,
        gamma=gamma,
        alpha=alpha,
    ).output[:, 1, 0]
    c_a, c_b = theory.two_key_coefficients(rho, theory.noise_from_strength(beta, 1e-4), gamma, alpha)
    torch.testing.assert_close(out, torch.stack([c_a, c_b], -1), rtol=0, atol=1e-10)


def test_two_key_special_cases_agree():
    rho = torch.linspace(-0.99, 0.99, 21, dtype=F64)
    r, beta = 0.8, 1 / 1.8
    ridge = theory.coefficient_error(torch.stack(theory.two_key_coefficients(rho, r, 1.0), -1), 0)
    torch.testing.assert_close(ridge, theory.two_key_error_ridge(rho, r), rtol=1e-12, atol=0)
    gram = torch.stack([torch.stack([torch.ones_like(rho), rho], -1), torch.stack([rho, torch.ones_like(rho)], -1)], -2)
    torch.testing.assert_close(theory.ridge_item_error(gram, torch.ones(21, 2), r, 0), ridge, rtol=1e-12, atol=0)
    delta = theory.coefficient_error(torch.stack(theory.two_key_coefficients(rho, r, 0.0), -1), 0)
    torch.testing.assert_close(delta, theory.two_key_error_delta(rho, beta), rtol=1e-12, atol=0)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("rho", [0.0, 0.5, 0.9])
def test_two_key_errors(seed, rho):
    """Random values: the empirical error on the first item matches ridge, delta and linear formulas."""
    trials, beta = 3000, 0.5
    gen = torch.Generator().manual_seed(seed)
    a, b = pair_with_cosine(gen, trials, 8, rho)
    k = torch.stack([a, b], 1)
    v = torch.randn(trials, 2, 4, generator=gen, dtype=F64)
    cases = {
        "bayes": theory.two_key_error_ridge(rho, 1 / beta - 1),
        "delta": theory.two_key_error_delta(rho, beta),
        "linear": theory.two_key_error_linear(rho),
    }
    for model, expected in cases.items():
        out = run(model, a[:, None].expand_as(k), k, v, beta=beta).output[:, 1, 0]
        assert_mean_matches((out - v[:, 0]).square().mean(-1), expected)


# ---------------------------------------------------------------------------------------------- 6


def confident_sequence(gen, trials: int, n: int, m: int, rho: float, value_dim: int):
    """Key a written n times, then key b (cosine ρ) m times; read a after every write."""
    a, b = pair_with_cosine(gen, trials, 8, rho)
    k = torch.cat([a[:, None].expand(trials, n, 8), b[:, None].expand(trials, m, 8)], 1)
    return a[:, None].expand_as(k), k


@pytest.mark.parametrize("seed", SEEDS)
def test_confident_memory_exact(seed):
    """n writes of a then m of b: weighted ridge for Bayes (γ = α = 1) and the delta formula, per sample."""
    n, m, rho, beta = 6, 12, 0.7, 0.5
    gen = torch.Generator().manual_seed(seed)
    q, k = confident_sequence(gen, 8, n, m, rho, 2)
    onehot = torch.cat(
        [torch.tensor([1.0, 0.0], dtype=F64).expand(8, n, 2), torch.tensor([0.0, 1.0], dtype=F64).expand(8, m, 2)], 1
    )
    steps = torch.arange(m + 1, dtype=F64)
    gram = torch.tensor([[1.0, rho], [rho, 1.0]], dtype=F64)
    weights = theory.ridge_readout_weights(gram, torch.stack([torch.full_like(steps, n), steps], -1), 1.0)
    out = run("bayes", q, k, onehot, beta=beta).output[:, n - 1 :, 0]  # [B, m + 1, 2]
    torch.testing.assert_close(out, weights[:, :, 0].expand_as(out), rtol=0, atol=1e-10)
    for alpha in (1.0, 0.9):
        out = run("delta", q, k, onehot, beta=beta, alpha=alpha).output[:, n - 1 :, 0]
        torch.testing.assert_close(
            theory.coefficient_error(out, 0),
            theory.confident_memory_error_delta(n, steps, rho, beta, alpha=alpha).expand(8, -1),
            rtol=0,
            atol=1e-10,
        )


@pytest.mark.parametrize("seed", SEEDS)
def test_confident_memory_errors(seed):
    """Random values: error on a vs the number m of colliding writes of b, for all three models."""
    trials, n, m, rho, beta = 3000, 8, 16, 0.6, 0.5
    gen = torch.Generator().manual_seed(seed)
    q, k = confident_sequence(gen, trials, n, m, rho, 4)
    values = torch.randn(trials, 2, 4, generator=gen, dtype=F64)
    v = torch.cat([values[:, :1].expand(trials, n, 4), values[:, 1:].expand(trials, m, 4)], 1)
    steps = torch.arange(m + 1, dtype=F64)
    cases = {
        "bayes": theory.confident_memory_error_ridge(n, steps, rho, 1.0),
        "delta": theory.confident_memory_error_delta(n, steps, rho, beta),
        "linear": theory.confident_memory_error_linear(n, steps, rho),
    }
    for model, expected in cases.items():
        out = run(model, q, k, v, beta=beta).output[:, n - 1 :, 0]
        assert_mean_matches((out - values[:, :1]).square().mean(-1), expected)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("gamma", [1.0, 0.9])
def test_interference_factor(seed, gamma):
    """After n writes of a, one write of b moves M a by f·e: f = ρ(1 − c)/(1 + r − cρ²) for Bayes (→ 0 as
    n grows), βρ for the delta rule (whatever n)."""
    rho, beta = 0.6, 0.5
    gen = torch.Generator().manual_seed(seed)
    for n in (1, 4, 16):
        q, k = confident_sequence(gen, 4, n, 1, rho, 2)
        onehot = torch.cat(
            [torch.tensor([1.0, 0.0], dtype=F64).expand(4, n, 2), torch.tensor([0.0, 1.0], dtype=F64).expand(4, 1, 2)],
            1,
        )
        # with v_a = e_1, v_b = e_2 the innovation e has e_2-component 1: the change in channel 2 is f.
        bayes = run("bayes", q, k, onehot, beta=beta, gamma=gamma).output[:, -1, 0, 1]
        torch.testing.assert_close(
            bayes, torch.full((4,), theory.bayes_interference_factor(n, rho, 1.0, gamma), dtype=F64), rtol=0, atol=1e-10
        )
        delta = run("delta", q, k, onehot, beta=beta).output[:, -1, 0, 1]
        torch.testing.assert_close(
            delta, torch.full((4,), theory.delta_interference_factor(rho, beta), dtype=F64), rtol=0, atol=1e-10
        )
    assert theory.bayes_interference_factor(16, rho, 1.0) < theory.bayes_interference_factor(1, rho, 1.0) / 5
