"""Atomic file writes (a reader, a second writer or an interruption never leaves half a file), strict JSON in
and out, checks of what a JSON file holds, and the checks before any work that an output folder is writable and
holds no results of another config (:func:`check_same_config`).

Each writer goes to a temporary file in the target's folder, fsyncs it and renames it over the target
(``os.replace`` is atomic on one filesystem). Used for every result, metric, log and figure that a resumed
or concurrent run may read back.

JSON is strict both ways: :func:`atomic_write_json` refuses NaN and ±Infinity (which ``json.dumps`` would write as
the bare words ``NaN`` / ``Infinity``, not JSON), naming where the value is, so a value that can legitimately be
non-finite is converted to ``None`` (``null``) by its writer (:func:`finite_or_none`); :func:`read_json` refuses
them too, and says which file is not JSON. :func:`json_problem` checks what a parsed file holds against a small
spec (:class:`ListOf`, :class:`MapOf`, dicts of required keys, types), so that a reader can name the file and
what is wrong with it instead of failing later with a ``KeyError`` or ``TypeError``.
"""

from __future__ import annotations

import dataclasses
import io
import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any, Iterable


def _umask() -> int:
    """The process's file-mode creation mask (read by setting it and setting it back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (creating its folder), with the mode a plain ``open`` would give
    (``0o666`` less the umask; ``mkstemp``'s own ``0o600`` would hide results from other users)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    """``obj`` as indented, strict JSON; dataclasses, tensors and paths are converted, anything else unknown is an
    error (``TypeError``) rather than a silently stringified value, and a NaN or ±Infinity anywhere is a
    ``ValueError`` naming where it is (nothing is written): convert such values to ``None`` first."""
    try:
        text = json.dumps(obj, indent=2, default=json_default, allow_nan=False)
    except ValueError:
        where = nonfinite_path(obj)
        if where is None:
            raise
        raise ValueError(
            f"cannot write {path}: {where[0] or 'the value'} is {where[1]!r}, which JSON has no value "
            "for; a value that can be non-finite must be written as None (null)"
        ) from None
    atomic_write_text(path, text + "\n")


def finite_or_none(value: float | None) -> float | None:
    """``value`` as a float, or ``None`` when it is ``None``, NaN or ±Infinity (JSON's ``null``)."""
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def nonfinite_to_none(obj: Any) -> Any:
    """A copy of ``obj`` (dicts, lists, tuples) with every NaN / ±Infinity float replaced by ``None``: for a value
    that can legitimately be non-finite, e.g. a Trainer log's ``grad_norm`` at an fp16 overflow step (which the
    loss scaler skips)."""
    if isinstance(obj, float):
        return finite_or_none(obj)
    if isinstance(obj, dict):
        return {key: nonfinite_to_none(value) for key, value in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [nonfinite_to_none(value) for value in obj]
    return obj


def nonfinite_path(obj: Any, where: str = "") -> tuple[str, float] | None:
    """``(dotted path, value)`` of the first NaN or ±Infinity in ``obj`` (dicts, lists, tuples, and what
    :func:`json_default` converts), or ``None``: ``("units.a.loss", nan)``, ``("x[1]", inf)``."""
    if isinstance(obj, float):
        return None if math.isfinite(obj) else (where, obj)
    if isinstance(obj, dict):
        items = ((f"{where}.{key}" if where else str(key), value) for key, value in obj.items())
    elif isinstance(obj, (list, tuple)):
        items = ((f"{where}[{index}]", value) for index, value in enumerate(obj))
    elif obj is None or isinstance(obj, (str, int)):
        return None
    else:
        try:
            return nonfinite_path(json_default(obj), where)
        except TypeError:
            return None
    for key, value in items:
        found = nonfinite_path(value, key)
        if found is not None:
            return found
    return None


def read_json(path: str | os.PathLike, advice: str = "") -> Any:
    """The content of the JSON file ``path``. A file that is not strict JSON (not UTF-8 text, truncated,
    ``NaN`` / ``Infinity``) is a ``ValueError`` naming the file, what is wrong and ``advice`` (e.g. "delete it to
    recompute"). ``OSError`` (a missing file) is raised as it is."""
    path = Path(path)
    suffix = f"; {advice}" if advice else ""
    try:
        value = json.loads(path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError as error:
        raise ValueError(f"{path} is not JSON text ({error}){suffix}") from None
    except json.JSONDecodeError as error:
        raise ValueError(f"{path} is not valid JSON ({error}){suffix}") from None
    where = nonfinite_path(value)
    if where is not None:
        raise ValueError(f"{path} is not strict JSON: {where[0] or 'the value'} is {json.dumps(where[1])}{suffix}")
    return value


class ListOf:
    """A :func:`json_problem` spec: a list whose every item matches ``item``."""

    def __init__(self, item: Any):
        self.item = item


class MapOf:
    """A :func:`json_problem` spec: a JSON object whose every value matches ``value`` (any keys)."""

    def __init__(self, value: Any):
        self.value = value


#: A :func:`json_problem` spec: a number (``int`` or ``float``; never ``bool``).
NUMBER = (int, float)


def json_problem(value: Any, spec: Any, where: str = "") -> str | None:
    """What is wrong with parsed JSON ``value`` against ``spec``, or ``None`` when it matches.

    ``spec`` is one of: a type (``int``, ``str``, ``dict``, ``type(None)``, …; ``bool`` never counts as a number);
    a tuple of specs (any one of them); a ``dict`` of required keys to specs (a key ending in ``?`` is optional;
    other keys are allowed); :class:`ListOf`; :class:`MapOf`; ``Any`` (anything).

    Returns:
        e.g. ``'metrics.eval.valid_x.accuracy must be a number, got "1" (str)'`` or ``"metrics is missing"``.
    """
    label = where or "the content"
    if spec is Any:
        return None
    if isinstance(spec, tuple):  # any one of the options
        if any(json_problem(value, option, where) is None for option in spec):
            return None
        container = [o for o in spec if isinstance(o, (dict, MapOf, ListOf)) and _same_kind(value, o)]
        if len(spec) == 1 or container:  # the option of the value's kind says what is wrong inside it
            return json_problem(value, container[0] if container else spec[0], where)
        return f"{label} must be {_describe(spec)}, got {_shown(value)}"
    if isinstance(spec, type):
        matches = isinstance(value, spec) and not (isinstance(value, bool) and spec in (int, float))
        return None if matches else f"{label} must be {_describe(spec)}, got {_shown(value)}"
    if isinstance(spec, dict):
        if not isinstance(value, dict):
            return f"{label} must be a JSON object, got {_shown(value)}"
        for key, inner in spec.items():
            name = key.removesuffix("?")
            path = f"{where}.{name}" if where else name
            if name not in value:
                if key.endswith("?"):
                    continue
                return f"{path} is missing"
            problem = json_problem(value[name], inner, path)
            if problem:
                return problem
        return None
    if isinstance(spec, ListOf):
        if not isinstance(value, list):
            return f"{label} must be a list, got {_shown(value)}"
        return next((p for i, item in enumerate(value) if (p := json_problem(item, spec.item, f"{where}[{i}]"))), None)
    if isinstance(spec, MapOf):
        if not isinstance(value, dict):
            return f"{label} must be a JSON object, got {_shown(value)}"
        return next(
            (
                p
                for key, item in value.items()
                if (p := json_problem(item, spec.value, f"{where}.{key}" if where else str(key)))
            ),
            None,
        )
    raise TypeError(f"unsupported spec {spec!r}")


def _same_kind(value: Any, spec: Any) -> bool:
    return isinstance(value, list) if isinstance(spec, ListOf) else isinstance(value, dict)


def _describe(spec: Any) -> str:
    if isinstance(spec, tuple):
        numbers = int in spec and float in spec
        words = ["a number"] * numbers + [_describe(o) for o in spec if not (numbers and o in NUMBER)]
        return " or ".join(dict.fromkeys(words))
    names = {
        int: "an integer",
        float: "a number",
        str: "a string",
        bool: "true or false",
        dict: "a JSON object",
        list: "a list",
        type(None): "null",
    }
    if isinstance(spec, ListOf):
        return "a list"
    if isinstance(spec, (dict, MapOf)):
        return "a JSON object"
    return names.get(spec, getattr(spec, "__name__", str(spec)))


def _shown(value: Any) -> str:
    text = json.dumps(value) if not isinstance(value, float) or math.isfinite(value) else repr(value)
    if len(text) > 60:
        text = text[:57] + "..."
    return f"{text} ({type(value).__name__})" if not isinstance(value, (dict, list)) else text


def save_figure(fig, path: str | os.PathLike, dpi: int = 120) -> None:
    """``fig.savefig`` as PNG, written atomically."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    atomic_write_bytes(path, buffer.getvalue())


def check_writable(out: str | os.PathLike, option: str = "--out") -> Path:
    """Create the folder ``out`` and write a probe file in it: a ``ValueError`` naming ``option`` (the setting
    that gave the folder) if either fails. Called before any work, so that a bad ``--out`` costs seconds, not a
    finished run."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"{option} {out} exists and is not a folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=out):
            pass
    except OSError as error:
        raise ValueError(f"{option} {out} is not a writable folder: {error.strerror or error}") from None
    return out


def check_writable_file(path: str | os.PathLike) -> Path:
    """The file ``path`` can be written (its folder is created): a ``ValueError`` naming ``--out`` otherwise."""
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"--out {path} is a folder; name the file to write")
    try:
        check_writable(path.parent)
    except ValueError as error:
        raise ValueError(f"--out {path}: cannot write into its folder ({error})") from None
    return path


def check_same_config(
    results: str | os.PathLike, config: Any, *, ignore: Iterable[str] = (), option: str = "--out"
) -> None:
    """Refuse to write the results of ``config`` over the results of another config.

    ``results`` is the results file a run writes (``OUT/results.json``; ``bench``'s ``--out`` file), whose
    ``"config"`` holds the config (a dataclass, as :func:`json_default` writes it) that produced it. Absent, or
    written by the same config, it is fine: the run resumes or rewrites its own results. Otherwise a
    ``ValueError`` names the fields that differ, with both values, and says what to do (another ``option``, or
    delete the file). Fields in ``ignore`` do not count (settings that change no result, e.g. ``num_threads``);
    a field missing from the saved config (written before the field existed) counts as the field's default.
    Call it before any work."""
    path = Path(results)
    if not path.exists():
        return
    advice = f"use another {option}, or delete {path} to replace those results"
    saved = read_json(path, advice)
    if not isinstance(saved, dict) or not isinstance(saved.get("config"), dict):
        raise ValueError(f"{path} holds no config to compare with (results of another command?); {advice}")
    ignored = set(ignore)
    old = {key: value for key, value in {**_field_defaults(config), **saved["config"]}.items() if key not in ignored}
    new = {key: value for key, value in _as_json(config).items() if key not in ignored}
    differing = [
        f"{key} ({_shown_value(old.get(key, _ABSENT))} there, {_shown_value(new.get(key, _ABSENT))} now)"
        for key in sorted(set(old) | set(new))
        if old.get(key, _ABSENT) != new.get(key, _ABSENT)
    ]
    if differing:
        raise ValueError(
            f"{path} holds the results of another config, which differs in {'; '.join(differing)}; {advice}"
        )


_ABSENT = object()


def _as_json(value: Any) -> Any:
    """``value`` as it reads back from a JSON file (dataclasses as dicts, tuples as lists)."""
    return json.loads(json.dumps(value, default=json_default))


def _field_defaults(config: Any) -> dict[str, Any]:
    """The default of every field of the dataclass ``config`` that has one, as JSON."""
    defaults = {}
    for field in dataclasses.fields(config):
        if field.default is not dataclasses.MISSING:
            defaults[field.name] = field.default
        elif field.default_factory is not dataclasses.MISSING:
            defaults[field.name] = field.default_factory()
    return _as_json(defaults)


def _shown_value(value: Any) -> str:
    if value is _ABSENT:
        return "absent"
    text = json.dumps(value)
    return text if len(text) <= 80 else text[:77] + "..."


def json_default(obj: Any) -> Any:
    """``json.dumps(default=…)``: dataclasses as dicts, paths as strings, tensors and arrays as lists."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return dataclasses.asdict(obj)
    if isinstance(obj, Path):
        return str(obj)
    if type(obj).__module__.split(".")[0] in ("torch", "numpy") and hasattr(obj, "tolist"):
        return obj.tolist()  # tensors, arrays and numpy scalars
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


__all__ = [
    "NUMBER",
    "ListOf",
    "MapOf",
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_write_text",
    "check_same_config",
    "check_writable",
    "check_writable_file",
    "finite_or_none",
    "json_default",
    "json_problem",
    "nonfinite_path",
    "nonfinite_to_none",
    "read_json",
    "save_figure",
]
