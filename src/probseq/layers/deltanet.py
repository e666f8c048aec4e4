"""DeltaNet (Schlag et al., 2021; Yang et al., 2024) as the covariance-reset regression design
(docs/design-model.md §6).

``M_t = M_{t−1}(I − β_t k_t k_tᵀ) + β_t v_t k_tᵀ``: the regression design with ``γ = 0``, ``α = 1`` and
noise ``r = (1 − β)/β`` (no floor), exact for the unit-norm keys the layer feeds it. The layer follows
flash-linear-attention's ``DeltaNet`` (constructor, parameter names, forward)::

    q, k = act(conv(q_proj x)), act(conv(k_proj x));  v = SiLU(conv(v_proj x))
    q, k ← q/‖q‖, k/‖k‖;  β = sigmoid(b_proj x)  (1 without use_beta)
    y = o_proj(norm(bayes_filter(q, k, v, None, β, None, r_min=0)))
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from probseq.layers.conv import add_qkv_convolutions, convolve_qkv, qkv_conv_layout
from probseq.layers.norm import GatedRMSNorm, RMSNorm
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
    head_dims,
    hold_padding,
    l2_normalize,
    layer_inputs,
    num_sequences,
    upcast,
    zero_padding,
)
from probseq.ops import bayes_filter

QK_ACTIVATIONS = ("silu", "relu", "elu", "identity")


def _activate(x: Tensor, activation: str) -> Tensor:
    if activation == "relu":
        return F.relu(x)
    if activation == "elu":  # fla's elu_p1
        return F.elu(x) + 1
    return x


class DeltaNet(nn.Module):
    """fla ``DeltaNet``'s constructor (same defaults) and forward.

    Refused: ``allow_neg_eigval=True`` (β ∈ (0, 2)) and ``qk_norm="sum"`` (the delta rule is the regression
    design's reset only for unit-norm keys). ``chunk_size`` and ``validate`` (as in :class:`BayesianLayer`) are
    ours.
    """

    def __init__(
        self,
        mode: str = "chunk",
        d_model: int | None = None,
        hidden_size: int = 1024,
        expand_k: float = 1.0,
        expand_v: float = 1.0,
        num_heads: int = 4,
        use_beta: bool = True,
        use_gate: bool = False,
        use_short_conv: bool = True,
        conv_size: int = 4,
        conv_bias: bool = False,
        allow_neg_eigval: bool = False,
        layer_idx: int | None = None,
        qk_activation: str = "silu",
        qk_norm: str = "l2",
        norm_eps: float = 1e-5,
        *,
        chunk_size: int | None = None,
        validate: bool = False,
        **kwargs,
    ):
        super().__init__()
        # validate: hidden_states and the filter's values checked (NaN/Inf, ranges, a finite result) with one host
        # synchronisation each per call; off by default, as in a training loop (docs/numerics.md, "Validation").
        self.validate = bool(validate)
        check_no_extra("DeltaNet", kwargs)
        hidden_size = hidden_size if d_model is None else d_model
        check_positive(hidden_size=hidden_size, num_heads=num_heads, conv_size=conv_size)
        check_mode(mode)
        if allow_neg_eigval:
            raise ValueError(
                "DeltaNet does not support allow_neg_eigval=True: β ∈ (0, 2) has no write-noise "
                "counterpart r = (1 − β)/β ≥ 0"
            )
        if qk_activation not in QK_ACTIVATIONS:
            raise ValueError(f"qk_activation must be one of {QK_ACTIVATIONS}, got {qk_activation!r}")
        if qk_norm != "l2":
            raise ValueError(
                f"DeltaNet supports qk_norm='l2' only (the delta rule needs unit-norm keys), got {qk_norm!r}"
            )
        key_dim, value_dim = head_dims(hidden_size, expand_k, expand_v, num_heads)

        self.mode, self.hidden_size, self.expand_k, self.expand_v = mode, hidden_size, expand_k, expand_v
        self.num_heads, self.use_beta, self.use_gate = num_heads, use_beta, use_gate
        self.use_short_conv, self.conv_size, self.conv_bias = use_short_conv, conv_size, conv_bias
        self.allow_neg_eigval, self.layer_idx = allow_neg_eigval, layer_idx
        self.qk_activation, self.qk_norm, self.norm_eps = qk_activation, qk_norm, norm_eps
        self.key_dim, self.value_dim = key_dim, value_dim
        self.head_k_dim, self.head_v_dim = key_dim // num_heads, value_dim // num_heads
        self.chunk_size = delta_chunk_size(self.head_k_dim, chunk_size, covariance=False)

        self.q_proj = nn.Linear(hidden_size, self.key_dim, bias=False)
        self.k_proj = nn.Linear(hidden_size, self.key_dim, bias=False)
        self.v_proj = nn.Linear(hidden_size, self.value_dim, bias=False)
        if use_beta:
            self.b_proj = nn.Linear(hidden_size, num_heads, bias=False)
        if use_short_conv:
            add_qkv_convolutions(self, qk_activation="silu" if qk_activation == "silu" else None)
        if use_gate:
            self.g_proj = nn.Linear(hidden_size, self.value_dim, bias=False)
            self.o_norm = GatedRMSNorm(self.head_v_dim, eps=norm_eps)
        else:
            self.o_norm = RMSNorm(self.head_v_dim, eps=norm_eps)
        self.o_proj = nn.Linear(self.value_dim, hidden_size, bias=False)

    def state_layout(self) -> StateLayout:
        """Conv states ``[N, D, W]`` of q, k, v and the mean ``[N, H, V, K]`` (:mod:`probseq.layers.state`)."""
        return StateLayout(RecurrentState, qkv_conv_layout(self), (self.num_heads, self.head_v_dim, self.head_k_dim))

    def forward(
        self,
        hidden_states: Tensor,
        attention_mask: Tensor | None = None,
        past_key_values=None,
        use_cache: bool | None = False,
        output_attentions: bool | None = False,
        **kwargs,
    ) -> tuple[Tensor, None, object]:
        """``hidden_states [B, T, D] → (o [B, T, D], None, past_key_values)``; ``kwargs``: ``cu_seqlens``."""
        x, mask, full, cu_seqlens = layer_inputs(
            self, hidden_states, attention_mask, kwargs.get("cu_seqlens"), self.q_proj.weight
        )
        last = read_state(self, past_key_values, num_sequences(x, cu_seqlens))
        check_mask_width(full, x.shape[1], cached=last is not None)
        check_forward_keywords(self, kwargs)

        if self.use_short_conv:
            q, k, v, conv_state = convolve_qkv(
                self, x, mask, None if last is None else last.conv, use_cache, cu_seqlens
            )
        else:
            q, k, v, conv_state = self.q_proj(x), self.k_proj(x), F.silu(self.v_proj(x)), ()
            if self.qk_activation == "silu":
                q, k = F.silu(q), F.silu(k)
        q = _activate(rearrange(q, "b t (h d) -> b t h d", d=self.head_k_dim), self.qk_activation)
        k = _activate(rearrange(k, "b t (h d) -> b t h d", d=self.head_k_dim), self.qk_activation)
        v = rearrange(v, "b t (h d) -> b t h d", d=self.head_v_dim)
        q, k = l2_normalize(q), l2_normalize(k)
        beta = torch.sigmoid(upcast(self.b_proj(x))) if self.use_beta else k.new_ones(k.shape[:3])
        k, _, beta, _ = hold_padding(mask, k, None, guard_zero_keys(k, beta))

        out = bayes_filter(
            q,
            k,
            v,
            None,
            beta,
            None,
            initial_state=None if last is None else last.memory,
            output_final_state=bool(use_cache),
            impl=MODES[self.mode],
            chunk_size=self.chunk_size,
            r_min=0.0,
            cu_seqlens=cu_seqlens,
            validate=self.validate,
        )
        if use_cache:
            write_state(self, past_key_values, RecurrentState(conv_state, out.state), hidden_states.shape[1])

        return zero_padding(gated_output(self, out.output, x), mask), None, past_key_values
