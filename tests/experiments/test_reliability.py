"""Reliability of the experiments (probseq.experiments; docs/reliability.md): a sweep records a diverged unit as
diverged and goes on, results files are strict JSON, and a cache file with the wrong content is an error that names the
file — cases found by a review, then problems of the same class found next to them. Tiny configs: the whole file runs
in well under a minute. The reliability of training itself (divergence, checkpoints, run config files) is tested in
tests/train/test_reliability.py."""

from __future__ import annotations

import csv
import dataclasses
import json
from pathlib import Path

import pytest
import torch

from probseq import cli
from probseq.experiments import collision, mqar, recall, reproduce, ruler_eval, ruler_units
from probseq.experiments.common import ResultCache, apply_overrides, write_csv
from probseq.files import atomic_write_json, read_json
from probseq.train import TrainConfig, from_dict, with_overrides
from tests.helpers import quick_preset_argv

pytestmark = pytest.mark.usefixtures("runs_in_tmp")

# one fast mixer, two learning rates (1e10 diverges at its third step: the first updates make the weights huge,
# the next non-finite; norm weights and A_log are not decayed, so 1e6, which diverged through their decay
# p ← p (1 − lr · weight_decay), no longer does in three steps), three steps
MQAR_SET = [
    'mixers=["linear_attention"]',
    "d_models=[16]",
    "learning_rates=[0.01,10000000000.0]",
    "seeds=[0]",
    "vocab_size=64",
    "train_segments=[[16,2]]",
    "train_examples=[16]",
    "test_segments=[[16,2],[32,4]]",
    "test_examples=8",
    "valid_examples=8",
    "max_steps=3",
    "batch_size=8",
    "eval_batch_size=16",
    "save_steps=1",
    "num_threads=1",
]
RECALL_SET = [
    'mixers=["linear_attention"]',
    "d_model=16",
    "learning_rates=[10000000000.0]",
    "seeds=[0]",
    "num_keys=8",
    "num_values=12",
    "train_pairs=[2]",
    "train_gaps=[0]",
    "distractors=1",
    "train_examples=16",
    "eval_pairs=[4]",
    "eval_gaps=[4]",
    "eval_collisions=[2]",
    "eval_key_noise=[0.4]",
    "test_examples=8",
    "valid_examples=8",
    "max_steps=3",
    "batch_size=8",
    "eval_batch_size=16",
    "save_steps=1",
    "num_threads=1",
]
TINY_COLLISION = collision.CollisionConfig(
    key_dim=4,
    value_dim=2,
    trials=16,
    batch_trials=16,
    max_repeats=4,
    rhos=(0.0, 0.5),
    capacity_points=3,
    confident_writes=2,
    colliding_writes=3,
    gammas=(1.0,),
)
# valid JSON, wrong content: what a hand edit, another program or an old format leaves in a cache file
BAD_CONTENTS = {
    "list": [],
    "empty": {},
    "null-metrics": {"metrics": None},
    "metrics-list": {"metrics": []},
    "eval-list": {"metrics": {"eval": []}},
    "accuracy-text": {"metrics": {"eval": {"x": {"accuracy": "1"}}}},
    "status-unknown": {"metrics": {"status": "crashed", "eval": {}}},
}


def strict_json(path: Path):
    """The file's content; a bare NaN / Infinity (not JSON) fails the test."""

    def refuse(constant):
        raise AssertionError(f"{path} holds {constant}, which is not JSON")

    return json.loads(path.read_text(), parse_constant=refuse)


# ------------------------------------------------------------------------------------------ divergence


