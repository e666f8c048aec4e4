"""``ProbSeqCache``: the decoding cache of a ProbSeq model, one slot per layer.

A recurrent layer's slot holds a :class:`~probseq.layers.RecurrentState` — its short-convolution states
and the filter's ``BayesState`` (mean ``M``, and covariance ``P`` for the Bayesian family) — whose size
does not depend on the position, so a decoding step costs the same at every position. An attention
layer's slot holds a :class:`~probseq.layers.KVState`.

It is a ``transformers.Cache`` so that ``generate`` (transformers 5.x) can carry it from step to step and
reorder it for beam search; ``ProbSeqForCausalLM`` creates it in its first forward (the model opts out of
``generate``'s default ``DynamicCache``), and a user may pass one in. Rolling a recurrent state back
(``crop``) is impossible, so assisted decoding is refused (the model is stateful).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor
from transformers.cache_utils import Cache

from probseq.layers import KVState, RecurrentState

State = RecurrentState | KVState


def map_state(state, fn: Callable[[Tensor], Tensor]):
    """Apply ``fn`` to every tensor of a (nested, named) tuple of tensors; ``None`` stays ``None``."""
    if state is None:
        return None
    if isinstance(state, Tensor):
        return fn(state)
    if isinstance(state, tuple):
        items = [map_state(item, fn) for item in state]
        return type(state)(*items) if hasattr(state, "_fields") else tuple(items)
    raise TypeError(f"cannot map a cache state of type {type(state).__name__}")


def _layout_difference(there: tuple, here: tuple) -> str:
    """The first mixer in which two cache layouts (see :meth:`ProbSeqCache.check_layout`) differ, in words."""
    by_index = [dict((entry[0], entry) for entry in layout) for layout in (there, here)]
    for index in sorted(set(by_index[0]) | set(by_index[1])):
        a, b = by_index[0].get(index), by_index[1].get(index)
        if a == b:
            continue
        if a is None or b is None:
            there, here = ("no mixer" if entry is None else entry[1] for entry in (a, b))
            return f"layer {index} is {there} there, {here} here"
        if a[1] != b[1]:
            return f"layer {index} is a {a[1]} there, a {b[1]} here"
        shapes_a, shapes_b = dict(a[2]), dict(b[2])
        for name in sorted(set(shapes_a) | set(shapes_b)):
            if shapes_a.get(name) != shapes_b.get(name):
                return (
                    f"layer {index} ({a[1]}) has {name} of shape {_shape(shapes_a.get(name))} there, "
                    f"{_shape(shapes_b.get(name))} here"
                )
    return "the layouts differ"


def _shape(shape: tuple[int, ...] | None) -> str:
    return "none" if shape is None else str(list(shape))


class ProbSeqCacheLayer:
    """The cache slot of one layer: its state and the number of tokens it has seen."""

    is_compileable = False
    is_sliding = False
    is_croppable = False
    supports_early_init = False

    def __init__(self):
        self.state: State | None = None
        self.seen_tokens = 0

    @property
    def is_initialized(self) -> bool:
        return self.state is not None

    def update(self, state: State, num_tokens: int) -> None:
        self.state = state
        self.seen_tokens += num_tokens

    def get_seq_length(self) -> int:
        return self.seen_tokens

    def get_max_length(self) -> int:
        return -1

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.seen_tokens + query_length, 0

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        self.state = map_state(self.state, lambda t: t.index_select(0, beam_idx.to(t.device)))

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        self.reorder_cache(indices)

    def batch_repeat_interleave(self, repeats: int) -> None:
        self.state = map_state(self.state, lambda t: t.repeat_interleave(repeats, dim=0))

    def crop(self, tokens_to_remove: int) -> None:
        if tokens_to_remove != 0:
            raise NotImplementedError("a recurrent state cannot be rolled back (ProbSeqCache.crop)")

    def offload(self) -> None:
        self.state = map_state(self.state, lambda t: t.to("cpu", non_blocking=True))

    def prefetch(self) -> None:
        pass

    def reset(self) -> None:
        self.state, self.seen_tokens = None, 0


class ProbSeqCache(Cache):
    """Per-layer decoding states of a ProbSeq model (see the module docstring).

    Layers call :meth:`get_layer_state` / :meth:`update_layer_state` with their ``layer_idx``.
    """

    def __init__(self):
        super().__init__(layer_class_to_replicate=ProbSeqCacheLayer)
        self.layout: tuple | None = None

    def check_layout(self, layout: tuple) -> None:
        """Refuse to continue another model's states. ``layout`` describes the model that calls: per mixer, its
        ``layer_idx``, class and ``(parameter name, shape)`` pairs (what sizes its state). The first model to use
        the cache sets it; a model of another layout (other mixers, sizes or depth) raises a ``ValueError``
        naming the first layer that differs — instead of a shape error deep inside a layer."""
        if self.layout is None:
            self.layout = layout
        elif self.layout != layout:
            raise ValueError(
                f"this cache was filled by another model: {_layout_difference(self.layout, layout)}; "
                "start from a new ProbSeqCache() (or cache=None) for this model"
            )

    def get_layer_state(self, layer_idx: int) -> State | None:
        """The state of layer ``layer_idx`` (``None`` before its first token)."""
        return self.layers[layer_idx].state if layer_idx < len(self.layers) else None

    def update_layer_state(self, layer_idx: int, state: State, num_tokens: int) -> None:
        """Store layer ``layer_idx``'s state after ``num_tokens`` more tokens."""
        if not isinstance(state, (RecurrentState, KVState)):
            raise ValueError(f"a layer state must be a RecurrentState or a KVState, got {type(state).__name__}")
        while len(self.layers) <= layer_idx:
            self.layers.append(ProbSeqCacheLayer())
        self.layers[layer_idx].update(state, num_tokens)

    def update(self, *args, **kwargs):
        raise NotImplementedError(
            "ProbSeqCache stores typed layer states: use update_layer_state(layer_idx, state, "
            "num_tokens), not the key/value update of transformers' caches"
        )

    def get_seq_length(self, layer_idx: int = 0) -> int:
        """Tokens seen (by layer ``layer_idx``)."""
        return self.layers[layer_idx].get_seq_length() if layer_idx < len(self.layers) else 0

    def get_mask_sizes(self, query_length: int, layer_idx: int) -> tuple[int, int]:
        return self.get_seq_length(layer_idx) + query_length, 0

    @property
    def is_compileable(self) -> bool:
        return False

    @property
    def is_linear(self) -> list[bool]:
        # Reported False for every layer: generate then slices already-seen prompt tokens by get_seq_length.
        return [False] * len(self.layers)
