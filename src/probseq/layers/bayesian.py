"""The Bayesian Layer: a drop-in for flash-linear-attention's ``GatedDeltaNet`` layer.

Same projections, parameter names, shapes and initialisation as fla's ``GatedDeltaNet`` (an fla state
dict loads with ``strict=True``), plus the certainty retention ``γ``::

    q, k, v = SiLU(conv(q_proj x)), SiLU(conv(k_proj x)), SiLU(conv(v_proj x))   depthwise causal, kernel 4
    q, k   ← q/‖q‖, k/‖k‖ per head
    g      = −exp(A_log) · softplus(a_proj x + dt_bias)       log decay, α = exp(g)
    β      = sigmoid(b_proj x)                               write strength, r = max((1−β)/β, r_min)
    γ      = 0 (reset) | α² (stationary) | α² · ρ · sigmoid(c_weight x + c_bias) (learned, ≤ α²)
    o      = bayes_filter(q, k, v, g, β, γ)                  predictive mean M_t q̃_t (docs/design-model.md §2)
    y      = o_proj(RMSNorm(o) ⊙ SiLU(g_proj x))             per-head gated norm

``retention="reset"`` is the covariance-reset reduction: the layer *is* Gated DeltaNet (docs/design-model.md §6),
and it runs with ``r_min = 0`` so the write key ``k/(‖k‖² + r)`` equals GDN's ``β k`` exactly. Symbols, argument and
parameter names: docs/notation.md.

Function-preserving ``learned`` start (for distillation from a GDN checkpoint): ``ρ = c_scale`` per head
starts at exactly 0, so ``γ ≡ 0`` and the layer computes Gated DeltaNet — up to the noise floor
``r_min`` (the same output whenever ``β ≤ 1/(1 + r_min)``; ``r_min = 1e-4`` by default, which keeps the
chunked Cholesky defined once ``γ`` grows). ``γ`` is passed to the filter as a tensor (not ``None``), so
the general path runs and ``∂L/∂γ`` at ``γ = 0`` is exact and non-zero; hence
``∂L/∂ρ_h = Σ_t ∂L/∂γ_{t,h} · α_{t,h}² · sigmoid(c_weight x_t + c_bias)_h ≠ 0``. ``ρ`` enters through a clamp to
``[0, 1]`` whose backward passes the gradient straight through, so ``γ`` is always a valid retention and
an update that pushes ``ρ`` below 0 does not strand the layer at ``γ ≡ 0`` with a zero gradient.
A Gated DeltaNet state dict (no ``c_weight c_bias c_scale``) loads with ``strict=True`` and leaves them at
their initial values — with the default ``retention_init = 0``, exactly that start.

docs/layers.md walks through the module, its decoding state ``(conv, M, P)`` and the variance side channel.
"""

from __future__ import annotations

import math
from typing import Literal, NamedTuple

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from probseq.layers.conv import add_qkv_convolutions, convolve_qkv, qkv_conv_layout
from probseq.layers.norm import GATE_ACTIVATIONS, GatedRMSNorm, RMSNorm
from probseq.layers.state import RecurrentState, StateLayout, read_state, write_state
from probseq.layers.utils import (
    MODES,
    check_forward_keywords,
    check_mask_width,
    check_mode,
    check_no_extra,
    check_positive,
    delta_chunk_size,
    gated_output,
    guard_zero_keys,
    hold_padding,
    inverse_softplus_step,
    l2_normalize,
    layer_inputs,
    log_uniform_decay_rate,
    num_sequences,
    own_stream,
    repeat_heads,
    upcast,
    zero_padding,
)
from probseq.ops import R_MIN, bayes_filter

Retention = Literal["reset", "stationary", "learned"]
RETENTIONS: tuple[str, ...] = ("reset", "stationary", "learned")


class _StraightThroughUnitClamp(torch.autograd.Function):
    """``clamp(x, 0, 1)`` forward, identity backward."""

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:
        return x.clamp(0.0, 1.0)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        return grad


