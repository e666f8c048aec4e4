"""probseq.files: a failed write leaves the previous file whole and no temporary behind; a bad output path is a
clear error before any work."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from probseq.files import atomic_write_json, atomic_write_text, check_writable, check_writable_file, save_figure


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


def test_check_writable_creates_the_folder_and_names_out_when_it_cannot(tmp_path):
    assert check_writable(tmp_path / "a" / "b") == tmp_path / "a" / "b" and (tmp_path / "a" / "b").is_dir()
    blocker = tmp_path / "file.txt"
    blocker.write_text("x")
    with pytest.raises(ValueError, match="--out .* exists and is not a folder"):
        check_writable(blocker)
    with pytest.raises(ValueError, match="--out .* is not a writable folder"):
        check_writable(blocker / "sub")
    assert check_writable_file(tmp_path / "c" / "r.json") == tmp_path / "c" / "r.json" and (tmp_path / "c").is_dir()
    with pytest.raises(ValueError, match="is a folder"):
        check_writable_file(tmp_path / "c")
    with pytest.raises(ValueError, match="--out .*r.json: cannot write into its folder .*not a writable folder"):
        check_writable_file(blocker / "sub" / "r.json")


@pytest.mark.parametrize("command", [["bench", "--out"], ["collision", "--out"], ["pretrain", "--config", "tiny", "--out"],
                                     ["distill", "--teacher", "t", "--tokens", "1k", "--out"]])
def test_commands_check_out_before_any_work(tmp_path, monkeypatch, capsys, command):
    from probseq import bench, cli
    from probseq.experiments import collision
    from probseq.train import distill, pretrain

    def no_work(*args, **kwargs):
        raise AssertionError("the run started before --out was checked")

    monkeypatch.setattr(bench, "run_bench", no_work)
    monkeypatch.setattr(collision, "ResultCache", no_work)
    monkeypatch.setattr(pretrain, "pretrain", no_work)
    monkeypatch.setattr(distill, "distill", no_work)
    blocker = tmp_path / "file.txt"
    blocker.write_text("x")
    assert cli.main([*command, str(blocker / "sub" / "out")]) == 2
    assert "not a writable folder" in capsys.readouterr().err


def test_written_files_get_the_umasks_mode_not_mkstemps(tmp_path):
    import os
    import stat

    from probseq.files import atomic_write_text

    before = os.umask(0o027)
    try:
        atomic_write_text(tmp_path / "a.txt", "x")
        os.umask(0o022)
        atomic_write_text(tmp_path / "b.txt", "x")
    finally:
        os.umask(before)
    assert stat.S_IMODE((tmp_path / "a.txt").stat().st_mode) == 0o640
    assert stat.S_IMODE((tmp_path / "b.txt").stat().st_mode) == 0o644
