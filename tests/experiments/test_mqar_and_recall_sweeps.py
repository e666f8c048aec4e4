"""probseq mqar / probseq recall end to end on toy settings: files, table, cache, resume, errors; and the
sweep summaries (lr chosen on validation data, mean ± 95% CI over seeds)."""

from __future__ import annotations

import dataclasses
import json
import math
import shutil

import pytest

from probseq import cli
from probseq.experiments import mqar, recall
from probseq.experiments.common import apply_overrides
from probseq.train.sweep import Unit, best_by_validation, mean_ci95, run_units, runs_root
from tests.helpers import REPO, quick_preset_argv

pytestmark = pytest.mark.usefixtures("runs_in_tmp")

TINY_MQAR = [
    'mixers=["bayesian","attention"]',
    "d_models=[16]",
    "learning_rates=[0.01,0.03]",
    "seeds=[0,1]",
    "vocab_size=64",
    "train_segments=[[16,2],[32,4]]",
    "train_examples=[16,16]",
    "test_segments=[[16,2],[48,8]]",
    "test_examples=16",
    "valid_examples=8",
    "max_steps=3",
    "batch_size=8",
    "eval_batch_size=16",
    "save_steps=1",
    "num_threads=1",
]
TINY_RECALL = [
    'mixers=["deltanet","mamba2"]',
    "d_model=16",
    "learning_rates=[0.01]",
    "seeds=[0]",
    "num_keys=8",
    "num_values=12",
    "train_pairs=[2]",
    "train_gaps=[0,2]",
    "distractors=1",
    "train_examples=16",
    "eval_pairs=[4]",
    "eval_gaps=[6]",
    "eval_collisions=[2]",
    "eval_key_noise=[0.4]",
    "test_examples=16",
    "valid_examples=8",
    "max_steps=2",
    "batch_size=8",
    "eval_batch_size=16",
    "save_steps=1",
    "num_threads=1",
]


@pytest.mark.integration
def test_mqar_end_to_end_then_every_unit_from_the_cache(tmp_path, capsys):
    out = tmp_path / "mqar"
    assert cli.main(quick_preset_argv("mqar", out, TINY_MQAR)) == 0
    first = capsys.readouterr()
    for name in ("results.json", "mqar.csv", "mqar_runs.csv", "mqar_accuracy_vs_kv.png", "mqar_accuracy_vs_state.png"):
        assert (out / name).stat().st_size > 0, name
    results = json.loads((out / "results.json").read_text())
    assert results["num_units"] == 8 and results["from_cache"] == 0
    assert {(p["mixer"], p["seq_len"], p["num_kv_pairs"]) for p in results["points"]} == {
        (m, t, k) for m in ("bayesian", "attention") for t, k in ((16, 2), (48, 8))
    }
    for point in results["points"]:
        assert point["best_lr"] in (0.01, 0.03) and len(point["accuracies"]) == 2
        assert 0 <= point["accuracy"] <= 1 and point["ci95"] >= 0
        assert point["beyond_training"] == (point["num_kv_pairs"] > 4)
        assert point["state_bytes"] > 0
    attention = next(p for p in results["points"] if p["mixer"] == "attention")
    bayes = next(p for p in results["points"] if p["mixer"] == "bayesian")
    assert attention["state_bytes"] != bayes["state_bytes"]
    assert "| bayesian |" in first.out and "(48, 8)*" in first.out and "0 of 8 units from the cache" in first.out
    assert len((out / "mqar.csv").read_text().strip().splitlines()) == 1 + 4
    header = (out / "mqar_runs.csv").read_text().splitlines()[0].split(",")
    assert {"seconds_per_step", "train_seconds", "final_train_loss", "retention_scale_mean"} <= set(header)
    unit_seconds = [u["metrics"]["train_seconds"] for u in results["units"].values()]
    assert results["train_seconds"] == pytest.approx(sum(unit_seconds)) and min(unit_seconds) > 0
    assert "training took" in first.out
    # finished runs leave no checkpoints behind (their empty lock files, and their final weights for reuse)
    kept = {p.name: sorted(q.name for q in p.iterdir()) for p in (runs_root() / "mqar").iterdir() if p.name != ".locks"}
    assert len(kept) == 8 and all(names == ["final", "probseq_train_config.json"] for names in kept.values())

    assert cli.main(quick_preset_argv("mqar", out, TINY_MQAR)) == 0
    second = capsys.readouterr()
    assert "8 of 8 units from the cache" in second.out
    assert "training" not in second.err
    again = json.loads((out / "results.json").read_text())
    assert again["points"] == results["points"] and again["from_cache"] == 8
    # run settings are not the config: threads, checkpoint interval and evaluation batch change no result
    assert (
        cli.main(quick_preset_argv("mqar", out, [*TINY_MQAR, "num_threads=2", "save_steps=2", "eval_batch_size=8"]))
        == 0
    )
    assert "8 of 8 units from the cache" in capsys.readouterr().out
    rewritten = json.loads((out / "results.json").read_text())
    assert rewritten["points"] == results["points"]

    # another config into the same --out is refused before any work, naming what differs; nothing is replaced
    assert cli.main(quick_preset_argv("mqar", out, [*TINY_MQAR, "max_steps=4", 'mixers=["attention"]'])) == 2
    refused = capsys.readouterr()
    assert "holds the results of another config" in refused.err and "training" not in refused.err
    assert 'max_steps (3 there, 4 now); mixers (["bayesian", "attention"] there, ["attention"] now)' in refused.err
    assert "use another --out, or delete" in refused.err
    assert json.loads((out / "results.json").read_text()) == rewritten


