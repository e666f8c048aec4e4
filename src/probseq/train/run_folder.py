"""The run-folder guard: a folder a run writes (checkpoints, weights, logs) belongs to one config.

Every resumable run — :func:`probseq.train.train` (``TrainConfig.output_dir``), pretraining and distillation
(``--out``) — claims its folder with :func:`claim_run_folder` before any work: the folder must be writable, and
if it holds a run already, that run must have been started with the same identity (the fields that decide the
result), so that resuming never continues another run's checkpoints. A new run records its identity there. No
torch here.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from probseq.files import atomic_write_json, check_writable, read_json


def claim_run_folder(folder: str | os.PathLike, record: str, identity: dict[str, Any], option: str) -> Path:
    """Create ``folder`` and check that it is writable, then check it against the run (:func:`check_saved_config`
    on ``folder/record``). ``option`` names the folder's setting in the messages (``output_dir``, ``--out``).
    Returns the folder."""
    folder = check_writable(folder, option)
    check_saved_config(folder / record, identity, option)
    return folder


@contextmanager
def claimed_run_folder(folder: str | os.PathLike, record: str, identity: dict[str, Any], option: str) -> Iterator[Path]:
    """:func:`claim_run_folder` for the length of a run. A run that fails before it leaves anything to resume
    (no ``checkpoint-*`` and no ``final/`` under the folder) gives the folder back: the record it wrote is removed,
    so a corrected config can claim it (an error found only while building the model or the data would otherwise
    lock the folder to the config that failed)."""
    path = Path(folder) / record
    new = not path.exists()
    claimed = claim_run_folder(folder, record, identity, option)
    try:
        yield claimed
    except BaseException:
        if new and not any(claimed.glob("**/checkpoint-*")) and not (claimed / "final").exists():
            path.unlink(missing_ok=True)
        raise


def check_saved_config(path: Path, identity: dict[str, Any], option: str) -> None:
    """Refuse to resume the run whose folder holds ``path`` when it was started with another config (a
    ``ValueError`` naming the fields that differ, or ``path`` when it is not a config); record ``identity`` there
    when it is a new run. ``option`` names the folder's setting in the message (``output_dir``, ``--out``)."""
    folder = path.parent
    identity = json.loads(json.dumps(identity))
    if not path.exists():
        atomic_write_json(path, identity)
        return
    saved = read_json(path, f"delete {folder} to start over")
    if not isinstance(saved, dict):
        raise ValueError(
            f"{path} must hold a run's config (a JSON object), not {type(saved).__name__}; delete "
            f"{folder} to start over"
        )
    if saved != identity:
        changed = sorted(k for k in set(saved) | set(identity) if saved.get(k) != identity.get(k))
        raise ValueError(
            f"{folder} holds a run of a different config (differs in {', '.join(changed)}); use "
            f"another {option}, or delete it to start over"
        )


__all__ = ["check_saved_config", "claim_run_folder", "claimed_run_folder"]
