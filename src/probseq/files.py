"""Atomic file writes (a reader, a second writer or an interruption never leaves half a file), and the check
that an output folder is writable before any work.

Each writer goes to a temporary file in the target's folder, fsyncs it and renames it over the target
(``os.replace`` is atomic on one filesystem). Used for every result, metric, log and figure that a resumed
or concurrent run may read back.
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import tempfile
from pathlib import Path
from typing import Any


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (creating its folder)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
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
    """``obj`` as indented JSON; dataclasses, tensors and paths are converted, anything else unknown is an
    error (``TypeError``) rather than a silently stringified value."""
    atomic_write_text(path, json.dumps(obj, indent=2, default=json_default) + "\n")


def save_figure(fig, path: str | os.PathLike, dpi: int = 120) -> None:
    """``fig.savefig`` as PNG, written atomically."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    atomic_write_bytes(path, buffer.getvalue())


def check_writable(out: str | os.PathLike) -> Path:
    """Create the folder ``out`` and write a probe file in it: a ``ValueError`` naming ``--out`` if either fails.
    Called before any work, so that a bad ``--out`` costs seconds, not a finished run."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} exists and is not a folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=out):
            pass
    except OSError as error:
        raise ValueError(f"--out {out} is not a writable folder: {error.strerror or error}") from None
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


def json_default(obj: Any) -> Any:
    """``json.dumps(default=…)``: dataclasses as dicts, paths as strings, tensors and arrays as lists."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return dataclasses.asdict(obj)
    if isinstance(obj, Path):
        return str(obj)
    if type(obj).__module__.split(".")[0] in ("torch", "numpy") and hasattr(obj, "tolist"):
        return obj.tolist()  # tensors, arrays and numpy scalars
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


__all__ = ["atomic_write_bytes", "atomic_write_json", "atomic_write_text", "check_writable", "check_writable_file",
           "json_default", "save_figure"]
