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
    """Keys and values of an attention layer, ``[B, S, H_kv, D_h]`` each (``S`` tokens seen), and which of
    them are real tokens: ``padding`` ``[B, S]`` bool (``None``: all are). A decoding step that passes no
    mask, or only its own tokens' ``[B, T]``, still skips the padded keys of a left-padded prompt and continues
    its positions."""

    keys: Tensor
    values: Tensor
    padding: Tensor | None = None


LayerState = RecurrentState | KVState


class LayerCache(Protocol):
    """What a layer needs of a cache."""

    def get_layer_state(self, layer_idx: int) -> LayerState | None: ...

    def update_layer_state(self, layer_idx: int, state: LayerState, num_tokens: int) -> None: ...


class StateLayout(NamedTuple):
    """The shapes a layer's state must have, apart from the batch dim ``N`` (and the token count ``S``).

    Attributes:
        kind: :class:`RecurrentState` or :class:`KVState`.
        conv: ``(D, W)`` of each short-convolution state ``[N, D, W]`` (recurrent layers).
        memory: ``(H, V, K)`` of the filter mean ``[N, H, V, K]`` (recurrent layers), or ``(H_kv, D_h)`` of the
            keys and values ``[N, S, H_kv, D_h]`` (attention).
    """

    kind: type
    conv: tuple[tuple[int, int], ...] = ()
    memory: tuple[int, ...] = ()


def _layer_idx(module: nn.Module) -> int:
    layer_idx = getattr(module, "layer_idx", None)
    if layer_idx is None:
        raise ValueError(f"{type(module).__name__} needs a layer_idx to read or write a cache (past_key_values)")
    return layer_idx


def _check_cache(cache: object) -> None:
    if not (callable(getattr(cache, "get_layer_state", None)) and callable(getattr(cache, "update_layer_state", None))):
        raise ValueError(
            "past_key_values must be a cache with get_layer_state(layer_idx) and update_layer_state("
            "layer_idx, state, num_tokens), e.g. probseq.models.ProbSeqCache; got "
            f"{type(cache).__name__}"
        )


def read_state(module: nn.Module, cache: LayerCache | None, batch: int | None = None) -> LayerState | None:
    """The module's state in ``cache`` (``None`` without a cache or before its first token).

    With ``batch`` (the sequences of this call: ``B``, or ``S`` for packed ones) the state is checked against
    ``module.state_layout()``; a state of another layer type, size or batch raises a ``ValueError`` naming the
    layer and what differs.
    """
    if cache is None:
        return None
    _check_cache(cache)
    state = cache.get_layer_state(_layer_idx(module))
    if state is not None and batch is not None:
        check_state(module, state, batch)
    return state


def write_state(module: nn.Module, cache: LayerCache | None, state: LayerState, num_tokens: int) -> None:
    """Store the module's state after ``num_tokens`` more tokens (no-op without a cache)."""
    if cache is not None:
        _check_cache(cache)
        cache.update_layer_state(_layer_idx(module), state, num_tokens)


def check_state(module: nn.Module, state: object, batch: int) -> None:
    """``state`` is what ``module`` writes, for ``batch`` sequences (see :func:`read_state`)."""
    layout: StateLayout = module.state_layout()
    who = f"{type(module).__name__} (layer_idx={module.layer_idx})"
    if not isinstance(state, layout.kind):
        raise ValueError(
            f"{who} cannot continue from its slot in past_key_values: it holds a {type(state).__name__}, "
            f"this layer keeps a {layout.kind.__name__} (the cache was written by another layer type "
            "or model)"
        )
    if isinstance(state, KVState):
        parts = [
            ("keys", state.keys, layout.memory, "[N, S, H_kv, D_h]"),
            ("values", state.values, layout.memory, "[N, S, H_kv, D_h]"),
        ]
        if state.padding is not None:
            parts.append(("padding", state.padding, (state.keys.shape[1],), "[N, S]"))
    else:
        if len(state.conv) != len(layout.conv):
            raise ValueError(
                f"{who}: the cached state has {len(state.conv)} short-convolution state(s), this layer "
                f"keeps {len(layout.conv)} (the cache was written by another layer type)"
            )
        parts = [
            (f"conv[{i}]", conv, expected, "[N, D, W]")
            for i, (conv, expected) in enumerate(zip(state.conv, layout.conv))
        ]
        parts.append(("memory.mean", getattr(state.memory, "mean", None), layout.memory, "[N, H, V, K]"))
    for name, tensor, expected, shape in parts:
        _check_part(who, name, tensor, expected, shape, batch)


def _check_part(who: str, name: str, tensor: object, expected: tuple[int, ...], layout: str, batch: int) -> None:
    """``tensor`` has the ``layout`` (e.g. ``"[N, H, V, K]"``) with trailing sizes ``expected`` and ``N = batch``."""
    dims = layout.strip("[]").split(", ")
    want = "[" + ", ".join(dims[: len(dims) - len(expected)] + [str(n) for n in expected]) + "]"
    if not isinstance(tensor, Tensor):
        raise ValueError(f"{who}: the cached state's {name} must be a tensor {want}, got {type(tensor).__name__}")
    actual = tuple(tensor.shape)
    if len(actual) != len(dims) or actual[len(dims) - len(expected) :] != expected:
        raise ValueError(
            f"{who}: the cached state's {name} has shape {list(actual)}, this layer's is {want} "
            "(the cache was written by another layer type or size)"
        )
    if actual[0] != batch:
        raise ValueError(
            f"{who}: the cached state is for batch size {actual[0]} ({name} {list(actual)}), this call "
            f"has {batch} sequence(s) (hidden_states' batch, or the sequences of cu_seqlens)"
        )
