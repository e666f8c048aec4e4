"""probseq's mixers as Zoology sequence mixers (HazyResearch/zoology; docs/architecture.md, floor 4), for Zoology's
own training code.

Zoology builds a mixer from a dotted path and keyword arguments, calls it on ``[B, T, D]`` and counts its
recurrent state. Each class here has that contract and wraps one :mod:`probseq.layers` mixer::

    mixer = BayesianMixer(d_model, layer_idx=None, **kwargs)   # what ModuleConfig.instantiate does
    y = mixer(x)                                               # x, y: [B, T, D]
    mixer.state_size(sequence_length=T)                        # recurrent state, in elements

A worked Zoology config (MQAR, two layers of 128 channels; Zoology's ``TransformerBlock`` adds the MLP,
norms and residuals around the mixer)::

    from zoology.config import ModelConfig, ModuleConfig

    model = ModelConfig(
        d_model=128, n_layers=2, vocab_size=8_192, max_position_embeddings=0, name="bayesian",
        sequence_mixer=ModuleConfig(
            name="probseq.zoology.BayesianMixer",
            kwargs={"retention": "learned", "num_heads": 2},
        ),
    )

and, as Zoology's own sweeps do, alternating with a short convolution::

    conv_mixer = dict(name="zoology.mixers.base_conv.BaseConv",
                      kwargs={"l_max": 256, "kernel_size": 3, "implicit_long_conv": True})
    bayes_mixer = dict(name="probseq.zoology.BayesianMixer", kwargs={"l_max": 256, "retention": "learned"})
    sequence_mixer = ModuleConfig(name="zoology.mixers.hybrid.Hybrid",
                                  kwargs={"configs": [conv_mixer, bayes_mixer]})

Defaults, chosen for Zoology's small ``d_model`` (64–256) and so that recurrent states are comparable at
equal ``d_model``: ``num_heads = max(1, d_model // 64)`` heads of ``head_dim = d_model / num_heads`` (so 64
for multiples of 64), value dim = key dim (``expand_v = 1``, ``expand_k = 1``); ``AttentionMixer`` uses the
same head count; ``Mamba2Mixer`` uses ``expand = 2``, the same head count (``head_dim = 2 d_model /
num_heads``) and ``state_size = 64``; ``LinearAttentionMixer`` uses the parameter-free ``elu`` feature map
(:class:`~probseq.models.ProbSeqConfig`'s default). Every other keyword goes to the wrapped layer under its
own (flash-linear-attention) name — e.g. ``use_gate``, ``conv_size``, ``chunk_size``, ``decay`` — and an
unknown one raises ``ValueError``. ``l_max``, which Zoology's configs pass to most mixers, is accepted and
unused (the recurrent mixers need no maximum length).

``state_size`` counts what a decoding step carries from one token to the next, in elements per sequence
(Zoology's convention; its model sums the layers and multiplies by 4 bytes):

- ``BayesianMixer``: mean ``V·K`` plus covariance ``K·K`` per value head (the mean only with
  ``retention="reset"``: the covariance is reset before every write, so the next step does not read it);
- ``GatedDeltaNetMixer``, ``DeltaNetMixer``: ``V·K`` per head;
- ``LinearAttentionMixer``: ``V·K`` per head (no normaliser: the output is the filter mean);
- ``Mamba2Mixer``: ``P·N`` per head;
- plus, for every mixer with a short convolution, its state ``channels × kernel size`` (fla's cache layout,
  and how Zoology's ``ShortConvolution`` and GLA count it; Zoology's GDN and Mamba-2 wrappers leave it out);
- ``AttentionMixer``: the KV cache, ``2 · kv_dim · T`` (``2 · d_model · T`` with as many KV heads as heads,
  Zoology's ``MHA`` count).
"""

from __future__ import annotations

from torch import Tensor, nn

from probseq.layers import Attention, BayesianLayer, DeltaNet, GatedDeltaNet, LinearAttention, Mamba2, ShortConvolution
from probseq.layers.utils import check_positive

__all__ = [
    "AttentionMixer",
    "BayesianMixer",
    "DeltaNetMixer",
    "GatedDeltaNetMixer",
    "LinearAttentionMixer",
    "Mamba2Mixer",
    "ZoologyMixer",
]