@pytest.mark.integration
def test_sweep_records_the_diverged_unit_and_goes_on(tmp_path, capsys):
    out = tmp_path / "mqar"
    assert cli.main(quick_preset_argv("mqar", out, MQAR_SET)) == 0
    first = capsys.readouterr()
    assert "linear_attention-d16-lr1e+10-s0: training diverged at step 3 of 3" in first.err
    assert "learning rate 1e+10" in first.err and "1 of 2 units diverged" in first.err
    results = strict_json(out / "results.json")
    diverged = results["units"]["linear_attention-d16-lr1e+10-s0"]["metrics"]
    assert diverged["status"] == "diverged" and diverged["diverged"]["step"] == 3
    assert results["units"]["linear_attention-d16-lr0.01-s0"]["metrics"]["status"] == "ok"
    for point in results["points"]:  # chosen among the runs that did not diverge
        assert point["status"] == "ok" and point["best_lr"] == 0.01 and point["diverged_lrs"] == [1e10]
    rows = list(csv.DictReader((out / "mqar_runs.csv").open()))
    assert [(r["learning_rate"], r["status"]) for r in rows] == [("0.01", "ok"), ("10000000000.0", "diverged")]
    assert rows[1]["diverged_step"] == "3" and rows[1]["test_T32_k4_accuracy"] == ""
    cache = sorted((out / "cache").glob("linear_attention-d16-lr1e+10-s0-*.json"))
    assert len(cache) == 1 and strict_json(cache[0])["metrics"]["status"] == "diverged"
    # a rerun takes both from the cache: the diverged one stays diverged, nothing is trained again
    assert cli.main(quick_preset_argv("mqar", out, MQAR_SET)) == 0
    second = capsys.readouterr()
    assert "2 of 2 units from the cache" in second.out and "training" not in second.err
    assert strict_json(out / "results.json")["points"] == results["points"]


@pytest.mark.integration
def test_a_sweep_where_every_unit_diverged_says_so(tmp_path, capsys):
    out = tmp_path / "mqar"
    assert cli.main(quick_preset_argv("mqar", out, [*MQAR_SET, "learning_rates=[10000000000.0]"])) == 1
    captured = capsys.readouterr()
    assert "every unit diverged" in captured.err
    results = strict_json(out / "results.json")
    assert all(p["status"] == "diverged" and p["accuracy"] is None and p["best_lr"] is None for p in results["points"])
    assert "diverged" in mqar.format_table(results)
    assert (out / "mqar_accuracy_vs_kv.png").stat().st_size > 0

    out = tmp_path / "recall"
    assert cli.main(quick_preset_argv("recall", out, RECALL_SET)) == 1
    assert "every unit diverged" in capsys.readouterr().err
    results = strict_json(out / "results.json")
    assert {p["status"] for p in results["points"]} == {"diverged"}
    assert "| linear_attention | diverged |" in recall.format_table(results)


def test_results_files_are_strict_json(tmp_path):
    with pytest.raises(ValueError, match=r"units\.a\.loss is nan.*None"):
        atomic_write_json(tmp_path / "r.json", {"units": {"a": {"loss": float("nan")}}})
    with pytest.raises(ValueError, match=r"x\[1\] is inf"):
        atomic_write_json(tmp_path / "r.json", {"x": torch.tensor([1.0, float("inf")])})
    assert not (tmp_path / "r.json").exists()


# ------------------------------------------------------------------------------------------ cache contents


def _first_unit_cache(config, out: Path) -> Path:
    unit = config.units()[0]
    return out / "cache" / f"{unit.name}-{unit.config.fingerprint()}.json"


@pytest.mark.parametrize("content", list(BAD_CONTENTS.values()), ids=list(BAD_CONTENTS))
@pytest.mark.parametrize("experiment", ["mqar", "recall"])
def test_sweep_cache_with_wrong_content_is_an_error_naming_the_file(tmp_path, capsys, experiment, content):
    module = mqar if experiment == "mqar" else recall
    overrides = MQAR_SET if experiment == "mqar" else RECALL_SET
    path = _first_unit_cache(apply_overrides(module.PRESETS["quick"], overrides), tmp_path / "out")
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(content))
    assert cli.main(quick_preset_argv(experiment, tmp_path / "out", overrides)) == 2
    err = capsys.readouterr().err
    assert str(path) in err and "delete it to recompute" in err
    assert "training" not in err


