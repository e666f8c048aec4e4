"""Sequence-mixing layers: ``nn.Module`` wrappers that turn hidden states into the filter's inputs and call
one function of :mod:`probseq.ops` per forward (docs/architecture.md, floor 2). docs/layers.md describes them: the
Bayesian Layer end to end, the decoding state, the variance side channel, fla and Zoology compatibility.

Every mixer has flash-linear-attention's forward::

    o, _, past_key_values = layer(hidden_states [B, T, D], attention_mask=None, past_key_values=None,
                                  use_cache=False, output_attentions=False, **kwargs)

``attention_mask`` is fla's 2-D 0/1 padding mask (0 = padding, e.g. a left-padded batch): each sequence
gets exactly what it gets alone, and outputs at padded positions are zero. ``kwargs["cu_seqlens"]``
packs variable-length sequences (``B = 1``). ``past_key_values`` is a cache with per-layer slots
(:mod:`probseq.layers.state`; :class:`probseq.models.ProbSeqCache`), found by ``layer_idx``.

=====================  ==================  ==============================================================
``MIXERS`` name        class               filter
=====================  ==================  ==============================================================
``bayesian``           BayesianLayer       ``bayes_filter`` with certainty retention γ
``gated_deltanet``     GatedDeltaNet       ``bayes_filter``, γ = 0 (covariance reset), r_min = 0
``deltanet``           DeltaNet            ``bayes_filter``, γ = 0, α = 1, r_min = 0
``linear_attention``   LinearAttention     ``superposition_filter`` (optional scalar/channel decay)
``mamba2``             Mamba2              ``superposition_filter`` with α = exp(ΔA), β = Δ
``attention``          Attention           ``torch.nn.functional.scaled_dot_product_attention``
=====================  ==================  ==============================================================
"""

from probseq.layers.attention import Attention
from probseq.layers.bayesian import RETENTIONS, BayesianLayer, Retention
from probseq.layers.conv import ShortConvolution
from probseq.layers.deltanet import DeltaNet
from probseq.layers.gated_deltanet import GatedDeltaNet
from probseq.layers.linear_attention import LinearAttention
from probseq.layers.mamba2 import Mamba2
from probseq.layers.mlp import SwiGLU
from probseq.layers.norm import GatedRMSNorm, RMSNorm
from probseq.layers.state import KVState, LayerCache, RecurrentState

MIXERS = {
    "bayesian": BayesianLayer,
    "gated_deltanet": GatedDeltaNet,
    "deltanet": DeltaNet,
    "linear_attention": LinearAttention,
    "mamba2": Mamba2,
    "attention": Attention,
}

__all__ = [
    "MIXERS",
    "RETENTIONS",
    "Attention",
    "BayesianLayer",
    "DeltaNet",
    "GatedDeltaNet",
    "GatedRMSNorm",
    "KVState",
    "LayerCache",
    "LinearAttention",
    "Mamba2",
    "RMSNorm",
    "RecurrentState",
    "Retention",
    "ShortConvolution",
    "SwiGLU",
]
