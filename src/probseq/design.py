"""The design-model framework (docs/design-model.md).

A *design model* states four assumptions about an associative memory ``W`` (``[V, K]`` per head,
mapping keys to values) and nothing else:

1. **Prior** over ``W_0`` — :class:`MatrixNormalPrior`, ``W_0 ~ MN(M_0, Σ, P_0)``.
2. **Dynamics** ``W_{t-1} -> W_t`` — :class:`MemoryDynamics`: decay ``α_t = exp(g_t)`` and
   certainty retention ``γ_t``.
3. **Write (evidence) model** — how ``(k_t, v_t)`` is evidence about ``W_t``:
   :class:`RegressionWrite` (``v_t = W_t k_t + ε_t``, the Bayesian Layer, docs/design-model.md §2) or
   :class:`SuperpositionWrite` (every key addresses a fresh, empty, orthogonal slot; the linear
   attention family, docs/design-model.md §7).
4. **Readout** — :class:`LinearReadout`, the predictive distribution of ``W_t q̃_t``.

The sequence layer is *derived*: :func:`reference_filter` runs the exact Bayesian filter by asking
each part for its own step (``predict`` → ``update`` → ``read``), token by token. Nothing in it is
specific to a named model; every preset in :mod:`probseq.presets` is a design model value. The fast
forms (``recurrent``, ``chunked`` in :mod:`probseq.ops`) compute the same filter and are tested
against this one.

All per-token tensors inside the loop are ``[B, H, ·]``; the memory state is
:class:`~probseq.types.BayesState` with ``mean [B, H, V, K]`` and ``cov [B, H, K, K]`` (``None``
for designs that do not track a covariance).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import torch
from torch import Tensor

from probseq.types import BayesState, FilterOutput

__all__ = [
    "R_MAX",
    "R_MIN",
    "DesignModel",
    "LinearReadout",
    "MatrixNormalPrior",
    "MemoryDynamics",
    "RegressionWrite",
    "SuperpositionWrite",
    "compute_dtype",
    "noise_from_strength",
    "reference_filter",
    "regression_design",
    "superposition_design",
]


R_MIN = 1e-4  # default floor on the write noise r (keeps the chunk Cholesky defined when γ ≈ 1, β ≈ 1)
# Ceiling on r: β = 0 (a sigmoid that underflowed) means "no write", r = ∞. A gain of 1/(1 + 1e30) is zero at
# every working precision, while every form (the chunk Cholesky included) stays finite; see docs/numerics.md.
R_MAX = 1e30


def noise_from_strength(beta: Tensor | float, r_min: float = R_MIN) -> Tensor | float:
    """Write noise ``r = clamp((1 − β)/β, r_min, R_MAX)`` of a write strength ``β ∈ [0, 1]``.

    ``r_min = 0`` gives the delta rule's exact ``r`` (its gain on a unit key, ``1/(1 + r)``, is ``β``).
    ``β = 0`` gives ``r = R_MAX`` (no write) with a finite, zero gradient. Compute it in the filter's
    compute dtype: ``(1 − β)/β`` formed in bfloat16 is off by 0.4 %.
    """
    if not isinstance(beta, Tensor):
        return min(max((1 - beta) / beta, r_min), R_MAX) if beta > 0 else R_MAX
    # clamp β first: (1 − β)/β at β = 0 has an infinite derivative, and 0 · ∞ is NaN in the backward.
    beta = beta.clamp_min(1 / (1 + R_MAX))
    return ((1 - beta) / beta).clamp(r_min, R_MAX)


def compute_dtype(*tensors: Tensor | None) -> torch.dtype:
    """The dtype every filter form computes and keeps its state in: ``float64`` if any floating input
    (``q, k, v``, a gate or the initial state) is ``float64``, else ``float32``. Half-precision inputs are
    allowed; states and factorisations never run in half. The output has the dtype of ``v``."""
    return torch.float64 if any(x is not None and x.dtype == torch.float64 for x in tensors) else torch.float32


@dataclass(frozen=True)
class MatrixNormalPrior:
    """Prior ``W_0 ~ MN(M_0, Σ, P_0)``; ``Σ`` (shared by value channels) factors out of the filter.

    Args:
        mean: ``M_0`` ``[B, H, V, K]``; ``None`` means zeros.
        cov: ``P_0`` ``[B, H, K, K]`` with ``0 ⪯ P_0 ⪯ I``; ``None`` means ``I`` (prior scale 1).
    """

    mean: Tensor | None = None
    cov: Tensor | None = None

    @classmethod
    def from_state(cls, state: BayesState | Tensor | None) -> MatrixNormalPrior:
        """The prior centred on a given state (a bare tensor is a mean; ``None``: the default ``MN(0, Σ, I)``)."""
        if state is None:
            return cls()
        return cls(state, None) if isinstance(state, Tensor) else cls(state.mean, state.cov)

    def initial_state(
        self,
        batch: int,
        heads: int,
        key_dim: int,
        value_dim: int,
        *,
        track_cov: bool,
        dtype: torch.dtype,
        device: torch.device,
    ) -> BayesState:
        mean = (
            torch.zeros(batch, heads, value_dim, key_dim, dtype=dtype, device=device)
            if self.mean is None
            else self.mean.to(dtype)
        )
        cov = None
        if track_cov:
            cov = (
                torch.eye(key_dim, dtype=dtype, device=device).expand(batch, heads, key_dim, key_dim)
                if self.cov is None
                else self.cov.to(dtype)
            )
        return BayesState(mean, cov)


@dataclass(frozen=True)
class MemoryDynamics:
    """Forgetting ``W_t = α_t W_{t-1} + E_t`` with ``E_t ~ MN(0, Σ, Q_t)``.

    The process noise is chosen so that the predicted covariance is a convex mix of a full reset
    and full retention (docs/design-model.md §2)::

        M_t^- = α_t M_{t-1}            P_t^- = (1 - γ_t) I + γ_t P_{t-1}

    i.e. ``Q_t = (1 - γ_t) I + (γ_t - α_t²) P_{t-1} ⪰ 0`` for ``α_t, γ_t ∈ [0, 1]``.

    Args:
        log_decay: ``g = log α ≤ 0``, ``[B, T, H]`` (scalar per head) or ``[B, T, H, K]`` (per key
            channel: ``α`` multiplies the columns of ``M``; superposition designs only). ``None``
            means no decay (``α = 1``).
        retention: certainty retention ``γ ∈ [0, 1]``, ``[B, T, H]``. ``None`` means the covariance is
            reset before every write (``γ = 0``, the delta-rule family).
    """

    log_decay: Tensor | None = None
    retention: Tensor | None = None

    @cached_property
    def _per_token(self) -> tuple[tuple[Tensor, ...] | None, tuple[Tensor, ...] | None]:
        # unbind once, not x[:, t] per step: a slice's backward allocates a full-size gradient.
        return tuple(None if x is None else x.unbind(1) for x in (self.log_decay, self.retention))

    def predict(self, state: BayesState, t: int) -> BayesState:
        mean, cov = state
        log_decays, retentions = self._per_token
        if log_decays is not None:
            decay = log_decays[t].exp()
            # scalar decay [B,H] scales the whole memory; per-channel [B,H,K] scales its columns.
            mean = mean * (decay[..., None, None] if decay.dim() == 2 else decay[:, :, None, :])
        if cov is not None:
            eye = torch.eye(cov.shape[-1], dtype=cov.dtype, device=cov.device)
            if retentions is None:
                cov = eye.expand_as(cov)
            else:
                retention = retentions[t][..., None, None].to(cov.dtype)
                cov = (1 - retention) * eye + retention * cov
        return BayesState(mean, cov)


@dataclass(frozen=True)
class RegressionWrite:
    """Write model of the Bayesian Layer: ``v_t = W_t k_t + ε_t``, ``ε_t ~ N(0, r_t Σ)``.

    The exact (Kalman) update, with ``Σ`` factored out (docs/design-model.md §2)::

        u_t = P_t^- k_t          s_t = k_tᵀ u_t + r_t        e_t = v_t - M_t^- k_t
        M_t = M_t^- + e_t u_tᵀ / s_t                         P_t = P_t^- - u_t u_tᵀ / s_t

    Args:
        noise: observation noise ``r ≥ 0``, ``[B, T, H]``. :meth:`from_strength` maps a write
            strength ``β ∈ (0, 1]`` to ``r = max((1 - β)/β, r_min)``.
    """

    noise: Tensor

    @cached_property
    def _per_token(self) -> tuple[Tensor, ...]:
        return self.noise.unbind(1)

    @classmethod
    def from_strength(cls, beta: Tensor, r_min: float = R_MIN) -> RegressionWrite:
        """``r = clamp((1 − β)/β, r_min, R_MAX)`` (:func:`noise_from_strength`)."""
        return cls(noise=noise_from_strength(beta, r_min))

    def update(self, state: BayesState, key: Tensor, value: Tensor, t: int) -> BayesState:
        mean, cov = state
        u = torch.einsum("bhij,bhj->bhi", cov, key)  # u = P⁻ k
        s = (key * u).sum(-1) + self._per_token[t].to(u.dtype)  # s = kᵀu + r
        s = s.clamp_min(torch.finfo(s.dtype).tiny)[..., None]  # s = 0 only if k = 0 and r = 0: then u = 0
        innovation = value - torch.einsum("bhvk,bhk->bhv", mean, key)  # e = v − M⁻k
        mean = mean + torch.einsum("bhv,bhk->bhvk", innovation, u / s)
        cov = cov - torch.einsum("bhi,bhj->bhij", u, u / s)
        return BayesState(mean, cov)


@dataclass(frozen=True)
class SuperpositionWrite:
    """Write model of the linear-attention family: every key addresses a fresh, empty slot.

    The prior predicts nothing for a fresh slot (``M_t^- k_t = 0``), so the innovation is the value
    itself and the exact filter superposes the evidence with weight ``β_t`` (docs/design-model.md §7)::

        M_t = M_t^- + β_t v_t k_tᵀ

    Args:
        weight: evidence weight ``β > 0``, ``[B, T, H]``; ``None`` means 1.
    """

    weight: Tensor | None = None

    @cached_property
    def _per_token(self) -> tuple[Tensor, ...] | None:
        return None if self.weight is None else self.weight.unbind(1)

    def update(self, state: BayesState, key: Tensor, value: Tensor, t: int) -> BayesState:
        mean, cov = state
        if self.weight is not None:
            value = value * self._per_token[t][..., None].to(value.dtype)
        return BayesState(mean + torch.einsum("bhv,bhk->bhvk", value, key), cov)


@dataclass(frozen=True)
class LinearReadout:
    """Readout ``W_t q̃_t ~ N(M_t q̃_t, (q̃_tᵀ P_t q̃_t) Σ)`` with ``q̃_t = scale · q_t``, read after the write.

    Returns the predictive mean ``[B, H, V]`` (the layer output) and the predictive variance
    ``σ²_t = q̃_tᵀ P_t q̃_t`` ``[B, H]`` (``None`` when the design tracks no covariance).
    """

    scale: float

    def read(self, state: BayesState, query: Tensor) -> tuple[Tensor, Tensor | None]:
        mean, cov = state
        query = query * self.scale
        out = torch.einsum("bhvk,bhk->bhv", mean, query)
        var = None if cov is None else torch.einsum("bhi,bhij,bhj->bh", query, cov, query)
        return out, var


@dataclass(frozen=True)
class DesignModel:
    """The four explicit assumptions; the layer is their exact filter plus readout."""

    prior: MatrixNormalPrior
    dynamics: MemoryDynamics
    write: RegressionWrite | SuperpositionWrite
    readout: LinearReadout

    @property
    def tracks_covariance(self) -> bool:
        """Only the regression write model uses the covariance; superposition never reads it."""
        return isinstance(self.write, RegressionWrite)

    def tensors(self) -> tuple[Tensor | None, ...]:
        """Every tensor of the design (gates and prior), for dtype and device rules."""
        write = self.write.noise if isinstance(self.write, RegressionWrite) else self.write.weight
        return (self.prior.mean, self.prior.cov, self.dynamics.log_decay, self.dynamics.retention, write)

    def to(self, dtype: torch.dtype) -> DesignModel:
        """The same design with every tensor cast to ``dtype`` (gradients flow through the cast)."""

        def cast(x: Tensor | None) -> Tensor | None:
            return None if x is None else x.to(dtype)

        write = (
            RegressionWrite(cast(self.write.noise))
            if isinstance(self.write, RegressionWrite)
            else SuperpositionWrite(cast(self.write.weight))
        )
        return DesignModel(
            MatrixNormalPrior(cast(self.prior.mean), cast(self.prior.cov)),
            MemoryDynamics(cast(self.dynamics.log_decay), cast(self.dynamics.retention)),
            write,
            self.readout,
        )


def regression_design(
    g: Tensor | None,
    beta: Tensor,
    gamma: Tensor | None,
    *,
    scale: float,
    initial_state: BayesState | None = None,
    r_min: float = R_MIN,
    dtype: torch.dtype | None = None,
) -> DesignModel:
    """The Bayesian Layer's design model from its gates (docs/design-model.md; names: docs/notation.md): log
    decay ``g`` (``α = exp(g)``) becomes ``MemoryDynamics.log_decay``, the certainty retention ``gamma``
    (``None``: the covariance is reset before every write, the delta-rule family) ``MemoryDynamics.retention``,
    and the write strength ``beta`` (``β ∈ [0, 1]``, the regression family's meaning) the write noise
    ``RegressionWrite.noise`` ``r = clamp((1 − β)/β, r_min, R_MAX)``, formed in ``dtype`` (default:
    :func:`compute_dtype` of the gates and state). The one place gates become a design."""
    prior = MatrixNormalPrior.from_state(initial_state)
    dtype = dtype or compute_dtype(g, beta, gamma, prior.mean, prior.cov)
    return DesignModel(
        prior, MemoryDynamics(g, gamma), RegressionWrite.from_strength(beta.to(dtype), r_min), LinearReadout(scale)
    ).to(dtype)


def superposition_design(
    g: Tensor | None,
    beta: Tensor | None,
    *,
    scale: float,
    initial_state: BayesState | None = None,
    dtype: torch.dtype | None = None,
) -> DesignModel:
    """The linear-attention family's design model: log decay ``g`` (``α = exp(g)``, ``[B, T, H]`` or per key channel
    ``[B, T, H, K]``) becomes ``MemoryDynamics.log_decay``, and ``beta`` — the superposition family's meaning, the
    evidence weight ``β ≥ 0`` (``None``: 1) — ``SuperpositionWrite.weight``."""
    prior = MatrixNormalPrior.from_state(initial_state)
    dtype = dtype or compute_dtype(g, beta, prior.mean, prior.cov)
    return DesignModel(prior, MemoryDynamics(g, None), SuperpositionWrite(beta), LinearReadout(scale)).to(dtype)


def reference_filter(
    design: DesignModel,
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    output_final_state: bool = False,
    output_variance: bool = False,
) -> FilterOutput:
    """The exact filter of ``design``, token by token: ``predict → update → read`` (docs/design-model.md).

    Computes in :func:`compute_dtype` of all inputs (``float64`` if any is, else ``float32``), like every
    form; the output has the dtype of ``v``. Inputs are assumed validated (see
    :func:`probseq.ops.run_filter`).

    Args:
        design: the design model; its per-token tensors are ``[B, T, H(, K)]``.
        q, k: ``[B, T, H, K]``; v: ``[B, T, H, V]``.

    Returns:
        :class:`FilterOutput` with ``output [B, T, H, V]``, ``state`` (or ``None``) and
        ``variance [B, T, H]`` (or ``None``).
    """
    batch, length, heads, key_dim = q.shape
    out_dtype = v.dtype
    dtype = compute_dtype(q, k, v, *design.tensors())
    design = design.to(dtype)
    q, k, v = (x.to(dtype) for x in (q, k, v))
    state = design.prior.initial_state(
        batch, heads, key_dim, v.shape[-1], track_cov=design.tracks_covariance, dtype=dtype, device=v.device
    )
    outputs, variances = [], []
    for t, (q_t, k_t, v_t) in enumerate(zip(q.unbind(1), k.unbind(1), v.unbind(1))):
        state = design.dynamics.predict(state, t)
        state = design.write.update(state, k_t, v_t, t)
        out, var = design.readout.read(state, q_t)
        outputs.append(out)
        variances.append(var)
    output = (torch.stack(outputs, dim=1) if length else v.new_zeros(v.shape)).to(out_dtype)
    variance = None
    if output_variance and design.tracks_covariance:
        variance = torch.stack(variances, dim=1) if length else v.new_zeros(v.shape[:3])
    return FilterOutput(output, state if output_final_state else None, variance)