@pytest.mark.integration
def test_sweep_cache_missing_what_the_tables_need_is_an_error_naming_it(tmp_path, capsys):
    config = apply_overrides(mqar.PRESETS["quick"], [*MQAR_SET, "learning_rates=[0.01]"])
    out = tmp_path / "out"
    assert cli.main(quick_preset_argv("mqar", out, [*MQAR_SET, "learning_rates=[0.01]"])) == 0
    path = _first_unit_cache(config, out)
    record = json.loads(path.read_text())
    del record["metrics"]["eval"]["valid_T32_k4"]
    path.write_text(json.dumps(record))
    capsys.readouterr()
    assert cli.main(quick_preset_argv("mqar", out, [*MQAR_SET, "learning_rates=[0.01]"])) == 2
    err = capsys.readouterr().err
    assert str(path) in err and "valid_T32_k4" in err
    record["metrics"]["eval"]["valid_T32_k4"] = record["metrics"]["eval"]["valid_T16_k2"]
    del record["metrics"]["state_bytes"]
    path.write_text(json.dumps(record))
    assert cli.main(quick_preset_argv("mqar", out, [*MQAR_SET, "learning_rates=[0.01]"])) == 2
    assert "state_bytes" in capsys.readouterr().err


@pytest.mark.parametrize(
    "content",
    [
        [],
        {},
        {"x": [1.0], "metrics": None},
        {"x": [1.0], "metrics": {"error": {}}},
        {"x": [1.0, 2.0], "metrics": {"error": {"mean": [1.0], "ci95": [0.1], "theory": None, "agreement": None}}},
    ],
    ids=["list", "empty", "null-metrics", "metric-empty", "length"],
)
def test_collision_cache_with_wrong_content_is_an_error_naming_the_file(tmp_path, content):
    cache = ResultCache(tmp_path, TINY_COLLISION)
    first = f"{next(iter(collision.SCENARIOS))}--linear_attention"
    cache.put(first, content)
    with pytest.raises(ValueError, match=f"(?s){first}.json.*delete it to recompute"):
        collision.run_collision(TINY_COLLISION, tmp_path)


def _ruler_model_and_config(tmp_path):
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    config = ruler_eval.RulerConfig(model=str(model), tasks=("fwe",), lengths=(64,), samples=1, progress=False)
    return model, config


@pytest.mark.parametrize(
    "content",
    [
        [],
        {},
        {"task": "fwe", "length": 64, "seconds": 1.0, "predictions": []},
        {"task": "vt", "length": 64, "seconds": 1.0, "predictions": [], "skipped": None},
        {
            "task": "fwe",
            "length": 64,
            "seconds": 1.0,
            "skipped": None,
            "predictions": [
                {
                    "task": "fwe",
                    "length": 64,
                    "index": 1,
                    "prompt_tokens": 60,
                    "references": ["a"],
                    "prediction": "a",
                    "score": 100.0,
                }
            ],
        },
    ],
    ids=["list", "empty", "missing-keys", "other-task", "not-from-sample-0"],
)
def test_ruler_cache_with_wrong_content_is_an_error_naming_the_file(tmp_path, monkeypatch, content):
    model, config = _ruler_model_and_config(tmp_path)
    cache = ResultCache(
        tmp_path / "out", ruler_units.UnitKey(ruler_eval.weights_fingerprint(model), 42, None, "float32")
    )
    cache.put("fwe-64", content)
    monkeypatch.setattr(ruler_eval, "load_model", lambda *a, **k: pytest.fail("recomputed instead of refused"))
    with pytest.raises(ValueError, match="(?s)fwe-64.json.*delete it to recompute"):
        ruler_eval.run_ruler(config, tmp_path / "out")


def _legacy_unit(task: str) -> dict:
    """A complete unit record of the layout before per-sample caching, at length 64, with no predictions."""
    return {
        "task": task,
        "length": 64,
        "status": "ok",
        "score": 1.0,
        "ci_low": 1.0,
        "ci_high": 1.0,
        "samples": 1,
        "prompt_tokens": 60.0,
        "seconds": 1.0,
        "predictions": [],
    }


