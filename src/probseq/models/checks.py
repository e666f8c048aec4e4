"""Input checks at the models' boundary: every bad argument is a ``ValueError`` naming it, its value or shape,
and what is expected — before it reaches an embedding lookup, a loss or a layer deep inside.

- configuration values (:func:`check_config_keys`, :func:`positive_int`, :func:`positive_real`, …);
- token ids (:func:`check_token_ids`): ``input_ids`` in ``[0, vocab_size)``; ``labels`` also ``-100``;
- shapes of ``inputs_embeds``, ``attention_mask``, ``position_ids``, ``labels``, ``logits_to_keep`` (and its
  positions), and the prompt and mask of ``generate`` (:func:`check_generate_inputs`);
- a config's ``dtype`` (:func:`check_dtype`).
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Iterable

import torch
from torch import Tensor

IGNORE_INDEX = -100  # the label the loss skips (transformers' and PyTorch's cross-entropy convention)


# --- configuration values ------------------------------------------------------------------------------------


def check_config_keys(config_name: str, keys: Iterable[str], known: Iterable[str]) -> None:
    """Refuse keys a configuration does not know, naming each with the closest known key."""
    unknown = _unknown(keys, known)
    if unknown:
        raise ValueError(
            f"{config_name} got unknown key(s) {unknown}; a key it does not know would be ignored "
            "silently (see the class docstring for the valid keys)"
        )


def check_keywords(where: str, keywords: Iterable[str], known: Iterable[str]) -> None:
    """Refuse keyword arguments a function would otherwise drop silently, naming each with the closest known one."""
    unknown = _unknown(keywords, known)
    if unknown:
        raise ValueError(f"{where} got unexpected keyword argument(s) {unknown}; it takes {tuple(known)}")


def _unknown(keys: Iterable[str], known: Iterable[str]) -> str:
    """The keys not in ``known``, each with the closest known key: ``"'retension' (did you mean 'retention'?)"``."""
    known = sorted(set(known))
    parts = []
    for key in (key for key in keys if key not in known):
        close = difflib.get_close_matches(key, known, n=1)
        parts.append(f"{key!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
    return ", ".join(parts)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_real(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def positive_int(name: str, value: object, optional: bool = False) -> None:
    """``value`` is an int ``> 0`` (or ``None`` when ``optional``)."""
    if optional and value is None:
        return
    if not _is_int(value) or value <= 0:
        raise ValueError(f"{name} must be a positive int{' or None' if optional else ''}, got {value!r}")


def positive_real(name: str, value: object, optional: bool = False) -> None:
    """``value`` is a finite number ``> 0`` (or ``None`` when ``optional``)."""
    if optional and value is None:
        return
    if not _is_real(value) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a finite number > 0{' or None' if optional else ''}, got {value!r}")


def real_in(name: str, value: object, low: float, high: float = math.inf, optional: bool = False) -> None:
    """``value`` is a finite number in ``[low, high]`` (or ``None`` when ``optional``)."""
    if optional and value is None:
        return
    if not _is_real(value) or not math.isfinite(value) or not low <= value <= high:
        interval = f"[{low}, {high}]" if math.isfinite(high) else f">= {low}"
        raise ValueError(f"{name} must be a number {interval}{' or None' if optional else ''}, got {value!r}")


def boolean(name: str, value: object) -> None:
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be true or false, got {value!r}")


def one_of(name: str, value: object, choices: Iterable[object]) -> None:
    choices = tuple(choices)
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")


def token_id(name: str, value: object, vocab_size: int, many: bool = False) -> None:
    """``value`` is ``None`` or a token id in ``[0, vocab_size)`` (or, with ``many``, a list of them)."""
    if value is None:
        return
    values = value if many and isinstance(value, (list, tuple)) else [value]
    if not values or not all(_is_int(v) and 0 <= v < vocab_size for v in values):
        what = "a token id or a list of token ids" if many else "a token id"
        raise ValueError(f"{name} must be None or {what} in [0, vocab_size={vocab_size}), got {value!r}")


# --- forward inputs ------------------------------------------------------------------------------------------


def _integer(tensor: Tensor) -> bool:
    return not tensor.dtype.is_floating_point and not tensor.dtype.is_complex and tensor.dtype != torch.bool


def check_input_ids(input_ids: object, vocab_size: int) -> None:
    """``input_ids`` is an int64/int32 tensor ``[B, T]`` of token ids in ``[0, vocab_size)`` (one host sync)."""
    if (
        not isinstance(input_ids, Tensor) or input_ids.dim() != 2 or input_ids.dtype not in (torch.int64, torch.int32)
    ):  # what an embedding lookup takes
        raise ValueError(
            f"input_ids must be an integer tensor [B, T] (int64 or int32) of token ids, got {describe(input_ids)}"
        )
    check_token_ids("input_ids", input_ids, vocab_size)


def check_token_ids(name: str, ids: Tensor, vocab_size: int, ignore_index: int | None = None) -> None:
    """Every entry of ``ids`` is in ``[0, vocab_size)`` (or equals ``ignore_index``); the first bad one is named
    with its position. Skipped inside ``torch.compile`` (the check needs the host to read a device value: a graph
    break); an id outside the vocabulary then fails in the embedding lookup or the loss, as in torch."""
    if torch.compiler.is_compiling():
        return
    bad = (ids < 0) | (ids >= vocab_size)
    if ignore_index is not None:
        bad &= ids != ignore_index
    if not bool(bad.any()):
        return
    where = tuple(int(i) for i in bad.nonzero()[0])
    count = int(bad.sum())
    allowed = f"[0, vocab_size={vocab_size})" + (f" or {ignore_index} (ignored)" if ignore_index is not None else "")
    raise ValueError(
        f"{name}[{', '.join(map(str, where))}] = {int(ids[where])} is outside the vocabulary: "
        f"{name} must be in {allowed}" + (f" ({count} entries are outside)" if count > 1 else "")
    )


def check_inputs_embeds(inputs_embeds: object, hidden_size: int, dtype: torch.dtype) -> None:
    """``inputs_embeds`` is ``[B, T, hidden_size]`` of the model's floating dtype."""
    if not isinstance(inputs_embeds, Tensor) or inputs_embeds.dim() != 3 or inputs_embeds.shape[-1] != hidden_size:
        raise ValueError(f"inputs_embeds must be [B, T, {hidden_size}] (hidden_size), got {describe(inputs_embeds)}")
    if inputs_embeds.dtype != dtype:
        raise ValueError(
            f"inputs_embeds has dtype {inputs_embeds.dtype}; the model's embeddings are {dtype} (cast "
            "the one to the other first)"
        )


