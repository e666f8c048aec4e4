"""Closed-form retrieval dynamics (docs/theory.md).

Predictions of what each design remembers, stated as functions and checked against Monte Carlo runs
of the actual filters in ``tests/test_theory.py``. Unless a function says otherwise:

- keys are unit norm (``‖k‖ = 1``), read with the key itself (``q = k``, ``scale = 1``), so a readout
  is ``M k``; the prior is ``M_0 = 0``, ``P_0 = I``;
- ``r`` is the write noise of the regression design (``r = max((1 − β)/β, r_min)`` for the Bayesian
  Layer, ``r = (1 − β)/β`` for the delta rule, so its gain on a unit key is ``1/(1 + r) = β``);
- values are zero-mean, independent of the keys and of each other, with second moment
  ``value_power = E v_c²`` per value channel, and every *error* is per value channel:
  ``E‖o − v‖² / V``;
- "Bayes" is the regression design with certainty retention ``γ`` (``γ = α = 1``: recursive least
  squares, i.e. ridge regression with penalty ``r``); "delta rule" is its covariance reset ``γ = 0``
  (DeltaNet for ``α = 1``, Gated DeltaNet for ``α < 1``); "linear attention" is the superposition
  design ``M = Σ v kᵀ``.

Two facts do most of the work. (i) While every key written so far is one unit key ``k``, the
covariance stays of the form ``I − c k kᵀ`` and the mean of the form ``m kᵀ``, so the filter along
``k`` is a scalar Riccati recursion (:func:`gain_sequence`) and the readout a weighted average of the
values (:func:`readout_weights`). (ii) With ``γ = α = 1`` the posterior mean is the ridge solution
``M = V N Kᵀ (K N Kᵀ + r I)^{-1}`` for keys ``K`` (``K × n``, one column per distinct key) written
``N = diag(counts)`` times, so readouts at the stored keys are ``M K = V W`` with
``W = N (G N + r I)^{-1} G``, ``G = KᵀK`` (:func:`ridge_readout_weights`).

Functions work on Python floats and, where natural, on tensors (elementwise).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from probseq.design import noise_from_strength  # re-exported: r of a write strength β, one definition

__all__ = [
    "RiccatiPath",
    "bayes_interference_factor",
    "capacity_error_linear",
    "capacity_error_ridge",
    "capacity_plateau",
    "coefficient_error",
    "confident_memory_error_delta",
    "confident_memory_error_linear",
    "confident_memory_error_ridge",
    "delta_interference_factor",
    "delta_noise_plateau",
    "delta_retained_signal",
    "gain_sequence",
    "noise_from_strength",
    "noisy_collision_curve",
    "noisy_collision_error_bayes",
    "noisy_collision_error_delta",
    "noisy_collision_error_linear",
    "readout_weights",
    "repeated_key_gain",
    "repeated_key_readout_weight",
    "repeated_key_variance",
    "ridge_item_error",
    "ridge_readout_weights",
    "steady_state_gain",
    "steady_state_variance",
    "two_key_coefficients",
    "two_key_error_delta",
    "two_key_error_linear",
    "two_key_error_ridge",
]

Scalar = float | Tensor


# ----------------------------------------------------------------------------------------------
# 1. Gain attenuation (γ = α = 1)
# ----------------------------------------------------------------------------------------------


def repeated_key_variance(n: Scalar, r: Scalar) -> Scalar:
    """Posterior variance along a unit key written ``n`` times (``γ = α = 1``): ``p_n = r/(r + n)``.

    Assumptions: one unit key ``k``, prior ``P_0 = I``, noise ``r``.
    Derivation: along ``k`` the precision adds ``1/r`` per write, ``1/p_n = 1 + n/r``. This is the
    predictive variance ``kᵀ P_n k`` the filter outputs when read with ``q = k``.
    """
    return r / (r + n)


def repeated_key_gain(n: Scalar, r: Scalar) -> Scalar:
    """Gain of write ``n + 1`` of a unit key already written ``n`` times (``γ = α = 1``): ``1/(n + 1 + r)``.

    The gain ``g = kᵀ u / s`` is the fraction of the innovation that reaches the readout,
    ``m_{n+1} = m_n + g (v_{n+1} − m_n)``.
    Derivation: ``g = p_n /(p_n + r)`` with ``p_n = r/(r + n)`` (:func:`repeated_key_variance`).
    The gain attenuates like ``1/n``: the memory turns into a running average.
    """
    return 1 / (n + 1 + r)


def repeated_key_readout_weight(n: Scalar, r: Scalar) -> Scalar:
    """Weight of each value in the readout after ``n`` writes of one unit key (``γ = α = 1``).

    Statement: ``M_n k = Σ_{i≤n} v_i /(n + r)`` — the shrunk average of the written values.
    Derivation: ridge regression, ``M = (Σ v_i kᵀ)(n k kᵀ + r I)^{-1}`` and
    ``(n k kᵀ + r I)^{-1} k = k /(n + r)``.
    """
    return 1 / (n + r)


# ----------------------------------------------------------------------------------------------
# 2. Repeated-key dynamics for any γ, α: the scalar Riccati recursion
# ----------------------------------------------------------------------------------------------


class RiccatiPath(NamedTuple):
    """The filter along one unit key written ``n`` times; each field is ``[n]`` (write ``1..n``).

    Attributes:
        gain: ``g_i = p^-_i /(p^-_i + r)``, the fraction of the innovation written to the readout.
        prior_var: predicted variance ``p^-_i = kᵀ P^-_i k``.
        post_var: posterior variance ``p_i = kᵀ P_i k`` (the filter's predictive variance for ``q = k``).
    """

    gain: Tensor
    prior_var: Tensor
    post_var: Tensor


def gain_sequence(n: int, gamma: float, r: float, p0: float = 1.0) -> RiccatiPath:
    """The exact gains of ``n`` writes of one unit key, for any retention ``γ`` and decay ``α``.

    Statement: ``p^-_i = (1 − γ) + γ p_{i−1}``, ``g_i = p^-_i /(p^-_i + r)``,
    ``p_i = p^-_i r /(p^-_i + r)``, from ``p_0 = p0`` (``1`` for the prior ``P_0 = I``).
    Assumptions: every write uses the same unit key ``k``; constant ``γ``, ``r``. The decay ``α`` does
    not enter (it scales the mean, not the covariance).
    Derivation: ``P^- = (1 − γ) I + γ P`` and ``P = P^- − u uᵀ/s`` with ``u = P^- k`` keep ``P`` of the
    form ``I − c k kᵀ`` (``P_0 = I``), so ``k`` is an eigenvector of every ``P^-``, ``P``; restrict the
    update to it (``kᵀu = p^-``, ``s = p^- + r``).

    Returns:
        :class:`RiccatiPath` of float64 tensors ``[n]``.
    """
    gains, priors, posts = [], [], []
    p = p0
    for _ in range(n):
        prior = (1 - gamma) + gamma * p
        p = prior * r / (prior + r)
        gains.append(prior / (prior + r))
        priors.append(prior)
        posts.append(p)
    as_tensor = lambda xs: torch.tensor(xs, dtype=torch.float64)  # noqa: E731
    return RiccatiPath(as_tensor(gains), as_tensor(priors), as_tensor(posts))


def steady_state_variance(gamma: Scalar, r: Scalar) -> Scalar:
    """Steady predicted variance ``x*`` along a key written over and over (``γ < 1``).

    Statement: ``x*`` is the positive root of ``x² + (1 − γ)(r − 1) x − (1 − γ) r = 0``.
    Derivation: fixed point of :func:`gain_sequence`, ``x = (1 − γ) + γ x r /(x + r)``; multiply by
    ``x + r``. ``γ = 0`` gives ``x* = 1`` (a full reset), ``γ → 1`` gives ``x* → 0``.
    """
    b = (1 - gamma) * (r - 1)
    return (-b + (b * b + 4 * (1 - gamma) * r) ** 0.5) / 2


def steady_state_gain(gamma: Scalar, r: Scalar) -> Scalar:
    """Steady gain ``β* = x*/(x* + r)`` of a repeatedly written key: an EMA with memory ``1/β*``.

    ``γ = 0`` gives ``β* = 1/(1 + r) = β`` — Gated DeltaNet's fixed write strength; ``γ > 0`` lowers
    it towards ``0`` (``γ = 1``: the ``1/n`` gain of :func:`repeated_key_gain`).
    """
    x = steady_state_variance(gamma, r)
    return x / (x + r)


# ----------------------------------------------------------------------------------------------
# 3. Noisy collisions: the same key written with noisy values
# ----------------------------------------------------------------------------------------------


def readout_weights(gains: Tensor, alpha: float = 1.0) -> Tensor:
    """Weights ``w`` of the values in the readout after writing one unit key ``n`` times.

    Statement: ``M_n k = Σ_i w_i v_i`` with ``w_i = g_i ∏_{i<j≤n} α (1 − g_j)``.
    Derivation: along the key the mean follows ``m_i = α (1 − g_i) m_{i−1} + g_i v_i`` (the innovation
    is ``v_i − α m_{i−1}``); unroll from ``m_0 = 0``.

    Args:
        gains: ``[n]`` gains ``g_i`` (:func:`gain_sequence`; ``β`` for the delta rule).
        alpha: the decay ``α`` per write.

    Returns:
        ``[n]`` weights.
    """
    retain = alpha * (1 - gains)
    # ∏_{j>i} retain_j as a reversed cumulative product, shifted by one.
    tail = torch.cat([torch.flip(torch.cumprod(torch.flip(retain[1:], [0]), 0), [0]), retain.new_ones(1)])
    return gains * tail


def noisy_collision_curve(gains: Tensor, noise_var: float, value_power: float = 1.0, alpha: float = 1.0) -> Tensor:
    """Expected readout error after each of ``n`` writes of ``(k, v + σ ξ_i)``, any ``γ``, ``α``.

    Statement: with ``S_n = Σ w_i``, ``Q_n = Σ w_i²`` (:func:`readout_weights` after ``n`` writes),
    ``E (m_n − v)² = (S_n − 1)² value_power + σ² Q_n`` per channel.
    Assumptions: one unit key; clean value ``v`` and noise ``ξ_i ~ N(0, 1)`` independent.
    Derivation: ``m_n = S_n v + σ Σ w_i ξ_i``; the cross term has mean zero. ``S, Q`` follow
    ``S_n = a_n S_{n−1} + g_n``, ``Q_n = a_n² Q_{n−1} + g_n²`` with ``a_n = α (1 − g_n)``.

    Args:
        gains: ``[n]`` gains of writes ``1..n``.
        noise_var: ``σ²``.

    Returns:
        ``[n]`` the error after write ``1..n``.
    """
    total, square, out = 0.0, 0.0, []
    for g in gains.tolist():
        a = alpha * (1 - g)
        total, square = a * total + g, a * a * square + g * g
        out.append((total - 1) ** 2 * value_power + noise_var * square)
    return torch.tensor(out, dtype=torch.float64)


def noisy_collision_error_bayes(n: Scalar, r: Scalar, noise_var: float, value_power: float = 1.0) -> Scalar:
    """Bayesian layer (``γ = α = 1``): ``E (m_n − v)² = σ² n/(n + r)² + value_power · r²/(n + r)²``.

    Derivation: the readout is ``Σ (v + σξ_i)/(n + r)`` (:func:`repeated_key_readout_weight`): a
    variance ``σ² n/(n + r)²`` falling like ``1/n`` plus the shrinkage bias ``(r/(n + r))² v²``.
    """
    return (noise_var * n + value_power * r * r) / (n + r) ** 2


def noisy_collision_error_delta(
    n: Scalar, beta: Scalar, noise_var: float, value_power: float = 1.0, alpha: Scalar = 1.0
) -> Scalar:
    """Delta rule (``γ = 0``, gain ``β``, decay ``α``): the exact finite-``n`` error.

    Statement: with ``q = α (1 − β)``, ``S_n = β (1 − qⁿ)/(1 − q)``, ``Q_n = β² (1 − q²ⁿ)/(1 − q²)``,
    ``E (m_n − v)² = (S_n − 1)² value_power + σ² Q_n``. For ``α = 1``:
    ``(1 − β)^{2n} value_power + β² σ² (1 − (1 − β)^{2n})/(1 − (1 − β)²)``, which plateaus at
    ``β σ²/(2 − β)`` (:func:`delta_noise_plateau`): the noise is never averaged away.
    Derivation: ``m_n = q m_{n−1} + β (v + σ ξ_n)``; geometric sums of :func:`readout_weights`.
    """
    q = alpha * (1 - beta)
    total = beta * (1 - q**n) / (1 - q)
    square = beta * beta * (1 - q ** (2 * n)) / (1 - q * q)
    return (total - 1) ** 2 * value_power + noise_var * square


def delta_noise_plateau(beta: Scalar, noise_var: float) -> Scalar:
    """Delta rule's error floor on a repeatedly written noisy key (``α = 1``, ``n → ∞``): ``β σ²/(2 − β)``."""
    return beta * noise_var / (2 - beta)


def noisy_collision_error_linear(n: Scalar, noise_var: float, value_power: float = 1.0) -> Scalar:
    """Linear attention: ``m_n = Σ (v + σ ξ_i)``, so ``E (m_n − v)² = (n − 1)² value_power + n σ²`` — it
    grows without bound (the superposition design assumes every write fills a fresh slot)."""
    return (n - 1) ** 2 * value_power + n * noise_var


# ----------------------------------------------------------------------------------------------
# 4. Capacity: n random keys in K dimensions
# ----------------------------------------------------------------------------------------------


def capacity_error_ridge(keys: Tensor, r: Scalar, value_power: float = 1.0) -> Tensor:
    """Bayesian layer (``γ = α = 1``): mean in-sample retrieval error of ``n`` stored pairs.

    Statement: ``(1/n) Σ_i E (M k_i − v_i)² = (value_power/n) Σ_j (r/(λ_j + r))²`` over the ``n``
    eigenvalues ``λ_j`` of the Gram ``G = KᵀK``; exact in expectation over the values, given the keys.
    Derivation: ``M K = V (G + r I)^{-1} G`` (:func:`ridge_readout_weights` with unit counts), so the
    residual is ``−V R`` with ``R = r (G + r I)^{-1}``; for i.i.d. values
    ``E ‖V R‖²_F = value_power · V · tr(R²)``.
    Limit ``r → 0``: ``(value_power/n) · #{λ_j = 0} = (1 − K/n)_+ value_power`` for keys in general
    position (:func:`capacity_plateau`).

    Args:
        keys: ``[..., n, K]`` keys (any norm), one set per leading index.
        r: noise ``r > 0``.

    Returns:
        ``[...]`` the expected error for each key set.
    """
    keys = keys.to(torch.float64)
    eig = torch.linalg.eigvalsh(keys @ keys.transpose(-1, -2)).clamp_min(0)
    return value_power * (r / (eig + r)).square().mean(-1)


def capacity_plateau(n: Scalar, key_dim: int, value_power: float = 1.0) -> Scalar:
    """Ridge capacity limit ``r → 0``: error ``0`` for ``n ≤ K`` and ``(1 − K/n) value_power`` beyond.

    ``n > K`` keys span at most ``K`` dimensions, so ``n − K`` directions of the values cannot be
    fitted (``n − K`` zero eigenvalues in :func:`capacity_error_ridge`).
    """
    excess = 1 - key_dim / n
    return value_power * (excess.clamp_min(0) if isinstance(excess, Tensor) else max(excess, 0.0))


def capacity_error_linear(n: Scalar, key_dim: int, value_power: float = 1.0) -> Scalar:
    """Linear attention with random unit keys: mean error ``(n − 1)/K · value_power``.

    Derivation: ``M k_i = v_i + Σ_{j≠i} (k_jᵀ k_i) v_j`` and ``E (k_jᵀ k_i)² = 1/K`` for independent
    keys uniform on the sphere; the crosstalk grows linearly with ``n``, with no plateau.
    """
    return (n - 1) / key_dim * value_power


def delta_retained_signal(m: Scalar, beta: Scalar, key_dim: int, alpha: Scalar = 1.0) -> Scalar:
    """Delta rule: retained signal of an item followed by ``m`` writes with random unit keys.

    Statement: ``E⟨M k_i, v_i⟩ / E‖v_i‖² = β (α (1 − β/K))^m`` (``α = 1``: ``β (1 − β/K)^m``).
    Assumptions: keys independent and uniform on the unit sphere in ``K`` dims, values independent,
    zero mean; any state before item ``i``.
    Derivation: the item enters as ``β v_i k_iᵀ`` and every later write multiplies the memory by
    ``α (I − β k_j k_jᵀ)`` from the right; earlier and later values are independent of ``v_i`` and
    drop out. ``E[α (I − β k kᵀ)] = α (1 − β/K) I`` and the factors are independent, so the
    expected product is the product of expectations.
    """
    return beta * (alpha * (1 - beta / key_dim)) ** m


# ----------------------------------------------------------------------------------------------
# 5. Overlapping keys
# ----------------------------------------------------------------------------------------------


def ridge_readout_weights(gram: Tensor, counts: Tensor, r: Scalar) -> Tensor:
    """Readout weights of the Bayesian layer (``γ = α = 1``) at the stored keys, any write order.

    Statement: distinct keys ``k_1..k_d`` (columns of ``K``), key ``j`` written ``counts_j`` times with
    value ``v_j``: ``M k_j = Σ_i v_i W_ij`` with ``W = N (G N + r I)^{-1} G``, ``N = diag(counts)``,
    ``G = KᵀK``.
    Derivation: with ``γ = α = 1`` the filter is recursive least squares, so ``M`` is the ridge
    solution ``V N Kᵀ (K N Kᵀ + r I)^{-1}`` whatever the order; push-through
    ``Kᵀ (K N Kᵀ + r I)^{-1} = (G N + r I)^{-1} Kᵀ``.

    Args:
        gram: ``[..., d, d]`` key Gram matrix.
        counts: ``[..., d]`` number of writes of each key.

    Returns:
        ``[..., d, d]`` ``W`` (row: value ``i``, column: key read ``j``).
    """
    gram = gram.to(torch.float64)
    scaled = counts.to(torch.float64)[..., :, None] * gram  # N G
    eye = torch.eye(gram.shape[-1], dtype=torch.float64)
    # N (G N + rI)^{-1} = (N G + rI)^{-1} N, since (N G + rI) N = N (G N + rI).
    return torch.linalg.solve(scaled + r * eye, scaled)


def coefficient_error(coefficients: Tensor, item: int, value_power: float = 1.0) -> Tensor:
    """Error of a readout ``Σ_i c_i v_i`` targeting ``v_item`` (i.i.d. values):
    ``value_power · ((c_item − 1)² + Σ_{i≠item} c_i²)``.

    Args:
        coefficients: ``[..., d]``.
    """
    target = torch.zeros(coefficients.shape[-1], dtype=coefficients.dtype)
    target[item] = 1
    return value_power * (coefficients - target).square().sum(-1)


def ridge_item_error(gram: Tensor, counts: Tensor, r: Scalar, item: int, value_power: float = 1.0) -> Tensor:
    """Bayesian layer (``γ = α = 1``): expected error ``E (M k_item − v_item)²`` per channel.

    With ``W`` from :func:`ridge_readout_weights`: ``value_power · ((W_aa − 1)² + Σ_{i≠a} W_ia²)``.
    For unit counts ``W − I = −r (G + r I)^{-1}``, so this is ``value_power · Σ_i R_ia²`` with
    ``R = r (G + r I)^{-1}``.
    """
    return coefficient_error(ridge_readout_weights(gram, counts, r)[..., :, item], item, value_power)


def two_key_coefficients(rho: Scalar, r: Scalar, gamma: Scalar = 1.0, alpha: Scalar = 1.0) -> tuple[Scalar, Scalar]:
    """Readout at key ``a`` after writing ``(a, v_a)`` then ``(b, v_b)``, ``aᵀb = ρ``, any ``γ``, ``α``.

    Statement: ``M a = c_a v_a + c_b v_b`` with ``c₁ = 1/(1 + r)``, ``h = ρ (1 − γ c₁)/(1 + r − γ c₁ ρ²)``,
    ``c_b = h``, ``c_a = α c₁ (1 − ρ h)``.
    Derivation: write 1 gives ``M_1 = c₁ v_a aᵀ``, ``P_1 = I − c₁ a aᵀ``. Write 2: ``P^- = I − γ c₁ a aᵀ``,
    ``u = b − γ c₁ ρ a``, ``s = 1 + r − γ c₁ ρ²``, ``e = v_b − α c₁ ρ v_a``, and
    ``M_2 a = α c₁ v_a + e (uᵀa)/s``. Special cases: the delta rule (``γ = 0``, ``c₁ = β``)
    ``c_a = αβ (1 − βρ²)``, ``c_b = βρ``; ridge (``γ = α = 1``) agrees with :func:`ridge_readout_weights`.
    """
    c1 = 1 / (1 + r)
    h = rho * (1 - gamma * c1) / (1 + r - gamma * c1 * rho * rho)
    return alpha * c1 * (1 - rho * h), h


def two_key_error_ridge(rho: Scalar, r: Scalar, value_power: float = 1.0) -> Scalar:
    """Bayesian layer (``γ = α = 1``), two keys with cosine ``ρ``: error on the first item,
    ``value_power · Σ_j R_ja²`` with ``R = r (G + r I)^{-1}``, ``G = [[1, ρ], [ρ, 1]]``.

    Closed form: ``(G + rI)^{-1} = [[1 + r, −ρ], [−ρ, 1 + r]] / ((1 + r)² − ρ²)``, so the error is
    ``value_power · r² ((1 + r)² + ρ²) / ((1 + r)² − ρ²)²``. Order does not matter (ridge).
    """
    det = (1 + r) ** 2 - rho * rho
    return value_power * r * r * ((1 + r) ** 2 + rho * rho) / det**2


def two_key_error_delta(rho: Scalar, beta: Scalar, value_power: float = 1.0) -> Scalar:
    """DeltaNet, ``(a, v_a)`` then ``(b, v_b)``: ``M a = β (1 − βρ²) v_a + βρ v_b``, so the error is
    ``[(1 − β + β²ρ²)² + β²ρ²] value_power``."""
    return ((1 - beta + beta * beta * rho * rho) ** 2 + beta * beta * rho * rho) * value_power


def two_key_error_linear(rho: Scalar, value_power: float = 1.0) -> Scalar:
    """Linear attention: ``M a = v_a + ρ v_b``, error ``ρ² value_power``."""
    return rho * rho * value_power


# ----------------------------------------------------------------------------------------------
# 6. A confident memory, then colliding writes
# ----------------------------------------------------------------------------------------------


def confident_memory_error_ridge(n: int, m: Scalar, rho: float, r: float, value_power: float = 1.0) -> Tensor:
    """Bayesian layer (``γ = α = 1``): error on ``a`` after ``n`` writes of ``(a, v_a)`` then ``m`` of ``(b, v_b)``.

    Statement: weighted ridge with ``N = diag(n, m)``: ``M a = W_aa v_a + W_ba v_b``
    (:func:`ridge_readout_weights`), error ``value_power ((W_aa − 1)² + W_ba²)``. As ``m → ∞`` the
    memory of ``a`` keeps ``W_aa → n (1 − ρ²)/(n (1 − ρ²) + r)``: only the component of ``a``
    orthogonal to ``b`` survives, and it is protected in proportion to the evidence ``n``.

    Args:
        m: number of colliding writes, a float or a ``[M]`` tensor.

    Returns:
        the error, shape of ``m``.
    """
    m = torch.as_tensor(m, dtype=torch.float64)
    gram = torch.tensor([[1.0, rho], [rho, 1.0]], dtype=torch.float64)
    counts = torch.stack([torch.full_like(m, float(n)), m], dim=-1)
    return ridge_item_error(gram, counts, r, 0, value_power)


def confident_memory_error_delta(
    n: Scalar, m: Scalar, rho: Scalar, beta: Scalar, value_power: float = 1.0, alpha: Scalar = 1.0
) -> Scalar:
    """Delta rule: error on ``a`` after ``n`` writes of ``(a, v_a)`` then ``m`` of ``(b, v_b)``, ``aᵀb = ρ``.

    Statement (``α = 1``): ``M a = d_n (1 − c_m ρ²) v_a + c_m ρ v_b`` with ``d_n = 1 − (1 − β)ⁿ``,
    ``c_m = 1 − (1 − β)^m``; error ``[(d_n (1 − c_m ρ²) − 1)² + c_m² ρ²] value_power``. However
    confident the memory of ``a``, every write of ``b`` erases along ``b`` with the same ``β``.
    General ``α`` (Gated DeltaNet), ``q = α (1 − β)``: ``d_n = β (1 − qⁿ)/(1 − q)``,
    ``A = Σ_{j<m} α^j``, ``Bq = (α^m − q^m)/(α − q)``:
    ``M a = d_n (α^m − αβρ² Bq) v_a + βρ (A − αβ (A − Bq)/(1 − q)) v_b``.
    Derivation: after the ``a`` writes ``M = d_n v_a aᵀ``. Track ``x = M a``, ``y = M b`` under
    ``M ← α M (I − β b bᵀ) + β v_b bᵀ``: ``y_j = q^j y_0 + β v_b (1 − q^j)/(1 − q)`` and
    ``x_m = α^m x_0 + Σ_{j<m} α^{m−1−j} βρ (v_b − α y_j)``, with ``x_0 = d_n v_a``, ``y_0 = ρ d_n v_a``.
    """
    q = alpha * (1 - beta)
    d = beta * (1 - q**n) / (1 - q)
    geometric = m if alpha == 1 else (1 - alpha**m) / (1 - alpha)
    mixed = (alpha**m - q**m) / (alpha - q)
    coef_a = d * (alpha**m - alpha * beta * rho * rho * mixed)
    coef_b = beta * rho * (geometric - alpha * beta * (geometric - mixed) / (1 - q))
    return ((coef_a - 1) ** 2 + coef_b**2) * value_power


def confident_memory_error_linear(n: Scalar, m: Scalar, rho: Scalar, value_power: float = 1.0) -> Scalar:
    """Linear attention: ``M a = n v_a + m ρ v_b``, error ``[(n − 1)² + m² ρ²] value_power``."""
    return ((n - 1) ** 2 + (m * rho) ** 2) * value_power


def bayes_interference_factor(n: int, rho: Scalar, r: float, gamma: float = 1.0) -> Scalar:
    """How much one write of ``b`` moves the readout at ``a`` after ``n`` writes of ``a`` (``α = 1``).

    Statement: writing ``(b, v_b)`` changes ``M a`` by ``f · e`` with ``e = v_b − M b`` the innovation and
    ``f = ρ (1 − c)/(1 + r − c ρ²)``, ``c = γ (1 − p_n)``; for ``γ = 1``, ``c = n/(n + r)`` and
    ``f → 0`` like ``1/n``: confident memories are protected. The delta rule moves it by ``βρ e``
    whatever ``n`` (:func:`delta_interference_factor`).
    Derivation: after ``n`` writes ``P = I − (1 − p_n) a aᵀ`` (:func:`gain_sequence`), so
    ``P^- = I − c a aᵀ``, ``u = b − c ρ a``, ``s = 1 − c ρ² + r`` and ``Δ(M a) = e (uᵀa)/s``.
    """
    p = gain_sequence(n, gamma, r).post_var[-1].item() if n > 0 else 1.0
    c = gamma * (1 - p)
    return rho * (1 - c) / (1 + r - c * rho * rho)


def delta_interference_factor(rho: Scalar, beta: Scalar) -> Scalar:
    """Delta rule: one write of ``(b, v_b)`` changes ``M a`` by ``βρ e``, ``e = v_b − α M b``."""
    return beta * rho