def default_heads(d_model: int, num_heads: int | None) -> int:
    """``num_heads`` or ``max(1, d_model // 64)``; ``d_model`` must split evenly into the heads."""
    check_positive(d_model=d_model)
    given = num_heads
    num_heads = max(1, d_model // 64) if num_heads is None else num_heads
    check_positive(num_heads=num_heads)
    if d_model % num_heads:
        raise ValueError(
            f"d_model={d_model} must be divisible by num_heads={num_heads}"
            + (" (the default, d_model // 64): pass num_heads" if given is None else "")
        )
    return num_heads


def _check_l_max(l_max: int | None) -> None:
    if l_max is not None:
        check_positive(l_max=l_max)


def _conv_state_size(layer: nn.Module) -> int:
    """Elements of the short-convolution states of ``layer``: ``channels × kernel size`` per convolution."""
    return sum(conv.hidden_size * conv.kernel_size[0] for conv in layer.modules() if isinstance(conv, ShortConvolution))


class ZoologyMixer(nn.Module):
    """Zoology's mixer contract around one probseq layer, stored as :attr:`layer`.

    ``forward(x [B, T, D]) -> [B, T, D]``; ``state_size(sequence_length) -> int`` (see the module docstring).
    """

    layer: nn.Module

    def __init__(self, d_model: int, layer_idx: int | None):
        super().__init__()
        self.d_model, self.layer_idx = d_model, layer_idx

    def forward(self, x: Tensor) -> Tensor:
        """``x [B, T, D] → y [B, T, D]`` (causal)."""
        if x.dim() != 3 or x.shape[-1] != self.d_model:
            raise ValueError(f"{type(self).__name__} expects x of shape [B, T, {self.d_model}], got {list(x.shape)}")
        return self.layer(x)[0]

    def state_size(self, sequence_length: int = 2048) -> int:
        raise NotImplementedError


class BayesianMixer(ZoologyMixer):
    """The Bayesian Layer (:class:`~probseq.layers.BayesianLayer`) as a Zoology mixer.

    Args:
        d_model: model width (Zoology passes it).
        layer_idx: layer index (Zoology passes it).
        retention: ``"learned"`` (default), ``"stationary"`` or ``"reset"``.
        num_heads: default ``max(1, d_model // 64)``; head_dim: default ``d_model // num_heads``;
            expand_v: default 1.
        l_max: accepted (Zoology passes it) and unused.
        **kwargs: any other :class:`~probseq.layers.BayesianLayer` argument (``use_gate``, ``conv_size``,
            ``retention_init``, ``r_min``, ``chunk_size`` …).

    ``forward(x, output_variance=True)`` also stores the per-head predictive variance ``[B, T, H]`` in
    :attr:`last_variance`.
    """

    def __init__(
        self,
        d_model: int,
        layer_idx: int | None = None,
        *,
        retention: str = "learned",
        num_heads: int | None = None,
        head_dim: int | None = None,
        expand_v: float = 1,
        l_max: int | None = None,
        **kwargs,
    ):
        super().__init__(d_model, layer_idx)
        _check_l_max(l_max)
        num_heads = default_heads(d_model, num_heads)
        self.layer = BayesianLayer(
            hidden_size=d_model,
            num_heads=num_heads,
            head_dim=d_model // num_heads if head_dim is None else head_dim,
            expand_v=expand_v,
            layer_idx=layer_idx,
            retention=retention,
            **kwargs,
        )

    def forward(self, x: Tensor, output_variance: bool = False) -> Tensor:
        """``x [B, T, D] → y [B, T, D]``; with ``output_variance`` the variance goes to :attr:`last_variance`."""
        if x.dim() != 3 or x.shape[-1] != self.d_model:
            raise ValueError(f"BayesianMixer expects x of shape [B, T, {self.d_model}], got {list(x.shape)}")
        return self.layer(x, output_variance=output_variance)[0]

    @property
    def last_variance(self) -> Tensor | None:
        """Predictive variance ``[B, T, H]`` of the last ``forward(x, output_variance=True)``."""
        return self.layer.last_variance

    def state_size(self, sequence_length: int = 2048) -> int:
        layer = self.layer
        per_head = layer.head_v_dim * layer.head_k_dim
        if layer.retention != "reset":
            per_head += layer.head_k_dim * layer.head_k_dim
        return layer.num_v_heads * per_head + _conv_state_size(layer)


class GatedDeltaNetMixer(ZoologyMixer):
    """Gated DeltaNet (:class:`~probseq.layers.GatedDeltaNet`, the covariance-reset Bayesian Layer) as a Zoology
    mixer. Defaults and ``kwargs`` as :class:`BayesianMixer` (less ``retention``)."""

    def __init__(
        self,
        d_model: int,
        layer_idx: int | None = None,
        *,
        num_heads: int | None = None,
        head_dim: int | None = None,
        expand_v: float = 1,
        l_max: int | None = None,
        **kwargs,
    ):
        super().__init__(d_model, layer_idx)
        _check_l_max(l_max)
        num_heads = default_heads(d_model, num_heads)
        self.layer = GatedDeltaNet(
            hidden_size=d_model,
            num_heads=num_heads,
            head_dim=d_model // num_heads if head_dim is None else head_dim,
            expand_v=expand_v,
            layer_idx=layer_idx,
            **kwargs,
        )

    def state_size(self, sequence_length: int = 2048) -> int:
        layer = self.layer
        return layer.num_v_heads * layer.head_v_dim * layer.head_k_dim + _conv_state_size(layer)


class DeltaNetMixer(ZoologyMixer):
    """DeltaNet (:class:`~probseq.layers.DeltaNet`) as a Zoology mixer: ``num_heads`` as above, fla's
    ``expand_k = expand_v = 1``; ``kwargs`` go to the layer (``use_gate``, ``use_beta``, ``qk_activation`` …)."""

    def __init__(
        self,
        d_model: int,
        layer_idx: int | None = None,
        *,
        num_heads: int | None = None,
        l_max: int | None = None,
        **kwargs,
    ):
        super().__init__(d_model, layer_idx)
        _check_l_max(l_max)
        self.layer = DeltaNet(
            hidden_size=d_model, num_heads=default_heads(d_model, num_heads), layer_idx=layer_idx, **kwargs
        )

    def state_size(self, sequence_length: int = 2048) -> int:
        layer = self.layer
        return layer.num_heads * layer.head_v_dim * layer.head_k_dim + _conv_state_size(layer)


class LinearAttentionMixer(ZoologyMixer):
    """Linear attention (:class:`~probseq.layers.LinearAttention`) as a Zoology mixer: ``num_heads`` as above,
    ``feature_map="elu"``; ``kwargs`` go to the layer (``decay="scalar"`` gives RetNet, ``"channel"`` GLA)."""

    def __init__(
        self,
        d_model: int,
        layer_idx: int | None = None,
        *,
        num_heads: int | None = None,
        feature_map: str = "elu",
        l_max: int | None = None,
        **kwargs,
    ):
        super().__init__(d_model, layer_idx)
        _check_l_max(l_max)
        self.layer = LinearAttention(
            hidden_size=d_model,
            num_heads=default_heads(d_model, num_heads),
            feature_map=feature_map,
            layer_idx=layer_idx,
            **kwargs,
        )

    def state_size(self, sequence_length: int = 2048) -> int:
        layer = self.layer
        return layer.num_heads * layer.head_v_dim * layer.head_k_dim


class Mamba2Mixer(ZoologyMixer):
    """Mamba-2 (:class:`~probseq.layers.Mamba2`) as a Zoology mixer: ``expand = 2``, ``num_heads`` as above
    (``head_dim = expand · d_model / num_heads``), ``state_size = 64`` (``d_state``, Zoology's and mamba_ssm's
    name, is taken for it); ``kwargs`` go to the layer under its fla names (``n_groups``, ``conv_kernel``,
    ``chunk_size`` …)."""

    def __init__(
        self,
        d_model: int,
        layer_idx: int | None = None,
        *,
        num_heads: int | None = None,
        expand: int = 2,
        state_size: int | None = None,
        d_state: int | None = None,
        l_max: int | None = None,
        **kwargs,
    ):
        super().__init__(d_model, layer_idx)
        _check_l_max(l_max)
        check_positive(expand=expand)
        if state_size is not None and d_state is not None and state_size != d_state:
            raise ValueError(f"state_size={state_size} and d_state={d_state} name the same size: pass one")
        state_size = next((n for n in (state_size, d_state) if n is not None), 64)
        num_heads = default_heads(d_model, num_heads)
        self.layer = Mamba2(
            num_heads=num_heads,
            head_dim=expand * d_model // num_heads,
            hidden_size=d_model,
            state_size=state_size,
            expand=expand,
            layer_idx=layer_idx,
            **kwargs,
        )

    def state_size(self, sequence_length: int = 2048) -> int:
        layer = self.layer
        return layer.num_heads * layer.head_dim * layer.ssm_state_size + _conv_state_size(layer)


class AttentionMixer(ZoologyMixer):
    """Causal softmax attention (:class:`~probseq.layers.Attention`, rotary positions) as a Zoology mixer:
    ``num_heads`` as above; ``kwargs`` go to the layer (``num_kv_heads``, ``rope_theta=None`` for no rotary
    embedding, ``qk_norm``, ``dropout`` of the attention probabilities as Zoology's configs pass it …)."""

    def __init__(
        self,
        d_model: int,
        layer_idx: int | None = None,
        *,
        num_heads: int | None = None,
        l_max: int | None = None,
        **kwargs,
    ):
        super().__init__(d_model, layer_idx)
        _check_l_max(l_max)
        self.layer = Attention(
            hidden_size=d_model, num_heads=default_heads(d_model, num_heads), layer_idx=layer_idx, **kwargs
        )

    def state_size(self, sequence_length: int = 2048) -> int:
        check_positive(sequence_length=sequence_length)
        return 2 * self.layer.kv_dim * sequence_length
