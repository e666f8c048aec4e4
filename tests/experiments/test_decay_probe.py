"""scripts/decay_probe.py: the per-head decay of a saved MQAR run's Gated-DeltaNet-family mixers, checked on a run
whose decay is known in closed form (the decay's input projection zeroed: ``g = −exp(A_log) · softplus(dt_bias)``
at every token)."""

from __future__ import annotations

import csv
import json
import math
import runpy

import pytest
import torch

from probseq.experiments import mqar
from probseq.experiments.common import apply_overrides
from probseq.train.trainer import build_model
from tests.helpers import REPO

probe_main = runpy.run_path(str(REPO / "scripts" / "decay_probe.py"))["main"]
TINY = [
    'mixers=["gated_deltanet", "attention"]',
    "d_models=[16]",
    "learning_rates=[0.01]",
    "seeds=[3]",
    "vocab_size=64",
    "train_segments=[[16,2]]",
    "train_examples=[16]",
    "test_segments=[[16,2]]",
    "n_layers=2",
    "batch_size=8",
]


def save_run(folder, config, model) -> None:
    """A run folder as :func:`probseq.train.trainer.save_final` leaves it (weights, model config, train config)."""
    model.save_pretrained(folder / "final")
    (folder / "final" / "train_config.json").write_text(json.dumps(config.to_dict()))


def test_decay_probe_reports_the_closed_form_decay_of_each_head(tmp_path, capsys):
    units = apply_overrides(mqar.PRESETS["quick"], TINY).units()
    gdn = next(unit for unit in units if unit.config.model.mixer == "gated_deltanet")
    model = build_model(gdn.config)
    mixer = model.layers[1]
    with torch.no_grad():  # head 0 keeps half per token (α = ½), head 1 never decays (A → 0)
        mixer.a_proj.weight.zero_()
        mixer.dt_bias.copy_(torch.tensor([math.log(math.e - 1), 0.0]))  # softplus: 1, ln 2
        mixer.A_log.copy_(torch.tensor([math.log(math.log(2)), -80.0]))
    save_run(tmp_path / "runs" / "gdn", gdn.config, model)
    attention = next(unit for unit in units if unit.config.model.mixer == "attention")
    save_run(tmp_path / "runs" / "attention", attention.config, build_model(attention.config))

    assert (
        probe_main(
            ["--run", str(tmp_path / "runs"), "--segment", "16", "2", "--examples", "4", "--out", str(tmp_path / "out")]
        )
        == 0
    )
    assert "attention has no Gated-DeltaNet-family mixer" in capsys.readouterr().err
    rows = list(csv.DictReader((tmp_path / "out" / "decay.csv").open()))
    trained = [row for row in rows if row["weights"] == "trained"]
    assert [(row["run"], row["layer"], row["head"]) for row in trained] == [
        ("gdn", "layers.1", "0"),
        ("gdn", "layers.1", "1"),
    ]
    half, keep = trained
    assert float(half["median_decay"]) == pytest.approx(0.5) and float(half["half_life"]) == pytest.approx(1.0)
    assert float(half["kept_over_segment"]) == pytest.approx(0.5**16)
    assert float(half["short_share"]) == 0.0  # α = ½ is not below ½
    assert float(keep["median_decay"]) == pytest.approx(1.0) and float(keep["half_life"]) > 1e30
    assert float(keep["kept_over_segment"]) == pytest.approx(1.0)
    # step 0: the config's own initial weights, not the saved ones
    init = [row for row in rows if row["weights"] == "init"]
    assert len(init) == 2 and all(0 < float(row["median_decay"]) < 1 for row in init)


def test_decay_probe_names_a_folder_without_runs(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert probe_main(["--run", str(tmp_path / "empty"), "--out", str(tmp_path / "out")]) == 2
    assert "holds no training run" in capsys.readouterr().err
