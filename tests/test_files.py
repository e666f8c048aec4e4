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
    atomic_write_json(
        path, {"p": Point(1, Path("/a")), "t": torch.tensor([1.5, 2.0]), "n": np.arange(2), "s": np.float32(0.5)}
    )
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


@pytest.mark.parametrize(
    "command",
    [
        ["bench", "--out"],
        ["collision", "--out"],
        ["pretrain", "--preset", "tiny", "--out"],
        ["distill", "--teacher", "t", "--tokens", "1k", "--out"],
    ],
)
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


@dataclasses.dataclass(frozen=True)
class Settings:
    steps: int = 3
    rates: tuple[float, ...] = (0.1, 0.2)
    threads: int | None = None
    added_later: str = "default"


def test_same_config_check_passes_a_new_folder_and_the_same_config(tmp_path):
    from probseq.files import check_same_config

    results = tmp_path / "results.json"
    check_same_config(results, Settings())  # nothing there yet
    atomic_write_json(results, {"config": Settings(), "accuracy": 0.5})
    check_same_config(results, Settings())  # tuples written as lists compare equal
    check_same_config(results, Settings(threads=2), ignore=("threads",))


def test_same_config_check_refuses_another_config_naming_fields_values_and_the_way_out(tmp_path):
    from probseq.files import check_same_config

    results = tmp_path / "out" / "results.json"
    atomic_write_json(results, {"config": Settings(), "accuracy": 0.5})
    with pytest.raises(ValueError) as refused:
        check_same_config(results, Settings(steps=4, rates=(0.1,)))
    message = str(refused.value)
    assert f"{results} holds the results of another config" in message
    assert "rates ([0.1, 0.2] there, [0.1] now); steps (3 there, 4 now)" in message
    assert f"use another --out, or delete {results} to replace those results" in message
    with pytest.raises(ValueError, match="threads"):  # counts unless ignored
        check_same_config(results, Settings(threads=2))
    assert json.loads(results.read_text())["accuracy"] == 0.5  # nothing replaced


def test_same_config_check_reads_a_field_missing_from_old_results_as_its_default(tmp_path):
    from probseq.files import check_same_config

    results = tmp_path / "results.json"
    old = dataclasses.asdict(Settings())
    del old["added_later"]  # results written before the field existed
    atomic_write_json(results, {"config": old})
    check_same_config(results, Settings())
    with pytest.raises(ValueError, match=r'added_later \("default" there, "new" now\)'):
        check_same_config(results, Settings(added_later="new"))
    atomic_write_json(results, {"config": {**old, "removed": 1}})
    with pytest.raises(ValueError, match=r"removed \(1 there, absent now\)"):
        check_same_config(results, Settings())


@pytest.mark.parametrize("content", ['{"accuracy": 1}', "[1, 2]", '{"config": "quick"}', "{not json"])
def test_same_config_check_refuses_a_file_without_a_config(tmp_path, content):
    from probseq.files import check_same_config

    results = tmp_path / "results.json"
    results.write_text(content)
    with pytest.raises(ValueError, match=f"{results}.*(holds no config|not valid JSON).*delete {results}"):
        check_same_config(results, Settings())


@pytest.mark.parametrize(
    "command",
    [
        ["bench"],
        ["collision"],
        ["mqar"],
        ["recall"],
        ["reproduce"],
        ["uncertainty", "--text", "abc"],
        ["ruler", "--model", "m"],
    ],
)
def test_commands_refuse_an_out_with_results_of_another_config_before_any_work(tmp_path, monkeypatch, capsys, command):
    from probseq import bench, cli
    from probseq.experiments import collision, reproduce, ruler_eval, training_sweep, uncertainty

    def no_work(*args, **kwargs):
        raise AssertionError("the run started before the results in --out were checked")

    for module, name in (
        (bench, "run_bench"),
        (collision, "ResultCache"),
        (training_sweep, "run_units"),
        (reproduce, "sections"),
        (uncertainty, "tokenize"),
        (ruler_eval, "ResultCache"),
        (ruler_eval, "load_model"),
    ):
        monkeypatch.setattr(module, name, no_work)
    results = tmp_path / "bench.json" if command == ["bench"] else tmp_path / "out" / "results.json"
    atomic_write_json(results, {"config": {"a_field_of_another_command": 1}})
    out = results if command == ["bench"] else results.parent
    assert cli.main([*command, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert (
        f"{results} holds the results of another config, which differs in a_field_of_another_command (1 there, "
        "absent now)"
        in err
        and "use another --out" in err
    )
    assert json.loads(results.read_text()) == {"config": {"a_field_of_another_command": 1}}