def check_attention_mask(attention_mask: object, batch: int, length: int, past: int) -> None:
    """A 2-D padding mask ``[B, T]``, or ``[B, S + T]`` covering the ``S`` cached tokens too."""
    if attention_mask is None:
        return
    widths = [length] if past == 0 else [length, past + length]
    if (
        isinstance(attention_mask, Tensor)
        and attention_mask.dim() == 2
        and attention_mask.shape[0] == batch
        and attention_mask.shape[1] in widths
    ):
        return
    shapes = " or ".join(f"[{batch}, {width}]" for width in widths)
    cached = f" ({past} cached + {length} current tokens)" if past else ""
    raise ValueError(f"attention_mask must be [B, T] = {shapes}{cached}, got {describe(attention_mask)}")


def check_position_ids(position_ids: object, batch: int, length: int) -> None:
    """``position_ids`` is an integer tensor ``[B, T]`` (or ``[1, T]``, shared by the batch)."""
    if position_ids is None:
        return
    if (
        isinstance(position_ids, Tensor)
        and _integer(position_ids)
        and position_ids.dim() == 2
        and position_ids.shape[0] in (1, batch)
        and position_ids.shape[1] == length
    ):
        return
    raise ValueError(
        f"position_ids must be an integer tensor [B, T] = [{batch}, {length}] (or [1, {length}]), "
        f"got {describe(position_ids)}"
    )


