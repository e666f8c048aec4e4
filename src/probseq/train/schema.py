"""Typed dataclass configs: check fields against their annotations, build from dicts, apply ``key=value``
overrides — for the training configs and the experiment configs (``--set``) alike.

Supported annotations: ``int``, ``float`` (an int is accepted), ``str``, ``bool``, ``Literal[...]``,
``X | None``, ``tuple[X, ...]``, nested dataclasses, and a union of dataclasses told apart by their
``kind`` field. A float must be finite (``NaN`` and ``Infinity`` are JSON words an override can carry). Errors
are ``ValueError`` naming the key by its dotted path (``model.d_model``, ``data.train[0].seq_len``). No torch
here.
"""

from __future__ import annotations

import dataclasses
import json
import math
import types
import typing
from typing import Any, Literal, NamedTuple


def positive(config: Any, *names: str) -> None:
    """Refuse a field of ``names`` that is not > 0."""
    for name in names:
        value = getattr(config, name)
        if not value > 0:
            raise ValueError(f"{name} must be > 0, got {value!r}")


def non_negative(config: Any, *names: str) -> None:
    """Refuse a field of ``names`` that is < 0."""
    for name in names:
        value = getattr(config, name)
        if value < 0:
            raise ValueError(f"{name} must be >= 0, got {value!r}")


def check_seeds(config: Any, *names: str) -> None:
    """Refuse a seed field of ``names`` outside numpy's ``[0, 2**32)`` (``None`` passes): it would fail only when
    the run seeds its generators, with numpy's message, after the run folder was claimed."""
    for name in names:
        value = getattr(config, name)
        if value is not None and not 0 <= value < 2**32:
            raise ValueError(f"{name} must be in [0, 2**32), got {value!r}")


def check_warmup(warmup: float, max_steps: int | None) -> None:
    """``warmup`` is a fraction of the steps (``< 1``) or a whole number of steps, at most ``max_steps``:
    transformers would cut ``1.5`` to one step, and a warmup past the last step never reaches the lr."""
    if warmup >= 1 and warmup != int(warmup):
        raise ValueError(f"warmup must be a fraction of the steps (< 1) or a whole number of steps, got {warmup!r}")
    if warmup >= 1 and max_steps is not None and warmup > max_steps:
        raise ValueError(f"warmup of {int(warmup)} steps is longer than the run (max_steps={max_steps})")


def check_optimizer_run(config: Any) -> None:
    """What every training config (:class:`~probseq.train.TrainConfig`, the language-model runs) refuses of
    AdamW's betas and the run's threads: a beta ≥ 1, a thread count < 1 (``None``: torch's own)."""
    if not (config.adam_beta1 < 1 and config.adam_beta2 < 1):
        raise ValueError(f"adam_beta1 and adam_beta2 must be < 1, got {config.adam_beta1}, {config.adam_beta2}")
    if config.num_threads is not None and config.num_threads < 1:
        raise ValueError(f"num_threads must be >= 1 or None, got {config.num_threads}")


def check_fields(config: Any) -> None:
    """Check every field of a dataclass instance against its annotation (no conversion)."""
    hints = typing.get_type_hints(type(config))
    for f in dataclasses.fields(config):
        _check(f.name, getattr(config, f.name), hints[f.name], convert=False)


def from_dict(cls: type, data: Any, path: str = "") -> Any:
    """Build the dataclass ``cls`` from ``data`` (a dict; nested dicts for nested dataclasses, lists for
    tuples). Ints are accepted for floats. Unknown keys, missing required keys and wrong types are a
    ``ValueError`` naming the key's dotted path."""
    if isinstance(data, cls):
        return data
    if not isinstance(data, dict):
        raise ValueError(f"{path or cls.__name__} must be a mapping of {cls.__name__} fields, got {data!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ValueError(
            f"unknown config key {_join(path, unknown[0])!r}; known keys of {cls.__name__}: {', '.join(fields)}"
        )
    hints = typing.get_type_hints(cls)
    values = {name: _check(_join(path, name), value, hints[name], convert=True) for name, value in data.items()}
    try:
        return cls(**values)
    except TypeError as error:  # a required field is missing
        raise ValueError(f"{path or cls.__name__}: {error}") from None
    except ValueError as error:
        message = str(error)
        raise ValueError(f"{path}: {message}" if path and not message.startswith(path) else message) from None