@pytest.mark.parametrize(
    "content",
    [
        [],
        {},
        {"task": "fwe", "length": 64, "status": "ok", "score": None},
        _legacy_unit("vt"),
        _legacy_unit("fwe"),  # one sample counted, no prediction
    ],
    ids=["list", "empty", "missing-keys", "other-task", "fewer-predictions"],
)
def test_ruler_cache_of_the_old_layout_with_wrong_content_is_an_error_naming_the_file(tmp_path, monkeypatch, content):
    """A folder written before per-sample caching (the sample count in the key; results.json says which) is read,
    and as strictly."""
    model, config = _ruler_model_and_config(tmp_path)
    old_key = ruler_units.LegacyUnitKey(ruler_eval.weights_fingerprint(model), 1, 42, None, "float32")
    ResultCache(tmp_path / "out", old_key).put("fwe-64", content)
    atomic_write_json(tmp_path / "out" / "results.json", {"config": dataclasses.asdict(config)})
    monkeypatch.setattr(ruler_eval, "load_model", lambda *a, **k: pytest.fail("recomputed instead of refused"))
    with pytest.raises(ValueError, match="(?s)fwe-64.json.*delete it to recompute"):
        ruler_eval.run_ruler(config, tmp_path / "out")


def test_reproduce_cache_with_wrong_content_is_an_error_naming_the_file(tmp_path, monkeypatch):
    config = reproduce.ReproduceConfig(preset="quick")
    for content in ([], {}, {"value": None, "seconds": 1.0}, {"value": [{"rel_error": "small"}], "seconds": 1.0}):
        ResultCache(tmp_path, config).put("unification", content)
        monkeypatch.setattr(reproduce, "sections", lambda *a: [("unification", lambda: pytest.fail("recomputed"))])
        with pytest.raises(ValueError, match="(?s)unification.json.*delete it to recompute"):
            reproduce.run_reproduce(config, tmp_path, log=lambda line: None)


# ------------------------------------------------------------------------------------------ the same class, elsewhere


def test_cache_file_that_is_not_text_names_the_file(tmp_path):
    cache = ResultCache(tmp_path, TINY_COLLISION)
    cache.folder.mkdir(parents=True)
    (cache.folder / "unit.json").write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(ValueError, match="unit.json.*delete it to recompute"):
        cache.get("unit")
    (cache.folder / "unit.json").write_text('{"metrics": {"eval": {')  # truncated
    with pytest.raises(ValueError, match="unit.json.*not valid JSON.*delete it to recompute"):
        cache.get("unit")


def test_cached_unit_holding_nan_from_an_undetected_divergence_is_refused(tmp_path, capsys):
    # what a sweep wrote before divergence was detected: accuracy 0, a bare NaN eval loss
    config = apply_overrides(mqar.PRESETS["quick"], [*MQAR_SET, "learning_rates=[0.01]"])
    path = _first_unit_cache(config, tmp_path / "out")
    path.parent.mkdir(parents=True)
    split = {"loss": float("nan"), "accuracy": 0.0, "example_accuracy": 0.0, "all_correct": 0.0}
    metrics = {
        "steps": 3,
        "seconds_per_step": 0.1,
        "train_loss": 4.0,
        "final_train_loss": 0.0,
        "num_parameters": 10,
        "state_bytes": 10,
        "eval": {"valid_T16_k2": split},
    }
    path.write_text(json.dumps({"unit": config.units()[0].name, "metrics": metrics}))
    assert cli.main(quick_preset_argv("mqar", tmp_path / "out", [*MQAR_SET, "learning_rates=[0.01]"])) == 2
    err = capsys.readouterr().err
    assert str(path) in err and "metrics.eval.valid_T16_k2.loss" in err and "NaN" in err


def test_non_finite_override_is_refused():
    with pytest.raises(ValueError, match="warmup must be a finite number"):
        apply_overrides(mqar.PRESETS["quick"], ["warmup=NaN"])
    with pytest.raises(ValueError, match=r"learning_rates\[0\] must be a finite number"):
        apply_overrides(mqar.PRESETS["quick"], ["learning_rates=[Infinity]"])
    with pytest.raises(ValueError, match="noise_std must be a finite number"):
        apply_overrides(TINY_COLLISION, ["noise_std=Infinity"])
    with pytest.raises(ValueError, match="warmup must be a finite number"):
        with_overrides(TrainConfig(), ["warmup=NaN"])
    with pytest.raises(ValueError, match="learning_rate must be a finite number"):
        from_dict(TrainConfig, {"learning_rate": float("inf")})