def check_labels(labels: object, shape: tuple[int, int], vocab_size: int, logits_to_keep: int | Tensor) -> None:
    """``labels`` has the input's shape ``[B, T]``; entries are token ids or ``-100`` (ignored)."""
    if not isinstance(labels, Tensor) or not _integer(labels) or tuple(labels.shape) != tuple(shape):
        raise ValueError(f"labels must be an integer tensor of the input's shape {list(shape)}, got {describe(labels)}")
    if not (isinstance(logits_to_keep, int) and logits_to_keep == 0):
        raise ValueError(
            "labels need the logits of every position: logits_to_keep must be 0 with labels, got "
            f"{describe(logits_to_keep)}"
        )
    check_token_ids("labels", labels, vocab_size, ignore_index=IGNORE_INDEX)


def check_logits_to_keep(logits_to_keep: object, length: int | None = None) -> None:
    """An int ``>= 0`` (the last ``n`` positions; 0 = all) or a 1-D integer tensor of positions, each in
    ``[-T, T)`` for an input of ``length`` ``T`` (the range is not checked inside ``torch.compile``: a host read)."""
    if _is_int(logits_to_keep) and logits_to_keep >= 0:
        return
    if not (isinstance(logits_to_keep, Tensor) and logits_to_keep.dim() == 1 and _integer(logits_to_keep)):
        raise ValueError(
            "logits_to_keep must be an int >= 0 (the last n positions, 0 = all) or a 1-D integer tensor "
            f"of positions, got {describe(logits_to_keep)}"
        )
    if length is None or torch.compiler.is_compiling() or logits_to_keep.numel() == 0:
        return
    bad = (logits_to_keep < -length) | (logits_to_keep >= length)
    if bool(bad.any()):
        index = int(bad.nonzero()[0, 0])
        raise ValueError(
            f"logits_to_keep[{index}] = {int(logits_to_keep[index])} is not a position of the input: "
            f"tensor logits_to_keep holds positions in [-{length}, {length}) for T = {length}"
        )


def check_generate_inputs(prompt: object, name: str, attention_mask: object) -> None:
    """The prompt of ``generate``: ``input_ids`` (or ``inputs``) ``[B, T]``, or ``inputs_embeds`` ``[B, T, D]``,
    with ``B >= 1`` and ``T >= 1``; its ``attention_mask`` ``[B, T]`` with at least one real token (non-zero entry)
    in every row (a row of padding only has no last token to continue from)."""
    dims = 3 if name == "inputs_embeds" else 2
    layout = "[B, T, hidden_size]" if dims == 3 else "[B, T] of token ids"
    if not isinstance(prompt, Tensor) or prompt.dim() != dims:
        raise ValueError(f"generate takes {name} as a tensor {layout}, got {describe(prompt)}")
    batch, length = prompt.shape[:2]
    if batch == 0:
        raise ValueError(
            f"generate needs at least one prompt (batch size B >= 1), got {name} of shape {list(prompt.shape)}"
        )
    if length == 0:
        raise ValueError(
            f"generate needs at least one prompt token, got {name} of shape {list(prompt.shape)}; "
            "pass inputs=None to start from bos_token_id"
        )
    if attention_mask is None:
        return
    if not isinstance(attention_mask, Tensor) or tuple(attention_mask.shape) != (batch, length):
        raise ValueError(
            f"attention_mask must have the prompt's shape [B, T] = [{batch}, {length}] ({name}), got "
            f"{describe(attention_mask)}"
        )
    empty = ~(attention_mask != 0).any(dim=1)
    if bool(empty.any()):
        rows = [int(i) for i in empty.nonzero()[:, 0]]
        raise ValueError(
            f"attention_mask row(s) {rows} are all padding (zeros): every prompt needs at least one real "
            "token (a 1 in its mask row)"
        )


def check_dtype(name: str, value: object) -> None:
    """``value`` is ``None``, a ``torch.dtype``, a per-module dict of them, or the name of one (``"float32"``)."""
    if value is None or isinstance(value, (torch.dtype, dict)):
        return
    if isinstance(value, str) and isinstance(getattr(torch, value, None), torch.dtype):
        return
    names = ("float32", "float16", "bfloat16", "float64")
    raise ValueError(f"{name} must be None, a torch.dtype or the name of one such as {names}, got {value!r}")


def describe(value: object) -> str:
    """A tensor as its dtype and shape, anything else as its repr (for error messages)."""
    if isinstance(value, Tensor):
        return f"a {str(value.dtype).removeprefix('torch.')} tensor of shape {list(value.shape)}"
    return repr(value)