def with_overrides(config: Any, overrides: list[str] | tuple[str, ...]) -> Any:
    """``config`` with ``key=value`` overrides: the one override parser of the project (``--set`` of every
    experiment command, the training configs of :mod:`probseq.train`).

    Keys are field names, dotted for a nested dataclass (``model.d_model=128``); values are JSON
    (``learning_rate=3e-3``, ``rhos=[0.1,0.5]``, ``data.train=[{"seq_len": 64, "num_kv_pairs": 4,
    "num_examples": 1000}]``; a bare word is a string). Each value is checked against its field's annotation and
    converted as :func:`from_dict` converts (an int for a float, a list for a tuple, a dict for a dataclass); the
    fields not named keep their values exactly, so a config's hash changes only by what is overridden. The
    overrides are applied together (later ones win), then each changed dataclass is rebuilt once with
    :func:`dataclasses.replace`, so its ``__post_init__`` checks see all of them. An unknown key, a wrong type or
    a number that is not finite (JSON's ``NaN``, ``Infinity``) is a ``ValueError`` naming the key."""
    edit = _Edit(config, {})
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"override {item!r} must look like key=value")
        key, raw = item.split("=", 1)
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        _record(edit, key.split("."), value, "")
    return _build(edit, "")


class _Edit(NamedTuple):
    """Overrides of one dataclass instance: ``changes`` maps a field to its new value or to an :class:`_Edit`
    of the dataclass it holds."""

    base: Any
    changes: dict[str, Any]


def _record(edit: _Edit, parts: list[str], value: Any, path: str) -> None:
    """Record ``value`` (checked) for the field at ``parts`` (a dotted key, split) of ``edit.base``."""
    node, name = edit.base, parts[0]
    key = _join(path, name)
    fields = {f.name for f in dataclasses.fields(node)} if dataclasses.is_dataclass(node) else set()
    if name not in fields:
        known = f"; known keys{' of ' + path if path else ''}: {', '.join(sorted(fields))}" if fields else ""
        raise ValueError(f"unknown config key {key!r}{known}")
    if len(parts) == 1:
        edit.changes[name] = _check(key, value, typing.get_type_hints(type(node))[name], convert=True)
        return
    inner = edit.changes.get(name)
    if not isinstance(inner, _Edit):  # the field's current value (or the one an earlier override gave it)
        inner = _Edit(edit.changes[name] if name in edit.changes else getattr(node, name), {})
        edit.changes[name] = inner
    _record(inner, parts[1:], value, key)


def _build(edit: _Edit, path: str) -> Any:
    """``edit.base`` with its changes (nested ones first), checked by its ``__post_init__``."""
    changes = {
        name: _build(value, _join(path, name)) if isinstance(value, _Edit) else value
        for name, value in edit.changes.items()
    }
    try:
        return dataclasses.replace(edit.base, **changes)
    except ValueError as error:
        message = str(error)
        raise ValueError(f"{path}: {message}" if path and not message.startswith(path) else message) from None


def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


def _check(key: str, value: Any, hint: Any, convert: bool) -> Any:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        classes = [a for a in options if dataclasses.is_dataclass(a)]
        if classes and len(classes) == len(options):
            return _check_tagged(key, value, classes, convert)
        if len(options) == 1:
            return _check(key, value, options[0], convert)
        raise TypeError(f"unsupported annotation {hint} for {key}")
    if origin is Literal:
        if isinstance(value, bool) or value not in args:
            raise ValueError(f"{key} must be one of {args}, got {value!r}")
        return value
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"{key} must be a list, got {value!r} ({type(value).__name__})")
        inner = args[:-1] if len(args) == 2 and args[1] is Ellipsis else args
        if len(inner) != 1 and len(inner) != len(value):
            raise ValueError(f"{key} must have {len(inner)} items, got {len(value)}")
        items = [
            _check(f"{key}[{i}]", v, inner[0] if len(inner) == 1 else inner[i], convert) for i, v in enumerate(value)
        ]
        return tuple(items)
    if dataclasses.is_dataclass(hint):
        if isinstance(value, hint):
            return value
        if convert:
            return from_dict(hint, value, key)
        raise ValueError(f"{key} must be a {hint.__name__}, got {value!r}")
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"{key} must be a float, got {value!r} ({type(value).__name__})")
        if not math.isfinite(value):  # JSON's NaN / Infinity, or float("nan")
            raise ValueError(f"{key} must be a finite number, got {value!r}")
        return float(value) if convert else value
    if hint in (int, str, bool):
        if not isinstance(value, hint) or (hint is int and isinstance(value, bool)):
            raise ValueError(f"{key} must be {hint.__name__}, got {value!r} ({type(value).__name__})")
        return value
    if hint is Any:
        return value
    raise TypeError(f"unsupported annotation {hint} for {key}")


def _check_tagged(key: str, value: Any, classes: list[type], convert: bool) -> Any:
    """One of several dataclasses, chosen by their ``kind`` field."""
    if any(isinstance(value, c) for c in classes):
        return value
    kinds = {c.__dataclass_fields__["kind"].default: c for c in classes}
    if not convert or not isinstance(value, dict):
        raise ValueError(f"{key} must be one of {', '.join(c.__name__ for c in classes)}, got {value!r}")
    kind = value.get("kind")
    if kind not in kinds:
        raise ValueError(f"{key}.kind must be one of {tuple(kinds)}, got {kind!r}")
    return from_dict(kinds[kind], value, key)