@pytest.mark.integration
def test_recall_end_to_end_then_every_unit_from_the_cache(tmp_path, capsys):
    out = tmp_path / "recall"
    assert cli.main(quick_preset_argv("recall", out, TINY_RECALL)) == 0
    first = capsys.readouterr()
    for name in ("results.json", "recall.csv", "recall_runs.csv", "recall_beyond_training.png"):
        assert (out / name).stat().st_size > 0, name
    results = json.loads((out / "results.json").read_text())
    names = ["inside", "num_pairs=4", "gap=6", "collisions=2", "key_noise=0.4"]
    assert list(results["test_points"]) == names
    assert results["test_points"]["gap=6"]["gap"] == 6 and results["test_points"]["inside"]["gap"] == 2
    assert {(p["mixer"], p["point"]) for p in results["points"]} == {
        (m, n) for m in ("deltanet", "mamba2") for n in names
    }
    assert "| deltanet |" in first.out and "0 of 2 units from the cache" in first.out
    assert cli.main(quick_preset_argv("recall", out, TINY_RECALL)) == 0
    assert "2 of 2 units from the cache" in capsys.readouterr().out
    assert (
        cli.main(quick_preset_argv("recall", out, [*TINY_RECALL, "num_threads=2"])) == 0
    )  # a run setting, not the config
    assert cli.main(quick_preset_argv("recall", out, [*TINY_RECALL, "eval_gaps=[8]"])) == 2
    assert "eval_gaps ([6] there, [8] now)" in capsys.readouterr().err
    assert list(json.loads((out / "results.json").read_text())["test_points"]) == names


@pytest.mark.integration
def test_an_interrupted_unit_resumes_from_its_checkpoint(tmp_path):
    from transformers import TrainerCallback

    from probseq.train import train

    config = dataclasses.replace(
        apply_overrides(mqar.PRESETS["quick"], TINY_MQAR),
        mixers=("attention",),
        learning_rates=(0.01,),
        seeds=(0,),
        max_steps=4,
    )
    unit = config.units()[0]

    class Crash(Exception):
        pass

    class CrashAfterCheckpoint(TrainerCallback):
        def on_save(self, args, state, control, **kwargs):
            if state.global_step == 2:
                raise Crash

    run_dir = runs_root() / "mqar" / f"{unit.name}-{unit.config.fingerprint()}"
    with pytest.raises(Crash):  # what a Ctrl-C during the sweep leaves behind
        train(dataclasses.replace(unit.config, output_dir=str(run_dir)), callbacks=(CrashAfterCheckpoint(),))
    lines = []
    resumed = run_units([unit], "mqar", tmp_path / "out", log=lines.append)
    assert "resuming" in lines[0]
    assert resumed.metrics[unit.name]["resumed_from_step"] == 2
    shutil.rmtree(run_dir)  # the finished run's final/ would be taken as it is (the next test)
    fresh = run_units([Unit(unit.name, unit.config)], "mqar", tmp_path / "fresh", log=lines.append)
    assert fresh.metrics[unit.name]["resumed_from_step"] is None
    for split, metrics in fresh.metrics[unit.name]["eval"].items():
        for key, value in metrics.items():
            assert resumed.metrics[unit.name]["eval"][split][key] == pytest.approx(value, abs=1e-6)


