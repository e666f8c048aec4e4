"""Named recurrences of the literature as design-model presets (docs/design-model.md).

Each function takes the named model's *native* parameters (flash-linear-attention conventions:
``[B, T, H, ·]`` layout, log-space decays) and runs the exact filter of one design model through
:func:`probseq.ops.run_filter` — none of them is a separate algorithm. States are ours: value-first
``[B, H, V, K]`` (flash-linear-attention's are key-first ``[B, H, K, V]``: transpose when converting).

=================  ===============  ================================  ===============================
preset             design           dynamics / write model            native parameters
=================  ===============  ================================  ===============================
linear_attention   superposition    α = 1, β = 1                      q, k, v
simple_gla         superposition    α = exp(g) scalar, β = 1          q, k, v, g [B,T,H]
gla                superposition    α = exp(gk) per key channel       q, k, v, gk [B,T,H,K]
mamba2             superposition    α = exp(Δ·A), β = Δ, scale 1      x→v, B→k, C→q, dt→Δ, A
deltanet           regression       γ = 0, α = 1, r = (1−β)/β         q, k (unit norm), v, beta
gated_deltanet     regression       γ = 0, α = exp(g), r = (1−β)/β    q, k (unit norm), v, g, beta
longhorn           regression       γ = 0, α = 1, r = 1/β'            q, k (raw), v, beta' > 0
bayesian           regression       γ, α = exp(g), r = max((1−β)/β, r_min)  q, k, v, g, beta, gamma
=================  ===============  ================================  ===============================

With the covariance reset (``γ = 0``) the write key is ``k/(‖k‖² + r)``, which is DeltaNet's ``β k``
exactly when ``‖k‖ = 1`` — so the delta-rule presets require unit-norm (or zero) keys, as those models
L2-normalise them; pass ``use_qk_l2norm_in_kernel=True`` to normalise here. Longhorn's gain
``β' k / (1 + β'‖k‖²)`` is exact for raw keys.

``beta`` keeps each named model's own meaning (docs/notation.md, "beta"): the write strength ``β ∈ [0, 1]``
with noise ``r = (1 − β)/β`` for ``deltanet``, ``gated_deltanet`` and ``bayesian``; Longhorn's step size
``β' > 0`` with noise ``r = 1/β'`` for ``longhorn``. The superposition presets take no ``beta`` (Mamba-2's
evidence weight is its step size ``dt``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from probseq.design import R_MIN, DesignModel, LinearReadout, MatrixNormalPrior, MemoryDynamics, RegressionWrite
from probseq.ops import bayes_filter, run_filter, superposition_filter
from probseq.ops.validation import ValueChecks, as_state, check_gate, check_qkv, check_scale
from probseq.types import BayesState, FilterOutput, Impl

__all__ = ["bayesian", "deltanet", "gated_deltanet", "gla", "linear_attention", "longhorn", "mamba2", "simple_gla"]


def linear_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    scale: float | None = None,
    initial_state: Tensor | BayesState | None = None,
    output_final_state: bool = False,
    impl: Impl = "auto",
    chunk_size: int = 64,
    validate: bool = True,
) -> FilterOutput:
    """Linear attention ``o_t = (Σ_{j≤t} v_j k_jᵀ) q̃_t``: q, k ``[B, T, H, K]``, v ``[B, T, H, V]``."""
    return superposition_filter(
        q,
        k,
        v,
        scale=scale,
        initial_state=initial_state,
        output_final_state=output_final_state,
        impl=impl,
        chunk_size=chunk_size,
        validate=validate,
    )


def simple_gla(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    g: Tensor,
    *,
    scale: float | None = None,
    initial_state: Tensor | BayesState | None = None,
    output_final_state: bool = False,
    impl: Impl = "auto",
    chunk_size: int = 64,
    validate: bool = True,
) -> FilterOutput:
    """RetNet / scalar-gated linear attention, ``M_t = exp(g_t) M_{t-1} + v_t k_tᵀ``; g ``[B, T, H]`` ≤ 0."""
    if g is not None and g.dim() != 3:
        raise ValueError(f"g must have shape [B, T, H] (a scalar decay per head), got {list(g.shape)}")
    return superposition_filter(
        q,
        k,
        v,
        g,
        scale=scale,
        initial_state=initial_state,
        output_final_state=output_final_state,
        impl=impl,
        chunk_size=chunk_size,
        validate=validate,
    )


def gla(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    gk: Tensor,
    *,
    scale: float | None = None,
    initial_state: Tensor | BayesState | None = None,
    output_final_state: bool = False,
    impl: Impl = "auto",
    chunk_size: int = 16,
    validate: bool = True,
) -> FilterOutput:
    """Gated linear attention, ``M_t = M_{t-1} diag(exp(gk_t)) + v_t k_tᵀ``; gk ``[B, T, H, K]`` ≤ 0
    (per-channel decay masks are ``[C, C, K]``: the default chunk is 16)."""
    if gk is not None and gk.dim() != 4:
        raise ValueError(f"gk must have shape [B, T, H, K] (a decay per key channel), got {list(gk.shape)}")
    return superposition_filter(
        q,
        k,
        v,
        gk,
        scale=scale,
        initial_state=initial_state,
        output_final_state=output_final_state,
        impl=impl,
        chunk_size=chunk_size,
        validate=validate,
    )


def mamba2(
    x: Tensor,
    dt: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    *,
    initial_state: Tensor | BayesState | None = None,
    output_final_state: bool = False,
    impl: Impl = "auto",
    chunk_size: int = 64,
    validate: bool = True,
) -> FilterOutput:
    """Mamba-2 / SSD without the ``D`` skip: ``h_t = exp(Δ_t A) h_{t-1} + Δ_t x_t B_tᵀ``, ``y_t = h_t C_t``.

    Args:
        x: ``[B, T, H, P]`` inputs (values); dt: ``[B, T, H]`` step sizes ``Δ > 0`` (the evidence weight
            ``β = Δ``, and with ``A`` the log decay ``g = Δ·A``); A: ``[H]`` ``< 0``;
        B, C: ``[B, T, H, N]`` input / output projections (keys / queries).
        initial_state: ``h_0`` ``[B, H, P, N]`` (mamba_ssm's ``ssm_state`` layout).

    Returns:
        :class:`FilterOutput` with ``output = y [B, T, H, P]``.
    """
    batch, length, heads, _, _ = check_qkv(C, B, x)
    checks = ValueChecks() if validate else None
    check_gate("dt", dt, (batch, length, heads), "[B, T, H]", checks, low=0.0, low_open=True, device=x.device)
    check_gate("A", A, (heads,), "[H]", checks, high=0.0, device=x.device)
    if checks is not None:
        checks.finite("dt", dt)
        checks.require(
            (A.detach() < 0).all(), lambda: "A must be negative (Mamba-2 parametrises A = -exp(A_log)), found zeros"
        )
        checks.resolve()
    return superposition_filter(
        C,
        B,
        x,
        dt * A,
        dt,
        scale=1.0,
        initial_state=initial_state,
        output_final_state=output_final_state,
        impl=impl,
        chunk_size=chunk_size,
        validate=validate,
    )


def _unit_keys(name: str, q: Tensor, k: Tensor, normalize: bool, validate: bool) -> tuple[Tensor, Tensor]:
    """L2-normalise ``q, k`` or check that ``k`` has unit (or zero) norm."""
    check_qkv(q, k, k)
    if normalize:
        return F.normalize(q, dim=-1), F.normalize(k, dim=-1)
    if validate:
        norm2 = k.detach().float().square().sum(-1)
        tolerance = max(1e-3, 8 * torch.finfo(k.dtype).eps)
        bad = ~(((norm2 - 1).abs() <= tolerance) | (norm2 == 0))
        checks = ValueChecks()
        checks.require(
            ~bad.any(),
            lambda: (
                f"{name} is the covariance-reset reduction for unit-norm keys: k must have ‖k‖ = 1 (or 0) along its "
                f"last dim, found ‖k‖² = {norm2[bad][0].item():.4g}; L2-normalise the keys or pass "
                "use_qk_l2norm_in_kernel=True"
            ),
        )
        checks.resolve()
    return q, k


def _delta(
    name,
    q,
    k,
    v,
    g,
    beta,
    scale,
    initial_state,
    output_final_state,
    use_qk_l2norm_in_kernel,
    impl,
    chunk_size,
    validate,
):
    q, k = _unit_keys(name, q, k, use_qk_l2norm_in_kernel, validate)
    # r = (1-β)/β exactly (no floor): with unit keys the write key k/(1 + r) is β k.
    return bayes_filter(
        q,
        k,
        v,
        g,
        beta,
        None,
        scale=scale,
        initial_state=initial_state,
        output_final_state=output_final_state,
        impl=impl,
        chunk_size=chunk_size,
        r_min=0.0,
        validate=validate,
    )


def deltanet(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    beta: Tensor,
    *,
    scale: float | None = None,
    initial_state: Tensor | BayesState | None = None,
    output_final_state: bool = False,
    use_qk_l2norm_in_kernel: bool = False,
    impl: Impl = "auto",
    chunk_size: int = 64,
    validate: bool = True,
) -> FilterOutput:
    """DeltaNet ``M_t = M_{t-1}(I − β_t k_t k_tᵀ) + β_t v_t k_tᵀ``: beta ``[B, T, H]`` is the write strength
    ``β ∈ [0, 1]`` (write noise ``r = (1 − β)/β``, no floor)."""
    return _delta(
        "DeltaNet",
        q,
        k,
        v,
        None,
        beta,
        scale,
        initial_state,
        output_final_state,
        use_qk_l2norm_in_kernel,
        impl,
        chunk_size,
        validate,
    )


def gated_deltanet(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    g: Tensor,
    beta: Tensor,
    *,
    scale: float | None = None,
    initial_state: Tensor | BayesState | None = None,
    output_final_state: bool = False,
    use_qk_l2norm_in_kernel: bool = False,
    impl: Impl = "auto",
    chunk_size: int = 64,
    validate: bool = True,
) -> FilterOutput:
    """Gated DeltaNet ``M_t = α_t M_{t-1}(I − β_t k_t k_tᵀ) + β_t v_t k_tᵀ``, ``α = exp(g)``;
    g, beta ``[B, T, H]`` (flash-linear-attention's ``chunk_gated_delta_rule`` argument order): ``g`` the log decay
    ``≤ 0``, ``beta`` the write strength ``β ∈ [0, 1]`` (write noise ``r = (1 − β)/β``, no floor)."""
    return _delta(
        "Gated DeltaNet",
        q,
        k,
        v,
        g,
        beta,
        scale,
        initial_state,
        output_final_state,
        use_qk_l2norm_in_kernel,
        impl,
        chunk_size,
        validate,
    )


def longhorn(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    beta: Tensor,
    *,
    scale: float | None = None,
    initial_state: Tensor | BayesState | None = None,
    output_final_state: bool = False,
    impl: Impl = "auto",
    chunk_size: int = 64,
    validate: bool = True,
) -> FilterOutput:
    """Longhorn's online regression ``M_t = argmin ‖M − M_{t-1}‖² + β'‖M k_t − v_t‖²``, i.e. the gain
    ``β' k /(1 + β'‖k‖²)`` on raw keys.

    ``beta [B, T, H]`` is Longhorn's step size ``β' > 0`` — unbounded, *not* the write strength of
    :func:`deltanet` — and sets the write noise ``r = 1/β'`` (on a unit key the write strength is
    ``β'/(1 + β')``)."""
    _, length, heads, key_dim, _ = check_qkv(q, k, v)
    checks = ValueChecks() if validate else None
    check_gate("beta", beta, (k.shape[0], length, heads), "[B, T, H]", checks, low=0.0, low_open=True, device=k.device)
    if checks is not None:
        checks.finite("beta", beta)
        checks.resolve()
    state = as_state("initial_state", initial_state)
    noise = 1 / beta
    design = DesignModel(
        MatrixNormalPrior.from_state(state),
        MemoryDynamics(None, None),
        RegressionWrite(noise),
        LinearReadout(check_scale(scale, key_dim)),
    )
    return run_filter(
        design, q, k, v, impl=impl, chunk_size=chunk_size, output_final_state=output_final_state, validate=validate
    )


def bayesian(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    g: Tensor | None,
    beta: Tensor,
    gamma: Tensor | None,
    *,
    scale: float | None = None,
    initial_state: BayesState | None = None,
    output_final_state: bool = False,
    output_variance: bool = False,
    impl: Impl = "auto",
    chunk_size: int = 64,
    r_min: float = R_MIN,
    validate: bool = True,
) -> FilterOutput:
    """The Bayesian Layer (regression design with certainty retention γ); see :func:`probseq.ops.bayes_filter`:
    ``g`` the log decay, ``beta`` the write strength ``β ∈ [0, 1]`` (noise ``r = clamp((1 − β)/β, r_min, R_MAX)``),
    ``gamma`` the certainty retention."""
    return bayes_filter(
        q,
        k,
        v,
        g,
        beta,
        gamma,
        scale=scale,
        initial_state=initial_state,
        output_final_state=output_final_state,
        output_variance=output_variance,
        impl=impl,
        chunk_size=chunk_size,
        r_min=r_min,
        validate=validate,
    )
