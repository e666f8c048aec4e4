"""Reading a finished sweep back: its units and an accuracy per split (``probseq.train.sweep``)."""

import json

import pytest

from probseq.train.sweep import split_accuracy, sweep_units


def test_sweep_units_reads_every_finished_unit_and_nothing_before_the_sweep_wrote(tmp_path):
    assert sweep_units(tmp_path) == []
    units = {
        "a": {"learning_rate": 1e-3, "seed": 0, "metrics": {"eval": {"test_x": {"accuracy": 0.5}}}},
        "b": {"learning_rate": 1e-3, "seed": 1, "metrics": {"status": "diverged"}},
    }
    (tmp_path / "results.json").write_text(json.dumps({"units": units}))
    read = sweep_units(tmp_path)
    assert [(u["learning_rate"], u["seed"]) for u in read] == [(1e-3, 0), (1e-3, 1)]
    assert split_accuracy(read[0]["metrics"], "test_x") == 0.5
    assert split_accuracy(read[0]["metrics"], "test_y") is None  # not evaluated there
    assert split_accuracy(read[1]["metrics"], "test_x") is None  # diverged: no accuracy, not 0


def test_a_damaged_results_file_is_an_error_naming_it(tmp_path):
    (tmp_path / "results.json").write_text('{"units": {"a": {"metrics": NaN}}}')
    with pytest.raises(ValueError, match="results.json"):
        sweep_units(tmp_path)