class BayesianLayer(nn.Module):
    """Bayesian Layer with fla ``GatedDeltaNet``'s constructor and forward.

    Args (fla's, same defaults):
        hidden_size, expand_v, head_dim, num_heads: sizes; key dim ``head_dim``, value dim ``head_dim·expand_v``.
        num_v_heads: value heads (GVA); a multiple of ``num_heads``, each query/key head serving
            ``num_v_heads/num_heads`` consecutive value heads, as fla does.
        mode: ``"chunk"`` (chunked training form, recurrent for single tokens) or ``"fused_recurrent"``
            (the token recurrence throughout).
        use_gate: gate the output norm with ``g_proj``; use_short_conv, conv_size, conv_bias: the short conv.
        allow_neg_eigval: refused (``True`` means β ∈ (0, 2), which has no write-noise counterpart).
        layer_idx: slot in a cache; norm_eps: ε of the output norm;
        output_gate_activation: ``"swish"``/``"silu"`` or ``"sigmoid"``.

    Args (ours):
        retention: ``"reset" | "stationary" | "learned"``, see the module docstring.
        retention_init: initial ``ρ`` of ``learned`` in ``[0, 1]``; ``0`` is the function-preserving start.
        r_min: noise floor of the filter; default ``0`` for ``reset`` and ``R_MIN = 1e-4`` otherwise.
        chunk_size: chunk length of the chunked form's covariance path; ``None`` (default): half the key head dim
            between 16 (32 for ``reset``) and 64 (:func:`~probseq.layers.utils.delta_chunk_size`: the fastest
            measured on CPU).
        mean_chunk_size: chunk length of its mean path (exact for any pair, docs/chunked-algorithm.md); ``None``:
            ``chunk_size`` when that is given, else Gated DeltaNet's default chunk length (32 at K = 32).
        validate: check ``hidden_states`` (NaN/Inf, naming the first bad ``(batch, time)``) and the filter's
            values, one host synchronisation each per call (docs/numerics.md, "Validation").

    Forward (fla's): ``layer(hidden_states [B, T, D], attention_mask=None, past_key_values=None,
    use_cache=False, output_attentions=False, **kwargs) -> (o [B, T, D], None, past_key_values)``;
    ``kwargs`` may hold ``cu_seqlens`` (packed sequences, ``B = 1``) and ``output_variance=True``, which
    stores the per-head predictive variance ``σ²_t = q̃ᵀ P_t q̃`` in :attr:`last_variance` ``[B, T, H_v]``
    (zero at padded positions; ``None`` when not requested).
    """

    RETENTION_PARAMETERS = ("c_weight", "c_bias", "c_scale")

    def __init__(
        self,
        hidden_size: int = 2048,
        expand_v: float = 2,
        head_dim: int = 256,
        num_heads: int = 6,
        num_v_heads: int | None = None,
        mode: str = "chunk",
        use_gate: bool = True,
        use_short_conv: bool = True,
        allow_neg_eigval: bool = False,
        conv_size: int = 4,
        conv_bias: bool = False,
        layer_idx: int | None = None,
        norm_eps: float = 1e-5,
        output_gate_activation: str = "swish",
        *,
        retention: Retention = "learned",
        retention_init: float = 0.0,
        r_min: float | None = None,
        chunk_size: int | None = None,
        mean_chunk_size: int | None = None,
        validate: bool = False,
        **kwargs,
    ):
        super().__init__()
        name = type(self).__name__
        # validate: hidden_states and the filter's values checked (NaN/Inf, ranges, a finite result) with one host
        # synchronisation each per call; off by default, as in a training loop (docs/numerics.md, "Validation").
        self.validate = bool(validate)
        check_no_extra(name, kwargs)
        num_v_heads = num_heads if num_v_heads is None else num_v_heads
        check_positive(
            hidden_size=hidden_size,
            head_dim=head_dim,
            num_heads=num_heads,
            num_v_heads=num_v_heads,
            conv_size=conv_size,
        )
        check_mode(mode)
        if allow_neg_eigval:
            raise ValueError(
                f"{name} does not support allow_neg_eigval=True: it doubles β to (0, 2), and a write "
                "strength above 1 has no write-noise counterpart r = (1 − β)/β ≥ 0"
            )
        if num_v_heads % num_heads:
            raise ValueError(
                f"num_v_heads={num_v_heads} must be a multiple of num_heads={num_heads} (grouped value heads)"
            )
        head_v_dim = head_dim * expand_v
        if not math.isclose(head_v_dim, round(head_v_dim), rel_tol=1e-5) or round(head_v_dim) <= 0:
            raise ValueError(
                f"head_dim * expand_v must be a positive integer, got {head_dim} * {expand_v} = {head_v_dim}"
            )
        if output_gate_activation not in GATE_ACTIVATIONS:
            raise ValueError(
                f"output_gate_activation must be one of {GATE_ACTIVATIONS}, got {output_gate_activation!r}"
            )
        if retention not in RETENTIONS:
            raise ValueError(f"retention must be one of {RETENTIONS}, got {retention!r}")
        if (
            isinstance(retention_init, bool)
            or not isinstance(retention_init, (int, float))
            or not 0 <= retention_init <= 1
        ):
            raise ValueError(f"retention_init must be a float in [0, 1], got {retention_init!r}")
        r_min = (0.0 if retention == "reset" else R_MIN) if r_min is None else r_min
        if isinstance(r_min, bool) or not isinstance(r_min, (int, float)) or not 0 <= r_min < math.inf:
            raise ValueError(f"r_min must be a finite float >= 0, got {r_min!r}")

        self.hidden_size, self.expand_v, self.head_dim = hidden_size, expand_v, head_dim
        self.num_heads, self.num_v_heads = num_heads, num_v_heads
        self.head_k_dim, self.head_v_dim = head_dim, round(head_v_dim)
        self.key_dim, self.value_dim = num_heads * head_dim, num_v_heads * self.head_v_dim
        self.mode, self.use_gate, self.use_short_conv = mode, use_gate, use_short_conv
        self.allow_neg_eigval, self.conv_size, self.conv_bias = allow_neg_eigval, conv_size, conv_bias
        self.layer_idx, self.norm_eps, self.output_gate_activation = layer_idx, norm_eps, output_gate_activation
        self.retention, self.r_min = retention, float(r_min)
        self.chunk_size = delta_chunk_size(head_dim, chunk_size, covariance=retention != "reset")
        if mean_chunk_size is None:
            mean_chunk_size = chunk_size
        else:
            check_positive(mean_chunk_size=mean_chunk_size)
        self.mean_chunk_size = delta_chunk_size(head_dim, mean_chunk_size, covariance=False)
        self.last_variance: Tensor | None = None

        # Parameters in fla's order, so one seed gives fla's initial weights.
        self.q_proj = nn.Linear(hidden_size, self.key_dim, bias=False)
        self.k_proj = nn.Linear(hidden_size, self.key_dim, bias=False)
        self.v_proj = nn.Linear(hidden_size, self.value_dim, bias=False)
        self.a_proj = nn.Linear(hidden_size, num_v_heads, bias=False)
        self.b_proj = nn.Linear(hidden_size, num_v_heads, bias=False)
        self.A_log = nn.Parameter(log_uniform_decay_rate(num_v_heads, 0.0, 16.0))
        self.A_log._no_weight_decay = True
        self.dt_bias = nn.Parameter(inverse_softplus_step(num_v_heads))
        self.dt_bias._no_weight_decay = True
        if use_short_conv:
            add_qkv_convolutions(self)
        if use_gate:
            self.g_proj = nn.Linear(hidden_size, self.value_dim, bias=False)
            self.o_norm = GatedRMSNorm(self.head_v_dim, eps=norm_eps, activation=output_gate_activation)
        else:
            self.o_norm = RMSNorm(self.head_v_dim, eps=norm_eps)
        self.o_proj = nn.Linear(self.value_dim, hidden_size, bias=False)
        if retention == "learned":
            self.retention_init = float(retention_init)
            # nn.Linear's default (Kaiming uniform), drawn from the parameter's own stream (own_stream): the global
            # stream, which draws every parameter Gated DeltaNet has too, is left where it would be without it
            weight = torch.empty(num_v_heads, hidden_size)
            nn.init.kaiming_uniform_(weight, a=math.sqrt(5), generator=own_stream("c_weight", layer_idx))
            self.c_weight = nn.Parameter(torch.empty(num_v_heads, hidden_size))
            with torch.no_grad():
                self.c_weight.copy_(weight)
            self.c_bias = nn.Parameter(torch.zeros(num_v_heads))
            self.c_scale = nn.Parameter(torch.full((num_v_heads,), self.retention_init))
            self.c_scale._no_weight_decay = True

    def extra_repr(self) -> str:
        return f"retention={self.retention!r}, r_min={self.r_min:g}, mode={self.mode!r}"

    def state_layout(self) -> StateLayout:
        """Conv states ``[N, D, W]`` of q, k, v and the mean ``[N, H_v, V, K]`` (:mod:`probseq.layers.state`)."""
        return StateLayout(RecurrentState, qkv_conv_layout(self), (self.num_v_heads, self.head_v_dim, self.head_k_dim))

    def certainty_retention(self, x: Tensor, g: Tensor) -> Tensor | None:
        """``γ [B, T, H_v]`` in ``[0, 1]`` for inputs ``x [B, T, D]`` and log decay ``g [B, T, H_v]``
        (``None`` for ``reset``: the covariance-reset fast path)."""
        if self.retention == "reset":
            return None
        if self.retention == "stationary":
            return torch.exp(2 * g)
        # γ = α² · ρ · σ(c(x)): between the reset (0) and the stationary memory (α²). Certainty retained beyond
        # α² would keep the decayed mean αM as confident as M was (the prior's marginal covariance shrinks
        # below I): gains collapse and the memory stops writing (docs/layers.md, "Learned retention").
        rho = _StraightThroughUnitClamp.apply(upcast(self.c_scale))  # ρ = clamp(c_scale, 0, 1)
        return torch.exp(2 * g) * rho * torch.sigmoid(upcast(F.linear(x, self.c_weight)) + upcast(self.c_bias))

    def _load_from_state_dict(
        self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
    ):
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )
        # A Gated DeltaNet state dict has no retention parameters: keep their initial values (with the
        # default retention_init = 0, the function-preserving start) instead of failing strict loading.
        names = [prefix + name for name in self.RETENTION_PARAMETERS]
        if self.retention == "learned" and not any(name in state_dict for name in names):
            missing_keys[:] = [key for key in missing_keys if key not in names]

    def _short_conv(
        self,
        x: Tensor,
        mask: Tensor | None,
        conv_state: tuple[Tensor, ...] | None,
        use_cache: bool,
        cu_seqlens: Tensor | None,
    ) -> tuple[Tensor, Tensor, Tensor, tuple[Tensor, ...]]:
        if not self.use_short_conv:
            return F.silu(self.q_proj(x)), F.silu(self.k_proj(x)), F.silu(self.v_proj(x)), ()
        return convolve_qkv(self, x, mask, conv_state, use_cache, cu_seqlens)

    def filter_inputs(
        self,
        hidden_states: Tensor,
        attention_mask: Tensor | None = None,
        past_key_values=None,
        use_cache: bool | None = False,
        **kwargs,
    ) -> dict[str, object]:
        """The keyword arguments :meth:`forward` hands :func:`~probseq.ops.bayes_filter` for these inputs (same
        arguments as :meth:`forward`): ``q, k [B, T, H_v, K]``, ``v [B, T, H_v, V]``, ``g, beta [B, T, H_v]``,
        ``gamma`` (``None`` for ``reset``), ``initial_state`` (from ``past_key_values``) and the filter's settings
        (``impl``, ``chunk_size``, ``r_min``, ``cu_seqlens``, ``validate``, ``output_final_state``,
        ``output_variance``). :meth:`forward` computes them with this very code, so
        ``bayes_filter(**layer.filter_inputs(x))`` is the filter call of ``layer(x)``; the cache is read, never
        written, and the layer's attributes are left as they are."""
        return self._filter_call(hidden_states, attention_mask, past_key_values, use_cache, kwargs).inputs

    def _filter_call(
        self,
        hidden_states: Tensor,
        attention_mask: Tensor | None,
        past_key_values,
        use_cache: bool | None,
        kwargs: dict,
    ) -> _FilterCall:
        x, mask, full, cu_seqlens = layer_inputs(
            self, hidden_states, attention_mask, kwargs.get("cu_seqlens"), self.q_proj.weight
        )
        last = read_state(self, past_key_values, num_sequences(x, cu_seqlens))
        check_mask_width(full, x.shape[1], cached=last is not None)
        check_forward_keywords(self, kwargs)

        q, k, v, conv_state = self._short_conv(x, mask, last.conv if last is not None else None, use_cache, cu_seqlens)
        q = rearrange(q, "b t (h d) -> b t h d", d=self.head_k_dim)
        k = rearrange(k, "b t (h d) -> b t h d", d=self.head_k_dim)
        v = rearrange(v, "b t (h d) -> b t h d", d=self.head_v_dim)
        groups = self.num_v_heads // self.num_heads
        q, k = repeat_heads(l2_normalize(q), groups), repeat_heads(l2_normalize(k), groups)

        g = -upcast(self.A_log).exp() * F.softplus(upcast(self.a_proj(x)) + upcast(self.dt_bias))
        beta = torch.sigmoid(upcast(self.b_proj(x)))
        gamma = self.certainty_retention(x, g)
        k, g, beta, gamma = hold_padding(mask, k, g, guard_zero_keys(k, beta), gamma)

        inputs = dict(
            q=q,
            k=k,
            v=v,
            g=g,
            beta=beta,
            gamma=gamma,
            initial_state=None if last is None else last.memory,
            output_final_state=bool(use_cache),
            output_variance=bool(kwargs.get("output_variance", False)),
            impl=MODES[self.mode],
            chunk_size=self.chunk_size,
            mean_chunk_size=self.mean_chunk_size,
            r_min=self.r_min,
            cu_seqlens=cu_seqlens,
            validate=self.validate,
        )
        return _FilterCall(inputs, x, mask, conv_state)

    def forward(
        self,
        hidden_states: Tensor,
        attention_mask: Tensor | None = None,
        past_key_values=None,
        use_cache: bool | None = False,
        output_attentions: bool | None = False,
        **kwargs,
    ) -> tuple[Tensor, None, object]:
        """See the class docstring. ``hidden_states [B, T, D] → (o [B, T, D], None, past_key_values)``."""
        call = self._filter_call(hidden_states, attention_mask, past_key_values, use_cache, kwargs)
        x, mask = call.x, call.mask
        out = bayes_filter(**call.inputs)
        self.last_variance = zero_padding(out.variance, mask)
        if use_cache:
            write_state(self, past_key_values, RecurrentState(call.conv_state, out.state), x.shape[1])

        return zero_padding(gated_output(self, out.output, x), mask), None, past_key_values


class _FilterCall(NamedTuple):
    """What :meth:`BayesianLayer.forward` needs besides the filter's arguments."""

    inputs: dict[str, object]  # bayes_filter's keyword arguments
    x: Tensor  # hidden_states, zero at padded positions
    mask: Tensor | None
    conv_state: tuple[Tensor, ...]