def test_csv_rows_with_different_columns_keep_every_column(tmp_path):
    write_csv(tmp_path / "runs.csv", [{"unit": "a", "status": "diverged"}, {"unit": "b", "status": "ok", "acc": 0.5}])
    rows = list(csv.DictReader((tmp_path / "runs.csv").open()))
    assert rows == [{"unit": "a", "status": "diverged", "acc": ""}, {"unit": "b", "status": "ok", "acc": "0.5"}]


def test_background_results_with_wrong_content_name_the_file(tmp_path):
    saved = tmp_path / "experiments" / "mqar_cpu" / "results.json"
    saved.parent.mkdir(parents=True)
    for content in ("[]", '{"points": {}}', "{"):
        saved.write_text(content)
        with pytest.raises(ValueError, match="mqar_cpu/results.json"):
            reproduce._learned("mqar", reproduce.ReproduceConfig(preset="cpu"), tmp_path / "out")


def test_read_json_refuses_non_finite_numbers(tmp_path):
    (tmp_path / "a.json").write_text('{"a": [1, NaN]}')
    with pytest.raises(ValueError, match=r"a.json.*a\[1\] is NaN"):
        read_json(tmp_path / "a.json")


def test_pretrain_summary_line_when_no_validation_loss_was_measured(monkeypatch, capsys, tmp_path):
    from types import SimpleNamespace

    from probseq.experiments import distillation as distillation_cli
    from probseq.train import pretrain as pretrain_module

    log = {
        "num_parameters": 10,
        "tokens": 100,
        "steps": 2,
        "seconds_per_step": 0.5,
        "tokens_per_second": 100.0,
        "valid_loss": None,
    }
    monkeypatch.setattr(pretrain_module, "pretrain", lambda config, out: log)
    args = SimpleNamespace(preset="tiny", set=[], out=tmp_path)
    assert distillation_cli.pretrain_main(args) == 0
    assert "valid loss n/a" in capsys.readouterr().out


def test_collision_config_refuses_non_finite_numbers():
    for field, value in (
        ("noise_std", float("nan")),
        ("collision_rho", float("nan")),
        ("rhos", (0.0, float("nan"))),
        ("noise_std", float("inf")),
    ):
        with pytest.raises(ValueError, match=f"{field}.* must be a finite number"):
            dataclasses.replace(TINY_COLLISION, **{field: value})


def test_uncertainty_refuses_a_variance_that_is_not_finite():
    from types import SimpleNamespace

    from probseq.experiments.uncertainty import layer_variances

    variance = torch.ones(1, 4, 2)
    variance[0, 3, 1] = float("nan")

    class Model:  # what layer_variances reads of a ProbSeqForCausalLM
        config = SimpleNamespace(vocab_size=10)
        model = SimpleNamespace(variances=lambda: [variance], layers=[SimpleNamespace(attn=None)])

        def __call__(self, *args, **kwargs):
            return None

    with pytest.raises(ValueError, match="layer 0, head 1 is not finite at token 3 .nan."):
        layer_variances(Model(), [1, 2, 3, 4])


def test_ruler_model_config_with_wrong_content_names_the_file(tmp_path):
    (tmp_path / "config.json").write_text("[]")
    with pytest.raises(ValueError, match="config.json must hold a model config"):
        ruler_eval.load_model(tmp_path)
    (tmp_path / "config.json").write_text('{"model_type": ')
    with pytest.raises(ValueError, match="config.json is not valid JSON"):
        ruler_eval.load_model(tmp_path)


# ------------------------------------------------------------------------------------------ found next to them