@pytest.mark.integration
def test_a_unit_finished_by_another_sweep_is_taken_from_its_final_folder(tmp_path, monkeypatch):
    """A sweep into another ``out`` holding a unit that has finished (its ``final/`` kept) takes the finished run's
    metrics instead of training it again; a damaged or foreign ``final/metrics.json`` is trained again."""
    import probseq.train.trainer as trainer_module

    config = dataclasses.replace(
        apply_overrides(mqar.PRESETS["quick"], TINY_MQAR),
        mixers=("attention",),
        learning_rates=(0.01,),
        seeds=(0,),
        max_steps=2,
    )
    unit = config.units()[0]
    first = run_units([unit], "mqar", tmp_path / "first", log=lambda line: None).metrics[unit.name]
    final = runs_root() / "mqar" / f"{unit.name}-{unit.config.fingerprint()}" / "final" / "metrics.json"
    assert final.exists()

    def no_training(*args, **kwargs):
        raise AssertionError("trained again")

    with monkeypatch.context() as patch:
        patch.setattr(trainer_module, "train", no_training)
        lines = []
        again = run_units([unit], "mqar", tmp_path / "second", log=lines.append).metrics[unit.name]
    assert again == first and "finished earlier" in lines[0]
    assert (tmp_path / "second" / "cache" / f"{unit.name}-{unit.config.fingerprint()}.json").exists()

    for damage in ("{not json", json.dumps({**first, "fingerprint": "0123456789ab"})):
        final.write_text(damage)
        lines = []
        retrained = run_units([unit], "mqar", tmp_path / f"third{len(damage)}", log=lines.append).metrics[unit.name]
        assert "training it again" in lines[0] and retrained["steps"] == 2
        for split, metrics in first["eval"].items():
            assert retrained["eval"][split] == pytest.approx(metrics, abs=1e-6), split


