"""Per-layer decoding state, and how a layer reads and writes it in a cache.

A layer's state is a typed container holding what the next token needs — never the history:

- :class:`RecurrentState` for the recurrent mixers: the short-convolution states and the filter's
  :class:`~probseq.types.BayesState` (mean ``M [B, H, V, K]``, covariance ``P [B, H, K, K]`` for the
  Bayesian family, ``None`` for the superposition family). Its size does not depend on the position.
- :class:`KVState` for softmax attention: the keys and values seen so far.

A cache is anything with ``get_layer_state(layer_idx)`` and ``update_layer_state(layer_idx, state,
num_tokens)``; :class:`probseq.models.ProbSeqCache` is the one the models use (and ``generate`` runs on).
Layers find their slot through their ``layer_idx``, as in flash-linear-attention.
"""

from __future__ import annotations

from typing import NamedTuple, Protocol

from torch import Tensor, nn

from probseq.ops import BayesState


class RecurrentState(NamedTuple):
    """State of a recurrent mixer after its last token.

    Attributes:
        conv: one short-convolution state per convolved projection, each ``[B, D, W]`` (the last ``W``
            inputs, fla's ``ShortConvolution`` cache layout); ``()`` when the layer has no short conv.
        memory: the filter state, ``BayesState(mean [B, H, V, K], cov [B, H, K, K] or None)``.
    """

    conv: tuple[Tensor, ...]
    memory: BayesState


class KVState(NamedTuple):
    """Keys and values of an attention layer, ``[B, S, H_kv, D_h]`` each (``S`` tokens seen)."""

    keys: Tensor
    values: Tensor


LayerState = RecurrentState | KVState


class LayerCache(Protocol):
    """What a layer needs of a cache."""

    def get_layer_state(self, layer_idx: int) -> LayerState | None: ...

    def update_layer_state(self, layer_idx: int, state: LayerState, num_tokens: int) -> None: ...


def _layer_idx(module: nn.Module) -> int:
    layer_idx = getattr(module, "layer_idx", None)
    if layer_idx is None:
        raise ValueError(f"{type(module).__name__} needs a layer_idx to read or write a cache (past_key_values)")
    return layer_idx


def read_state(module: nn.Module, cache: LayerCache | None) -> LayerState | None:
    """The module's state in ``cache`` (``None`` without a cache or before its first token)."""
    return None if cache is None else cache.get_layer_state(_layer_idx(module))


def write_state(module: nn.Module, cache: LayerCache | None, state: LayerState, num_tokens: int) -> None:
    """Store the module's state after ``num_tokens`` more tokens (no-op without a cache)."""
    if cache is not None:
        cache.update_layer_state(_layer_idx(module), state, num_tokens)
