"""Linear attention (Katharopoulos et al., 2020) as the superposition filter (docs/design-model.md §7), with an
optional GLA-style decay.

``M_t = M_{t−1} ⊙ decay_t + v_t k_tᵀ``, ``o_t = M_t q̃_t``: the exact filter of the superposition design
(every key addresses a fresh slot). Constructor, parameter names and forward follow flash-linear-attention's
``LinearAttention``::

    q, k = φ(q_proj x), φ(k_proj x);  v = v_proj x          φ: the feature map
    o    = superposition_filter(q, k, v, g)
    y    = o_proj(RMSNorm(o))

The decay is ours (fla's ``LinearAttention`` has none): ``decay="scalar"`` gives RetNet / simple GLA,
``g = logsigmoid(gk_proj x)/gate_logit_normalizer`` per head; ``decay="channel"`` gives GLA,
the same per key channel (``gk_proj`` has ``num_heads · head_k_dim`` outputs).
"""

from __future__ import annotations

import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from probseq.layers.norm import RMSNorm
from probseq.layers.state import RecurrentState, StateLayout, read_state, write_state
from probseq.layers.utils import (
    MODES,
    check_forward_keywords,
    check_mask_width,
    check_mode,
    check_no_extra,
    check_positive,
    head_dims,
    hold_padding,
    layer_inputs,
    num_sequences,
    repeat_heads,
    upcast,
    zero_padding,
)
from probseq.ops import superposition_filter

FEATURE_MAPS = ("elementwise_product", "elu", "relu", "identity")
REFUSED_FEATURE_MAPS = ("hedgehog", "t2r", "dpfp")
DECAYS = (None, "scalar", "channel")


