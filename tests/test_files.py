"""Atomic writes (probseq.files): a failed write leaves the previous file whole and no temporary behind."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from probseq.files import atomic_write_json, atomic_write_text, save_figure


@dataclasses.dataclass
class Point:
    x: int
    where: Path


def test_json_converts_dataclasses_paths_tensors_and_arrays(tmp_path):
    path = tmp_path / "sub" / "out.json"  # the folder is created
    atomic_write_json(path, {"p": Point(1, Path("/a")), "t": torch.tensor([1.5, 2.0]), "n": np.arange(2),
                             "s": np.float32(0.5)})
    assert json.loads(path.read_text()) == {"p": {"x": 1, "where": "/a"}, "t": [1.5, 2.0], "n": [0, 1], "s": 0.5}


def test_a_failed_write_keeps_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "out.json"
    atomic_write_text(path, "old\n")
    with pytest.raises(TypeError, match="not JSON serialisable: object"):
        atomic_write_json(path, {"x": object()})  # fails while encoding: nothing is written

    class Broken:
        def savefig(self, buffer, **kwargs):
            buffer.write(b"\x89PNG half")
            raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        save_figure(Broken(), path)
    assert path.read_text() == "old\n" and [p.name for p in tmp_path.iterdir()] == ["out.json"]

    def no_rename(src, dst):  # interrupted after the temporary file was written, before the rename
        raise KeyboardInterrupt

    monkeypatch.setattr("probseq.files.os.replace", no_rename)
    with pytest.raises(KeyboardInterrupt):
        atomic_write_text(path, "new\n")
    assert path.read_text() == "old\n" and [p.name for p in tmp_path.iterdir()] == ["out.json"]