def test_unwritable_out_is_an_error_before_any_work(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert cli.main(quick_preset_argv("mqar", blocker / "out", TINY_MQAR)) == 2
    assert "not a writable folder" in capsys.readouterr().err
    assert not runs_root().exists()


def test_bad_override_names_the_key(tmp_path, capsys):
    assert cli.main(quick_preset_argv("mqar", tmp_path, ["max_stepz=3"])) == 2
    assert "max_stepz" in capsys.readouterr().err
    assert cli.main(quick_preset_argv("recall", tmp_path, ["max_steps=lots"])) == 2
    assert "max_steps" in capsys.readouterr().err
    with pytest.raises(ValueError, match="train_examples"):
        mqar.MQARConfig(train_examples=(1, 2))
    with pytest.raises(ValueError, match="eval_gaps"):
        recall.RecallExperiment(eval_gaps=(4,))  # not beyond the training gaps


def test_ctrl_c_says_how_to_resume(tmp_path, capsys, monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(mqar, "run_mqar", interrupted)
    assert cli.main(quick_preset_argv("mqar", tmp_path, TINY_MQAR)) == 130
    assert "rerun the same command to resume" in capsys.readouterr().err


def test_learning_rate_is_chosen_on_validation_and_summarised_over_seeds():
    def run(lr, seed, valid, test):
        return {
            "learning_rate": lr,
            "seed": seed,
            "metrics": {"eval": {"valid_p": {"accuracy": valid}, "test_p": {"accuracy": test}}},
        }

    # lr 0.1 has the better test accuracy but the worse validation accuracy: validation decides
    runs = [run(0.01, s, 0.8, t) for s, t in enumerate((0.5, 0.6, 0.7))] + [run(0.1, s, 0.2, 0.99) for s in range(3)]
    best = best_by_validation(runs, "p")
    assert best["best_lr"] == 0.01 and best["valid_accuracy"] == pytest.approx(0.8)
    assert best["accuracy"] == pytest.approx(0.6) and best["accuracies"] == [0.5, 0.6, 0.7]
    assert best["ci95"] == pytest.approx(4.303 * 0.1 / math.sqrt(3), rel=1e-4)  # Student t, 2 degrees of freedom
    assert mean_ci95([0.3]) == (0.3, 0.0)


def test_two_workers_share_a_sweep(tmp_path, monkeypatch):
    """Two workers on one sweep: every unit is trained exactly once, and both end with every unit's metrics
    (a worker that finds a unit locked goes on, then waits for it and reads it from the cache)."""
    import threading
    import time

    from probseq.train import trainer

    config = apply_overrides(mqar.PRESETS["quick"], TINY_MQAR)
    units = config.units()
    trained, guard = [], threading.Lock()

    def fake_train(run_config):  # what train() returns, after long enough for the other worker to arrive
        with guard:
            trained.append(run_config.output_dir)
        time.sleep(0.2)
        return {
            "seconds_per_step": 0.1,
            "train_seconds": 0.2,
            "eval": {"test_x": {"accuracy": len(run_config.output_dir) / 1000}},
            "resumed_from_step": None,
        }

    monkeypatch.setattr(trainer, "train", fake_train)
    results = [None, None]

    def worker(slot):
        results[slot] = run_units(units, "mqar", tmp_path / "out", log=lambda line: None)

    threads = [threading.Thread(target=worker, args=(slot,)) for slot in (0, 1)]
    for thread in threads:
        thread.start()
        time.sleep(0.05)
    for thread in threads:
        thread.join(timeout=60)
    assert sorted(trained) == sorted(set(trained)) and len(trained) == len(units)
    assert all(0 < r.from_cache < len(units) for r in results)  # each trained some, read the others' results
    assert results[0].metrics == results[1].metrics and list(results[0].metrics) == [u.name for u in units]


def test_the_committed_runs_are_still_the_presets_units():
    """A finished run is cached under ``<name>-<fingerprint>``. Any change to a preset or to what a config's
    fingerprint covers (a new TrainConfig field, say) would silently orphan the committed runs and retrain
    them: every committed run must still be a unit of its sweep, and its stored config must hash to its key."""
    from probseq.train.config import TrainConfig, from_dict

    root = REPO / "results"
    sweeps = {
        "mqar_cpu": mqar.PRESETS["cpu"],
        "mqar_cpu_stationary": apply_overrides(mqar.PRESETS["cpu"], ['mixers=["bayesian"]', "retention=stationary"]),
        "mqar_cpu_init1": apply_overrides(mqar.PRESETS["cpu"], ['mixers=["bayesian"]', "retention_init=1.0"]),
        "recall_cpu": recall.PRESETS["cpu"],
    }
    checked = 0
    for folder, config in sweeps.items():
        keys = {f"{unit.name}-{unit.config.fingerprint()}" for unit in config.units()}
        for path in sorted((root / folder / "units").glob("*.json")):
            assert path.stem in keys, f"{path} is no longer a unit of the {folder} sweep"
            assert (
                from_dict(TrainConfig, json.loads(path.read_text())["config"]).fingerprint()
                == path.stem.rsplit("-", 1)[1]
            ), path
            checked += 1
    assert checked > 0


def test_set_overrides_keep_the_unit_keys_of_cached_runs():
    """``--set`` goes through the one override parser (:func:`probseq.train.schema.with_overrides`): the fields it
    names change, the others keep their values exactly, so a resumed sweep finds its cached runs under these keys
    (``probseq recall --preset cpu --set …`` and ``probseq mqar --preset quick --set …`` as cached before)."""
    from probseq.train.sweep import unit_key

    config = apply_overrides(
        recall.PRESETS["cpu"],
        [
            'mixers=["gated_deltanet"]',
            "learning_rates=[0.0003]",
            "seeds=[0]",
            "n_layers=2",
            "loss_weighting=example",
            "num_threads=1",
            "layout=alternating",  # the default, written out: the key stays (the field came after these runs)
            "expand_v=1",  # likewise
            "decay_init_scale=1",  # likewise
        ],
    )
    assert [unit_key(unit) for unit in config.units()] == ["gated_deltanet-lr0.0003-s0-89c3881b8b16"]
    config = apply_overrides(
        mqar.PRESETS["quick"],
        [
            'mixers=["bayesian"]',
            "retention=stationary",
            "retention_init=1",
            "train_segments=[[32,4],[64,8]]",
            "warmup=0",
            "batching=by_segment",
        ],
    )
    assert [unit_key(unit) for unit in config.units()] == [
        "bayesian-d64-lr0.003-s0-072d3629d1c7",
        "bayesian-d64-lr0.01-s0-8bca21fb0880",
    ]


@pytest.mark.parametrize("experiment", [mqar, recall])
def test_set_layout_reaches_every_runs_model(experiment):
    """``--set layout=mixers`` (Zoology's Mamba-2 model: ``n_layers`` Mamba-2 blocks, no conv block) reaches the
    ModelSpec of every run, and gives the runs keys of their own."""
    base = apply_overrides(experiment.PRESETS["cpu"], ['mixers=["mamba2"]', "n_layers=2", "init=zoology"])
    mixers = apply_overrides(base, ["layout=mixers"])
    assert base.layout == "alternating" and mixers.layout == "mixers"
    assert {unit.config.model.layout for unit in mixers.units()} == {"mixers"}
    assert {unit.config.model.layout for unit in base.units()} == {"alternating"}
    keys = [{unit.config.fingerprint() for unit in config.units()} for config in (base, mixers)]
    assert not keys[0] & keys[1]
    with pytest.raises(ValueError, match="layout"):
        apply_overrides(base, ["layout=mamba"])


@pytest.mark.parametrize("experiment", [mqar, recall])
def test_set_expand_v_reaches_every_runs_model(experiment):
    """``--set expand_v=2`` (Zoology's Gated DeltaNet: value dim twice the key dim) reaches the ModelSpec of every
    run, doubles the recurrent state of the built model's mixer, and gives the runs keys of their own."""
    from probseq.train.trainer import build_model

    base = apply_overrides(experiment.PRESETS["cpu"], ['mixers=["gated_deltanet", "linear_attention"]', "n_layers=2"])
    wide = apply_overrides(base, ["expand_v=2"])
    assert {unit.config.model.expand_v for unit in wide.units()} == {2.0}
    assert {unit.config.model.expand_v for unit in base.units()} == {1.0}
    keys = [{unit.config.fingerprint() for unit in config.units()} for config in (base, wide)]
    assert not keys[0] & keys[1]
    for mixer in base.mixers:  # the first run of each mixer, narrow and wide
        value_dims = [
            dict(
                build_model(next(u for u in config.units() if u.config.model.mixer == mixer).config).named_parameters()
            )["layers.1.v_proj.weight"].shape[0]
            for config in (base, wide)
        ]
        assert value_dims == [64, 128], mixer
    with pytest.raises(ValueError, match="expand_v"):
        apply_overrides(base, ["expand_v=0"])


@pytest.mark.parametrize("experiment", [mqar, recall])
def test_set_decay_init_scale_reaches_the_decaying_mixers_runs_only(experiment):
    """``--set decay_init_scale=0.01`` reaches the ModelSpec (and the built model's decay rates) of every run of a
    mixer with a decay rate, which get keys of their own; the other mixers' runs keep theirs (nothing to scale)."""
    import torch

    from probseq.train.trainer import build_model

    mixers = 'mixers=["gated_deltanet", "bayesian", "mamba2", "deltanet", "linear_attention", "attention"]'
    base = apply_overrides(experiment.PRESETS["cpu"], [mixers, "n_layers=2"])
    slow = apply_overrides(base, ["decay_init_scale=0.01"])
    decaying = {"gated_deltanet", "bayesian", "mamba2"}
    for before, after in zip(base.units(), slow.units()):
        assert before.name == after.name
        if before.config.model.mixer in decaying:
            assert after.config.model.decay_init_scale == 0.01
            assert before.config.fingerprint() != after.config.fingerprint()
        else:
            assert after.config == before.config and after.config.model.decay_init_scale == 1.0
    a_logs = [build_model(config.units()[0].config).layers[1].A_log for config in (base, slow)]  # gated_deltanet
    torch.testing.assert_close(a_logs[1].exp(), 0.01 * a_logs[0].exp())
    with pytest.raises(ValueError, match="decay_init_scale"):
        apply_overrides(base, ["decay_init_scale=0"])


@pytest.mark.integration
def test_summarize_units_tabulates_every_committed_run(capsys):
    import runpy

    root = REPO
    units = sorted((root / "results" / "mqar_cpu" / "units").glob("*.json"))
    summarize = runpy.run_path(str(root / "scripts" / "summarize_units.py"))["main"]
    assert summarize(str(root / "results" / "mqar_cpu" / "units")) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| ") and "---" not in line]
    assert len(rows) == 1 + len(units) and rows[0].startswith("| mixer | lr | seed | train loss")
    for record in (json.loads(path.read_text()) for path in units):  # every run's (64, 4) accuracy is in the table
        cell = f"{record['metrics']['eval']['test_T64_k4']['accuracy']:.3f}"
        assert any(f"| {record['config']['seed']} |" in row and cell in row for row in rows[1:])
    assert summarize(str(root / "results")) == 1  # a folder without runs


@pytest.mark.integration
def test_summarize_units_shows_a_diverged_run_as_diverged(tmp_path, capsys):
    """A diverged unit's record (no accuracies) is a row saying so, never a crash or an accuracy of 0."""
    import runpy
    import shutil

    root = REPO
    finished = sorted((root / "results" / "mqar_cpu" / "units").glob("*.json"))[0]
    shutil.copy(finished, tmp_path / finished.name)
    record = json.loads(finished.read_text())
    record["config"]["seed"] = 99
    record["metrics"] = {
        "status": "diverged",
        "fingerprint": record["metrics"]["fingerprint"],
        "steps": 7,
        "diverged": {"step": 7, "message": "loss nan", "last_finite_loss": 4.25},
    }
    (tmp_path / "diverged.json").write_text(json.dumps(record))
    summarize = runpy.run_path(str(root / "scripts" / "summarize_units.py"))["main"]
    assert summarize(str(tmp_path)) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| ") and "---" not in line]
    assert len(rows) == 3
    diverged = next(row for row in rows if "| 99 |" in row)
    assert "diverged at step 7" in diverged and "4.25" in diverged and "0.000" not in diverged


# ------------------------------------------------------------------------------------------ saved runs


def _eval_rows(command: str, run_dir, points: list[str], csv_path, capsys) -> list[dict[str, str]]:
    import csv

    assert cli.main([command, "eval", "--run", str(run_dir), "--points", *points, "--out", str(csv_path)]) == 0, (
        capsys.readouterr().err
    )
    with open(csv_path) as handle:
        return list(csv.DictReader(handle))


@pytest.mark.integration
def test_a_saved_mqar_run_reproduces_its_recorded_test_accuracy_and_scores_new_points(tmp_path, capsys):
    """Every finished run keeps its final weights; ``probseq mqar eval`` scores them with the experiment's test data
    and seeds: at the run's own test points it gives the recorded accuracy and loss exactly, a new point is scored
    on data fixed by the data seed and the point (the same for every mixer of a seed), and the CSV has the sweep's
    point columns and the run's identity."""
    overrides = [o for o in TINY_MQAR if not o.startswith(("learning_rates", "seeds"))] + [
        "learning_rates=[0.03]",
        "seeds=[0]",
        "max_steps=8",
    ]
    assert cli.main(quick_preset_argv("mqar", tmp_path / "out", overrides)) == 0
    units = json.loads((tmp_path / "out" / "results.json").read_text())["units"]
    capsys.readouterr()
    runs = runs_root() / "mqar"
    rows = _eval_rows("mqar", runs, ["16,2", "48,8", "32,8"], tmp_path / "eval.csv", capsys)
    assert len(rows) == 2 * 3
    header = list(rows[0])
    assert {
        "mixer",
        "d_model",
        "seq_len",
        "num_kv_pairs",
        "beyond_training",
        "state_bytes",
        "accuracy",
        "status",
        "learning_rate",
        "seed",
        "retention",
        "run",
        "tested_in_run",
        "recorded_accuracy",
    } <= set(header)
    for row in rows:
        unit = units[row["run"].rsplit("-", 1)[0]]
        assert (row["mixer"], float(row["learning_rate"]), int(row["seed"])) == (
            unit["mixer"],
            unit["learning_rate"],
            unit["seed"],
        )
        assert row["retention"] == ("learned" if row["mixer"] == "bayesian" else "")
        assert int(row["state_bytes"]) == unit["metrics"]["state_bytes"]
        split = f"test_T{row['seq_len']}_k{row['num_kv_pairs']}"
        if (row["seq_len"], row["num_kv_pairs"]) == ("32", "8"):  # a point the runs were not tested at
            assert row["tested_in_run"] == "False" and row["recorded_accuracy"] == ""
            assert row["beyond_training"] == "True" and row["num_examples"] == "16"
            continue
        recorded = unit["metrics"]["eval"][split]
        assert row["tested_in_run"] == "True" and float(row["recorded_accuracy"]) == recorded["accuracy"]
        assert float(row["accuracy"]) == recorded["accuracy"] and float(row["loss"]) == recorded["loss"], row
        assert float(row["all_correct"]) == recorded["all_correct"]
    assert any(float(row["accuracy"]) > 0 for row in rows)  # not a comparison of two untrained models
    new = [row for row in rows if row["tested_in_run"] == "False"]
    assert new[0]["point_seed"] == new[1]["point_seed"] and int(new[0]["point_seed"]) >= 2**31  # the test range
    # one run folder alone gives its rows again
    bayesian = next(p for p in runs.iterdir() if p.name.startswith("bayesian"))
    alone = _eval_rows("mqar", bayesian, ["48,8", "32,8"], tmp_path / "one.csv", capsys)
    assert alone == [row for row in rows if row["run"] == bayesian.name and row["seq_len"] != "16"]


@pytest.mark.integration
def test_a_saved_recall_run_reproduces_its_recorded_test_accuracy(tmp_path, capsys):
    """``probseq recall eval`` names points as the experiment does (inside, knob=value): the run's own test points
    give its recorded accuracy and loss exactly; a new point moves knobs from the run's inside point."""
    assert cli.main(quick_preset_argv("recall", tmp_path / "out", TINY_RECALL)) == 0
    units = json.loads((tmp_path / "out" / "results.json").read_text())["units"]
    capsys.readouterr()
    rows = _eval_rows(
        "recall", runs_root() / "recall", ["inside", "gap=6", "num_pairs=3,gap=4"], tmp_path / "r.csv", capsys
    )
    assert [row["point"] for row in rows] == ["inside", "gap=6", "num_pairs=3,gap=4"] * 2
    for row in rows:
        metrics = units[row["run"].rsplit("-", 1)[0]]["metrics"]
        if row["point"] == "num_pairs=3,gap=4":
            assert row["tested_in_run"] == "False" and (row["num_pairs"], row["gap"]) == ("3", "4")
            assert row["collisions"] == "1" and int(row["seq_len"]) == 2 * (3 + 1 + 1) + 4 + 2 * 3
            continue
        recorded = metrics["eval"][f"test_{row['point']}"]
        assert row["tested_in_run"] == "True"
        assert float(row["accuracy"]) == recorded["accuracy"] and float(row["loss"]) == recorded["loss"], row


@pytest.mark.integration
def test_evaluating_saved_runs_names_what_is_wrong(tmp_path, capsys):
    """A folder without runs, a run without final weights, a run of the other task, a point the run's vocabulary
    cannot hold: a one-line error (exit code 2), before any evaluation."""

    def error(argv: list[str]) -> str:
        assert cli.main(argv) == 2
        return capsys.readouterr().err

    (tmp_path / "empty").mkdir()
    assert "holds no training run" in error(
        ["mqar", "eval", "--run", str(tmp_path / "empty"), "--points", "16,2", "--out", str(tmp_path / "e.csv")]
    )
    assert "does not exist" in error(
        ["mqar", "eval", "--run", str(tmp_path / "nowhere"), "--points", "16,2", "--out", str(tmp_path / "e.csv")]
    )
    overrides = [o for o in TINY_MQAR if not o.startswith(("mixers", "seeds"))] + ['mixers=["attention"]', "seeds=[0]"]
    assert cli.main(quick_preset_argv("mqar", tmp_path / "out", overrides)) == 0
    capsys.readouterr()
    runs = sorted((runs_root() / "mqar").glob("attention-*"))
    assert "vocab_size must be > input_seq_len" in error(
        ["mqar", "eval", "--run", str(runs[0]), "--points", "64,4", "--out", str(tmp_path / "e.csv")]
    )
    assert "is a mqar run, not a recall run" in error(
        ["recall", "eval", "--run", str(runs[0]), "--points", "inside", "--out", str(tmp_path / "e.csv")]
    )
    import shutil

    shutil.rmtree(runs[0] / "final")  # as a run that finished before runs kept their weights
    assert "has no final weights" in error(
        ["mqar", "eval", "--run", str(runs[0]), "--points", "16,2", "--out", str(tmp_path / "e.csv")]
    )
    # under a folder, such a run is skipped (said on stderr); with no run left, an error
    rows = _eval_rows("mqar", runs_root(), ["16,2"], tmp_path / "some.csv", capsys)
    assert [row["run"] for row in rows] == [runs[1].name]
    shutil.rmtree(runs[1] / "final")
    message = error(["mqar", "eval", "--run", str(runs_root()), "--points", "16,2", "--out", str(tmp_path / "e.csv")])
    assert "none of its 2 runs" in message and "no final weights" in message
    assert not (tmp_path / "e.csv").exists()
