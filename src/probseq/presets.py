"""Named recurrences of the literature as design-model presets (SPEC §1.2–§1.3).

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
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from probseq.design import R_MIN, DesignModel, LinearReadout, MatrixNormalPrior, MemoryDynamics, RegressionWrite
from probseq.ops.filters import bayes_filter, run_filter, superposition_design
from probseq.ops.validation import as_state, check_gate, check_qkv, check_scale
from probseq.types import BayesState, FilterOutput, Impl

__all__ = ["bayesian", "deltanet", "gated_deltanet", "gla", "linear_attention", "longhorn", "mamba2",
           "simple_gla"]


def _superposition(q, k, v, g, beta, scale, initial_state, output_final_state, impl, chunk_size):
    scale = check_scale(scale, check_qkv(q, k, v)[3])
    design = superposition_design(g, beta, scale=scale, initial_state=initial_state)
    return run_filter(design, q, k, v, impl=impl, chunk_size=chunk_size, output_final_state=output_final_state)


def linear_attention(q: Tensor, k: Tensor, v: Tensor, *, scale: float | None = None,
                     initial_state: Tensor | BayesState | None = None, output_final_state: bool = False,
                     impl: Impl = "auto", chunk_size: int = 64) -> FilterOutput:
    """Linear attention ``o_t = (Σ_{j≤t} v_j k_jᵀ) q̃_t``: q, k ``[B, T, H, K]``, v ``[B, T, H, V]``."""
    return _superposition(q, k, v, None, None, scale, initial_state, output_final_state, impl, chunk_size)


def simple_gla(q: Tensor, k: Tensor, v: Tensor, g: Tensor, *, scale: float | None = None,
               initial_state: Tensor | BayesState | None = None, output_final_state: bool = False,
               impl: Impl = "auto", chunk_size: int = 64) -> FilterOutput:
    """RetNet / scalar-gated linear attention, ``M_t = exp(g_t) M_{t-1} + v_t k_tᵀ``; g ``[B, T, H]`` ≤ 0."""
    return _superposition(q, k, v, g, None, scale, initial_state, output_final_state, impl, chunk_size)


def gla(q: Tensor, k: Tensor, v: Tensor, gk: Tensor, *, scale: float | None = None,
        initial_state: Tensor | BayesState | None = None, output_final_state: bool = False,
        impl: Impl = "auto", chunk_size: int = 16) -> FilterOutput:
    """Gated linear attention, ``M_t = M_{t-1} diag(exp(gk_t)) + v_t k_tᵀ``; gk ``[B, T, H, K]`` ≤ 0
    (per-channel decay masks are ``[C, C, K]``: the default chunk is 16)."""
    return _superposition(q, k, v, gk, None, scale, initial_state, output_final_state, impl, chunk_size)


def mamba2(x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor, *,
           initial_state: Tensor | BayesState | None = None, output_final_state: bool = False,
           impl: Impl = "auto", chunk_size: int = 64) -> FilterOutput:
    """Mamba-2 / SSD without the ``D`` skip: ``h_t = exp(Δ_t A) h_{t-1} + Δ_t x_t B_tᵀ``, ``y_t = h_t C_t``.

    Args:
        x: ``[B, T, H, P]`` inputs (values); dt: ``[B, T, H]`` step sizes ``Δ > 0``; A: ``[H]`` ``< 0``;
        B, C: ``[B, T, H, N]`` input / output projections (keys / queries).
        initial_state: ``h_0`` ``[B, H, P, N]`` (mamba_ssm's ``ssm_state`` layout).

    Returns:
        :class:`FilterOutput` with ``output = y [B, T, H, P]``.
    """
    batch, length, heads, _, _ = check_qkv(C, B, x)
    check_gate("dt", dt, (batch, length, heads), "[B, T, H]", low=0.0, low_open=True)
    check_gate("A", A, (heads,), "[H]", high=0.0)
    if bool((A.detach() == 0).any()):
        raise ValueError("A must be negative (Mamba-2 parametrises A = -exp(A_log)), found zeros")
    return _superposition(C, B, x, dt * A, dt, 1.0, initial_state, output_final_state, impl, chunk_size)


def _unit_keys(name: str, q: Tensor, k: Tensor, normalize: bool) -> tuple[Tensor, Tensor]:
    """L2-normalise ``q, k`` or check that ``k`` has unit (or zero) norm."""
    check_qkv(q, k, k)
    if normalize:
        return F.normalize(q, dim=-1), F.normalize(k, dim=-1)
    norm2 = k.detach().float().square().sum(-1)
    tolerance = max(1e-3, 8 * torch.finfo(k.dtype).eps)
    bad = ~(((norm2 - 1).abs() <= tolerance) | (norm2 == 0))
    if bool(bad.any()):
        raise ValueError(f"{name} is the covariance-reset reduction for unit-norm keys: k must have ‖k‖ = 1 "
                         f"(or 0) along its last dim, found ‖k‖² = {norm2[bad][0].item():.4g}; L2-normalise "
                         "the keys or pass use_qk_l2norm_in_kernel=True")
    return q, k


def _reset_design(g: Tensor | None, noise: Tensor, scale: float, initial_state) -> DesignModel:
    """Regression design with the covariance reset before every write (``γ = 0``)."""
    state = as_state("initial_state", initial_state)
    prior = MatrixNormalPrior() if state is None else MatrixNormalPrior(*state)
    return DesignModel(prior, MemoryDynamics(g, None), RegressionWrite(noise), LinearReadout(scale))


def _delta(name, q, k, v, g, beta, scale, initial_state, output_final_state, use_qk_l2norm_in_kernel, impl,
           chunk_size):
    _, length, heads, key_dim, _ = check_qkv(q, k, v)
    q, k = _unit_keys(name, q, k, use_qk_l2norm_in_kernel)
    check_gate("beta", beta, (k.shape[0], length, heads), "[B, T, H]", low=0.0, high=1.0, low_open=True)
    # r = (1-β)/β exactly (no floor): with unit keys the write key k/(1 + r) is β k.
    design = _reset_design(g, (1 - beta) / beta, check_scale(scale, key_dim), initial_state)
    return run_filter(design, q, k, v, impl=impl, chunk_size=chunk_size, output_final_state=output_final_state)


def deltanet(q: Tensor, k: Tensor, v: Tensor, beta: Tensor, *, scale: float | None = None,
             initial_state: Tensor | BayesState | None = None, output_final_state: bool = False,
             use_qk_l2norm_in_kernel: bool = False, impl: Impl = "auto", chunk_size: int = 64) -> FilterOutput:
    """DeltaNet ``M_t = M_{t-1}(I − β_t k_t k_tᵀ) + β_t v_t k_tᵀ``: beta ``[B, T, H]`` in ``(0, 1]``."""
    return _delta("DeltaNet", q, k, v, None, beta, scale, initial_state, output_final_state,
                  use_qk_l2norm_in_kernel, impl, chunk_size)


def gated_deltanet(q: Tensor, k: Tensor, v: Tensor, g: Tensor, beta: Tensor, *, scale: float | None = None,
                   initial_state: Tensor | BayesState | None = None, output_final_state: bool = False,
                   use_qk_l2norm_in_kernel: bool = False, impl: Impl = "auto",
                   chunk_size: int = 64) -> FilterOutput:
    """Gated DeltaNet ``M_t = α_t M_{t-1}(I − β_t k_t k_tᵀ) + β_t v_t k_tᵀ``, ``α = exp(g)``;
    g, beta ``[B, T, H]`` (flash-linear-attention's ``chunk_gated_delta_rule`` argument order)."""
    return _delta("Gated DeltaNet", q, k, v, g, beta, scale, initial_state, output_final_state,
                  use_qk_l2norm_in_kernel, impl, chunk_size)


def longhorn(q: Tensor, k: Tensor, v: Tensor, beta: Tensor, *, scale: float | None = None,
             initial_state: Tensor | BayesState | None = None, output_final_state: bool = False,
             impl: Impl = "auto", chunk_size: int = 64) -> FilterOutput:
    """Longhorn's online regression ``M_t = argmin ‖M − M_{t-1}‖² + β'‖M k_t − v_t‖²``, i.e. the gain
    ``β' k /(1 + β'‖k‖²)`` on raw keys; beta ``[B, T, H]`` is ``β' > 0`` (noise ``r = 1/β'``)."""
    _, length, heads, key_dim, _ = check_qkv(q, k, v)
    check_gate("beta", beta, (k.shape[0], length, heads), "[B, T, H]", low=0.0, low_open=True)
    design = _reset_design(None, 1 / beta, check_scale(scale, key_dim), initial_state)
    return run_filter(design, q, k, v, impl=impl, chunk_size=chunk_size, output_final_state=output_final_state)


def bayesian(q: Tensor, k: Tensor, v: Tensor, g: Tensor | None, beta: Tensor, gamma: Tensor | None, *,
             scale: float | None = None, initial_state: BayesState | None = None,
             output_final_state: bool = False, output_variance: bool = False, impl: Impl = "auto",
             chunk_size: int = 64, r_min: float = R_MIN) -> FilterOutput:
    """The Bayesian Layer (regression design with certainty retention γ); see :func:`probseq.ops.bayes_filter`."""
    return bayes_filter(q, k, v, g, beta, gamma, scale=scale, initial_state=initial_state,
                        output_final_state=output_final_state, output_variance=output_variance, impl=impl,
                        chunk_size=chunk_size, r_min=r_min)