class HadamardFeatureMap(nn.Module):
    """``φ(x) = layer1(x) ⊙ layer2(x)`` (fla's ``elementwise_product`` feature map)."""

    def __init__(self, head_dim: int):
        super().__init__()
        self.layer1 = nn.Linear(head_dim, head_dim)
        self.layer2 = nn.Linear(head_dim, head_dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.layer1(x) * self.layer2(x)


def _feature_map(name: str, head_dim: int) -> nn.Module:
    if name == "elementwise_product":
        return HadamardFeatureMap(head_dim)
    if name == "elu":
        return _EluPlusOne()
    return nn.ReLU() if name == "relu" else nn.Identity()


class _EluPlusOne(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        return F.elu(x) + 1


class LinearAttention(nn.Module):
    """fla ``LinearAttention``'s constructor (same defaults) and forward, plus ``decay``.

    Refused: the feature maps ``hedgehog``, ``t2r``, ``dpfp`` and ``do_feature_map_norm=True`` (the
    normalised output is not a filter mean).
    """

    def __init__(
        self,
        mode: str = "chunk",
        hidden_size: int = 1024,
        expand_k: float = 1.0,
        expand_v: float = 1.0,
        num_heads: int = 8,
        num_kv_heads: int | None = None,
        feature_map: str = "elementwise_product",
        tie_feature_map_qk: bool = False,
        output_norm: str = "rmsnorm",
        norm_q: bool = False,
        norm_k: bool = False,
        do_feature_map_norm: bool = False,
        elementwise_affine: bool = True,
        norm_eps: float = 1e-5,
        layer_idx: int | None = None,
        *,
        decay: str | None = None,
        gate_logit_normalizer: float = 16.0,
        chunk_size: int | None = None,
        validate: bool = False,
        **kwargs,
    ):
        super().__init__()
        # validate: hidden_states and the filter's values checked (NaN/Inf, ranges, a finite result) with one host
        # synchronisation each per call; off by default, as in a training loop (docs/numerics.md, "Validation").
        self.validate = bool(validate)
        check_no_extra("LinearAttention", kwargs)
        num_kv_heads = num_heads if num_kv_heads is None else num_kv_heads
        check_positive(hidden_size=hidden_size, num_heads=num_heads, num_kv_heads=num_kv_heads)
        check_mode(mode, tuple(MODES))
        if num_heads % num_kv_heads:
            raise ValueError(f"num_heads={num_heads} must be a multiple of num_kv_heads={num_kv_heads}")
        if feature_map in REFUSED_FEATURE_MAPS:
            raise ValueError(f"feature_map={feature_map!r} is not supported; use one of {FEATURE_MAPS}")
        if feature_map not in FEATURE_MAPS:
            raise ValueError(f"feature_map must be one of {FEATURE_MAPS}, got {feature_map!r}")
        if do_feature_map_norm:
            raise ValueError(
                "do_feature_map_norm=True (output divided by q·Σk) is not supported: the output "
                "is then no longer the filter's predictive mean"
            )
        if output_norm not in ("rmsnorm", "identity"):
            raise ValueError(f"output_norm must be 'rmsnorm' or 'identity', got {output_norm!r}")
        if decay not in DECAYS:
            raise ValueError(f"decay must be one of {DECAYS}, got {decay!r}")
        if chunk_size is not None:
            check_positive(chunk_size=chunk_size)
        if not gate_logit_normalizer > 0:
            raise ValueError(f"gate_logit_normalizer must be > 0, got {gate_logit_normalizer!r}")
        key_dim, value_dim = head_dims(hidden_size, expand_k, expand_v, num_heads)

        self.mode, self.hidden_size, self.expand_k, self.expand_v = mode, hidden_size, expand_k, expand_v
        self.num_heads, self.num_kv_heads = num_heads, num_kv_heads
        self.num_kv_groups = num_heads // num_kv_heads
        self.key_dim, self.value_dim = key_dim, value_dim
        self.head_k_dim, self.head_v_dim = key_dim // num_heads, value_dim // num_heads
        self.feature_map, self.norm_q, self.norm_k = feature_map, norm_q, norm_k
        self.do_feature_map_norm, self.layer_idx = do_feature_map_norm, layer_idx
        self.decay, self.gate_logit_normalizer, self.chunk_size = decay, float(gate_logit_normalizer), chunk_size

        self.feature_map_q = _feature_map(feature_map, self.head_k_dim)
        self.feature_map_k = self.feature_map_q if tie_feature_map_qk else _feature_map(feature_map, self.head_k_dim)
        self.q_proj = nn.Linear(hidden_size, self.key_dim, bias=False)
        self.k_proj = nn.Linear(hidden_size, self.key_dim // self.num_kv_groups, bias=False)
        self.v_proj = nn.Linear(hidden_size, self.value_dim // self.num_kv_groups, bias=False)
        self.norm = (
            RMSNorm(self.head_v_dim, eps=norm_eps, elementwise_affine=elementwise_affine)
            if output_norm == "rmsnorm"
            else nn.Identity()
        )
        self.o_proj = nn.Linear(self.value_dim, hidden_size, bias=False)
        if decay is not None:
            self.gk_proj = nn.Linear(hidden_size, num_heads if decay == "scalar" else self.key_dim, bias=True)

    def state_layout(self) -> StateLayout:
        """No conv state; the mean ``[N, H, V, K]`` (:mod:`probseq.layers.state`)."""
        return StateLayout(RecurrentState, (), (self.num_heads, self.head_v_dim, self.head_k_dim))

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

        q = rearrange(self.q_proj(x), "b t (h d) -> b t h d", d=self.head_k_dim)
        k = repeat_heads(rearrange(self.k_proj(x), "b t (h d) -> b t h d", d=self.head_k_dim), self.num_kv_groups)
        v = repeat_heads(rearrange(self.v_proj(x), "b t (h d) -> b t h d", d=self.head_v_dim), self.num_kv_groups)
        q, k = self.feature_map_q(q), self.feature_map_k(k)
        if self.norm_q:
            q = q / (q.sum(-1, keepdim=True) + 1e-4)
        if self.norm_k:
            k = k / (k.sum(-1, keepdim=True) + 1e-4)
        g = None
        if self.decay is not None:
            g = F.logsigmoid(upcast(self.gk_proj(x))) / self.gate_logit_normalizer
            if self.decay == "channel":
                g = rearrange(g, "b t (h d) -> b t h d", d=self.head_k_dim)
        k, g, _, _ = hold_padding(mask, k, g)

        out = superposition_filter(
            q,
            k,
            v,
            g,
            initial_state=None if last is None else last.memory,
            output_final_state=bool(use_cache),
            impl=MODES[self.mode],
            chunk_size=self.chunk_size,
            cu_seqlens=cu_seqlens,
            validate=self.validate,
        )
        if use_cache:
            write_state(self, past_key_values, RecurrentState((), out.state), hidden_states.shape[1])
        o = self.o_proj(rearrange(self.norm(out.output), "b t h d -> b t (h d)"))
        return zero_padding(o, mask), None, past_key_values