@pytest.mark.integration
def test_every_unit_diverged_at_a_single_test_point_still_writes_results_and_exits_1(tmp_path, capsys):
    # one test point inside training: nothing lands on the log axes (matplotlib refused an empty log axis, exit 2)
    out = tmp_path / "mqar"
    assert (
        cli.main(
            quick_preset_argv("mqar", out, [*MQAR_SET, "learning_rates=[10000000000.0]", "test_segments=[[16,2]]"])
        )
        == 1
    )
    captured = capsys.readouterr()
    assert "every unit diverged" in captured.err and "error" not in captured.err
    results = strict_json(out / "results.json")
    assert [(p["status"], p["accuracy"]) for p in results["points"]] == [("diverged", None)]
    assert [r["status"] for r in csv.DictReader((out / "mqar.csv").open())] == ["diverged"]
    assert [r["status"] for r in csv.DictReader((out / "mqar_runs.csv").open())] == ["diverged"]
    assert "| diverged |" in captured.out
    for name in ("mqar_accuracy_vs_kv.png", "mqar_accuracy_vs_state.png"):
        assert (out / name).stat().st_size > 0


@pytest.mark.integration
def test_mqar_plots_with_every_test_point_beyond_training(tmp_path):
    # the state plot showed the largest test point inside training: max() of nothing when there is none
    config = apply_overrides(mqar.PRESETS["quick"], [*MQAR_SET, "learning_rates=[0.01]", "test_segments=[[32,4]]"])
    results = mqar.run_mqar(config, tmp_path, log=lambda line: None)
    assert results["points"][0]["beyond_training"] and results["points"][0]["status"] == "ok"
    assert (tmp_path / "mqar_accuracy_vs_state.png").stat().st_size > 0


@pytest.mark.integration
@pytest.mark.parametrize("change", ["length", "x-values"])
def test_collision_cache_for_other_x_values_is_refused_naming_the_file(tmp_path, change):
    # curves of one length that is not the config's gave an IndexError in format_table; other x values of the
    # right length were shown as if they were this config's
    collision.run_collision(TINY_COLLISION, tmp_path)
    cache = ResultCache(tmp_path, TINY_COLLISION)
    name = "overlapping_keys--linear_attention"
    unit = cache.get(name)
    curve = unit["metrics"]["error"]
    if change == "length":
        unit = {
            "x": [1, 2],
            "metrics": {
                "error": {key: curve[key][:2] for key in ("mean", "ci95", "theory")} | {"agreement": curve["agreement"]}
            },
        }
    else:
        unit["x"] = [0.1, 0.3]  # the config's rhos are (0.0, 0.5)
    cache.put(name, unit)
    with pytest.raises(ValueError, match=f"(?s){name}.json.*x holds.*the config simulates.*delete it to recompute"):
        collision.run_collision(TINY_COLLISION, tmp_path)


OUT_OF_RANGE = [
    ("accuracy", 7.5),
    ("accuracy", -0.1),
    ("all_correct", 1.5),
    ("example_accuracy", 2.0),
    ("loss", -1.0),
    ("steps", -3),
    ("state_bytes", -8),
    ("train_seconds", -1.0),
]


@pytest.mark.integration
@pytest.mark.parametrize("experiment", ["mqar", "recall"])
def test_sweep_cache_with_out_of_range_values_is_refused_naming_file_and_field(tmp_path, capsys, experiment):
    # an accuracy of 7.5 (or a negative count) was read from the cache and shown in the tables
    module = mqar if experiment == "mqar" else recall
    overrides = [*(MQAR_SET if experiment == "mqar" else RECALL_SET), "learning_rates=[0.01]"]
    out = tmp_path / "out"
    assert cli.main(quick_preset_argv(experiment, out, overrides)) == 0
    path = _first_unit_cache(apply_overrides(module.PRESETS["quick"], overrides), out)
    original = path.read_text()
    for field, value in OUT_OF_RANGE:
        record = json.loads(original)
        if field in record["metrics"]:
            record["metrics"][field] = value
            where = f"metrics.{field}"
        else:
            split = next(iter(record["metrics"]["eval"]))
            record["metrics"]["eval"][split][field] = value
            where = f"metrics.eval.{split}.{field}"
        path.write_text(json.dumps(record))
        capsys.readouterr()
        assert cli.main(quick_preset_argv(experiment, out, overrides)) == 2, (field, value)
        err = capsys.readouterr().err
        assert str(path) in err and where in err and repr(value) in err and "delete it to recompute" in err
    path.write_text(original)  # the untouched record is still accepted
    assert cli.main(quick_preset_argv(experiment, out, overrides)) == 0
