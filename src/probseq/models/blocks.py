"""One pre-norm block, and the mixer of a layer built from a :class:`ProbSeqConfig`.

Parameter names follow flash-linear-attention's blocks (``attn_norm attn mlp_norm mlp``), so an fla Gated
DeltaNet checkpoint maps onto a ``gated_deltanet`` / ``bayesian`` model.
"""

from __future__ import annotations

from torch import Tensor, nn
from transformers.modeling_layers import GradientCheckpointingLayer

from probseq.layers import Attention, BayesianLayer, DeltaNet, GatedDeltaNet, LinearAttention, Mamba2, RMSNorm, SwiGLU
from probseq.layers.mlp import swiglu_size


def build_mixer(config, layer_idx: int) -> nn.Module:
    """The mixer of layer ``layer_idx`` (``config.layer_mixers[layer_idx]``)."""
    name = config.layer_mixers[layer_idx]
    hidden = config.hidden_size
    chunk = {} if config.chunk_size is None else {"chunk_size": config.chunk_size}
    if name in ("bayesian", "gated_deltanet"):
        common = dict(
            hidden_size=hidden,
            expand_v=config.expand_v,
            head_dim=config.head_dim,
            num_heads=config.num_heads,
            num_v_heads=config.num_v_heads,
            use_gate=config.use_gate,
            use_short_conv=config.use_short_conv,
            allow_neg_eigval=config.allow_neg_eigval,
            conv_size=config.conv_size,
            conv_bias=config.conv_bias,
            layer_idx=layer_idx,
            norm_eps=config.norm_eps,
            output_gate_activation=config.output_gate_activation,
            **chunk,
        )
        if name == "gated_deltanet":
            return GatedDeltaNet(**common)
        return BayesianLayer(
            **common, retention=config.retention, retention_init=config.retention_init, r_min=config.r_min
        )
    key_dim = config.num_heads * config.head_dim
    value_dim = key_dim * config.expand_v
    if name == "deltanet":
        return DeltaNet(
            hidden_size=hidden,
            expand_k=key_dim / hidden,
            expand_v=value_dim / hidden,
            num_heads=config.num_heads,
            use_gate=config.use_gate,
            use_short_conv=config.use_short_conv,
            conv_size=config.conv_size,
            conv_bias=config.conv_bias,
            allow_neg_eigval=config.allow_neg_eigval,
            layer_idx=layer_idx,
            norm_eps=config.norm_eps,
            **chunk,
        )
    if name == "linear_attention":
        return LinearAttention(
            hidden_size=hidden,
            expand_k=key_dim / hidden,
            expand_v=value_dim / hidden,
            num_heads=config.num_heads,
            feature_map=config.feature_map,
            norm_eps=config.norm_eps,
            layer_idx=layer_idx,
            decay=config.decay,
            **chunk,
        )
    if name == "mamba2":
        return Mamba2(
            head_dim=config.head_dim,
            hidden_size=hidden,
            state_size=config.state_size,
            expand=config.expand,
            n_groups=config.n_groups,
            conv_kernel=config.conv_size,
            norm_eps=config.norm_eps,
            layer_idx=layer_idx,
            **chunk,
        )
    if name == "attention":
        return Attention(
            hidden_size=hidden,
            num_heads=config.attn_num_heads or config.num_heads,
            num_kv_heads=config.attn_num_kv_heads,
            qkv_bias=config.qkv_bias,
            rope_theta=config.rope_theta,
            max_position_embeddings=config.max_position_embeddings,
            layer_idx=layer_idx,
        )
    raise ValueError(f"unknown mixer {name!r}")


class ProbSeqBlock(GradientCheckpointingLayer):
    """``h + mixer(RMSNorm(h))``, then ``h + SwiGLU(RMSNorm(h))``."""

    def __init__(self, config, layer_idx: int):
        super().__init__()
        self.layer_idx = layer_idx
        self.attn_norm = RMSNorm(config.hidden_size, eps=config.norm_eps)
        self.attn = build_mixer(config, layer_idx)
        self.mlp_norm = RMSNorm(config.hidden_size, eps=config.norm_eps)
        self.mlp = SwiGLU(
            config.hidden_size, swiglu_size(config.hidden_size, config.hidden_ratio, config.intermediate_size)
        )

    def forward(
        self,
        hidden_states: Tensor,
        attention_mask: Tensor | None = None,
        past_key_values=None,
        use_cache: bool = False,
        **kwargs,
    ) -> Tensor:
        mixed, _, _ = self.attn(
            self.attn_norm(hidden_states),
            attention_mask=attention_mask,
            past_key_values=past_key_values,
            use_cache=use_cache,
            **kwargs,
        )
        hidden_states = hidden_states + mixed
        return hidden_states + self.mlp(self.mlp_norm(hidden_states))
