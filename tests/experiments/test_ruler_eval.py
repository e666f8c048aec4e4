"""``probseq ruler`` (probseq.experiments.ruler_eval): RULER generation, batched greedy completion, scoring, files,
resume, fla folders and errors — on tiny random models with a tiny tokenizer trained here on generated text."""

from __future__ import annotations

import csv
import dataclasses
import gzip
import json
import re
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

import probseq.models  # noqa: F401  (registers the Auto classes)
from probseq.cli import main
from probseq.data import retrieval_documents, train_tokenizer
from probseq.experiments import ruler_eval, ruler_units
from probseq.experiments.common import ResultCache
from probseq.experiments.ruler_eval import RulerConfig, mean_ci, run_ruler
from probseq.interop.fla import export_fla
from probseq.models import ProbSeqConfig, ProbSeqForCausalLM
from probseq.train.result_cache import config_hash
from tests.helpers import REPO

LENGTH = 640  # room for niah's template with this small vocabulary


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    texts = [text for _, text in retrieval_documents(3, 80_000)]
    texts += [
        "Some special magic numbers are hidden within the following text. Make sure to memorize it. "
        "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again."
    ] * 20
    return train_tokenizer(texts, tmp_path_factory.mktemp("tok") / "tokenizer", vocab_size=640)


def tiny_model(tokenizer, mixer: str = "bayesian") -> ProbSeqForCausalLM:
    torch.manual_seed(0)
    config = ProbSeqConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        num_hidden_layers=2,
        mixer=mixer,
        retention="learned",
        retention_init=0.5,
        num_heads=2,
        head_dim=16,
        expand_v=1.0,
        intermediate_size=48,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    return ProbSeqForCausalLM(config).eval()


@pytest.fixture(scope="module")
def model_dir(tokenizer, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("model")
    tiny_model(tokenizer).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def config(model: Path, **overrides) -> RulerConfig:
    kwargs = dict(
        model=str(model),
        tasks=("niah_single_1", "fwe"),
        lengths=(LENGTH,),
        samples=3,
        batch_size=2,
        max_new_tokens=6,
        num_threads=1,
        progress=False,
    )
    return RulerConfig(**{**kwargs, **overrides})


@pytest.mark.integration
def test_ruler_end_to_end_writes_files_and_scores(model_dir, tmp_path, capsys):
    out = tmp_path / "ruler"
    code = main(
        [
            "ruler",
            "--model",
            str(model_dir),
            "--tasks",
            "niah_single_1,fwe",
            "vt",
            "--lengths",
            str(LENGTH),
            "--samples",
            "3",
            "--batch-size",
            "2",
            "--max-new-tokens",
            "6",
            "--out",
            str(out),
            "--threads",
            "1",
            "--no-progress",
        ]
    )
    assert code == 0
    for name in ("summary.csv", "predictions.jsonl.gz", "results.json", "ruler.png"):
        assert (out / name).is_file(), name
    rows = list(csv.DictReader((out / "summary.csv").open()))
    assert [(r["task"], int(r["length"])) for r in rows] == [("niah_single_1", LENGTH), ("fwe", LENGTH), ("vt", LENGTH)]
    for row in rows[:2]:
        assert row["status"] == "ok" and int(row["samples"]) == 3
        assert 0 <= float(row["ci_low"]) <= float(row["score"]) <= float(row["ci_high"]) <= 100
        assert float(row["prompt_tokens"]) <= LENGTH
    assert rows[2]["status"].startswith("skipped:")  # vt's solved example alone needs ~500 tokens
    predictions = read_predictions(out)
    assert len(predictions) == 6 and {p["task"] for p in predictions} == {"niah_single_1", "fwe"}
    assert all(isinstance(p["prediction"], str) and p["references"] for p in predictions)
    results = json.loads((out / "results.json").read_text())
    assert results["units"] == [{**r, "length": int(r["length"])} | _numbers(r) for r in rows]
    assert "niah_single_1" in capsys.readouterr().out


def read_predictions(out: Path) -> list[dict]:
    return [json.loads(line) for line in gzip.decompress((out / "predictions.jsonl.gz").read_bytes()).splitlines()]


def _numbers(row: dict) -> dict:
    numbers = {}
    for key in ("score", "ci_low", "ci_high", "prompt_tokens"):
        numbers[key] = float(row[key]) if row[key] else None
    numbers["samples"] = int(row["samples"])
    return numbers


class Oracle:
    """A perfect model in place of ``ruler_eval.complete``: the reference answers of the prompts it is given (the
    first 8 samples of niah_single_1 and fwe at LENGTH); ``seen`` holds how many prompts each call completed."""

    def __init__(self):
        self.seen: list[int] = []
        self.answers: dict[str, str] | None = None

    def __call__(self, model, tokenizer, prompts, max_new_tokens, batch_size, progress=False):
        from probseq.ruler import generate

        if self.answers is None:
            records = [r for task in ("niah_single_1", "fwe") for r in generate(task, tokenizer, LENGTH, 8, 42)]
            self.answers = {r["input"] + r["answer_prefix"]: " " + ", ".join(r["outputs"]) + "." for r in records}
        self.seen.append(len(prompts))
        return [self.answers[p] for p in prompts], [LENGTH] * len(prompts)


@pytest.mark.integration
def test_scores_reference_answers_100_and_resumes_per_unit(model_dir, tmp_path, monkeypatch):
    out = tmp_path / "oracle"
    oracle = Oracle()
    monkeypatch.setattr(ruler_eval, "complete", oracle)
    results = run_ruler(config(model_dir), out)
    assert [u["score"] for u in results["units"]] == [100.0, 100.0] and oracle.seen == [3, 3]
    # a rerun reads every finished unit from the cache: no model is loaded, nothing is generated
    monkeypatch.setattr(ruler_eval, "load_model", lambda *a, **k: pytest.fail("the model was loaded again"))
    again = run_ruler(config(model_dir), out)
    assert again["units"] == results["units"] and oracle.seen == [3, 3]
    # so does one with other batches and threads (they change no unit); another seed or model is refused
    assert run_ruler(config(model_dir, batch_size=3, num_threads=2), out)["units"] == results["units"]
    for model, change, shown in (
        (model_dir, {"seed": 1}, "seed (42 there, 1 now)"),
        (out, {}, "model ("),
    ):
        with pytest.raises(ValueError, match=re.escape(shown) + ".*use another --out"):
            run_ruler(config(model, **change), out)
    # a new length is one more unit; the old ones stay cached
    monkeypatch.undo()
    monkeypatch.setattr(ruler_eval, "complete", oracle)
    with pytest.raises(KeyError):  # the oracle only knows LENGTH: proves the new unit was computed
        run_ruler(config(model_dir, lengths=(LENGTH, 2 * LENGTH)), out)


@pytest.mark.integration
def test_more_samples_score_only_the_new_ones_and_fewer_report_the_first(model_dir, tmp_path, monkeypatch):
    """A larger --samples (or --samples-per-task) in the same --out completes only the new samples of each unit,
    keeping the cached ones; a smaller one reports the first samples without loading the model; a cached sample
    whose prompt the generator no longer gives is an error, not a silent mix."""
    out = tmp_path / "topup"
    oracle = Oracle()
    monkeypatch.setattr(ruler_eval, "complete", oracle)
    first = run_ruler(config(model_dir), out)
    before = read_predictions(out)
    grown = run_ruler(config(model_dir, samples=5), out)
    assert oracle.seen == [3, 3, 2, 2]  # two new prompts per unit
    assert [u["samples"] for u in grown["units"]] == [5, 5] and [u["score"] for u in grown["units"]] == [100.0] * 2
    after = read_predictions(out)
    assert [(p["task"], p["index"]) for p in after] == [(t, i) for t in ("niah_single_1", "fwe") for i in range(5)]
    assert [p for p in after if p["index"] < 3] == before  # the cached samples, as they were
    with monkeypatch.context() as patch:
        patch.setattr(ruler_eval, "load_model", lambda *a, **k: pytest.fail("the model was loaded for fewer samples"))
        fewer = run_ruler(config(model_dir, samples=3), out)
        assert fewer["units"] == first["units"] and read_predictions(out) == before
    # per task: niah_single_1 gets 7 (two more prompts), fwe keeps its first 2; the CLI spells it TASK=N
    code = main(
        ["ruler", "--model", str(model_dir), "--tasks", "niah_single_1,fwe", "--lengths", str(LENGTH), "--samples", "2"]
        + ["--samples-per-task", "niah_single_1=7", "--batch-size", "2", "--max-new-tokens", "6", "--out", str(out)]
        + ["--threads", "1", "--no-progress"]
    )
    assert code == 0 and oracle.seen == [3, 3, 2, 2, 2]
    rows = list(csv.DictReader((out / "summary.csv").open()))
    assert [(r["task"], r["samples"]) for r in rows] == [("niah_single_1", "7"), ("fwe", "2")]
    results = json.loads((out / "results.json").read_text())
    assert results["config"]["samples_per_task"] == {"niah_single_1": 7}
    # a cached sample whose prompt changed (here: its references) stops a top-up
    unit_file = next((out / "cache").glob("*/fwe-*.json"))
    unit = json.loads(unit_file.read_text())
    unit["predictions"][0]["references"] = ["something else"]
    unit_file.write_text(json.dumps(unit))
    with pytest.raises(ValueError, match="(?s)cached sample 0 .*prompts changed.*delete it to recompute"):
        run_ruler(config(model_dir, samples=8), out)


@pytest.mark.integration
def test_an_interrupted_unit_resumes_from_its_last_save(model_dir, tmp_path, monkeypatch):
    """A unit was stored only when all its samples were done: an interruption lost all of them (≈ 25 minutes of a
    1,000-sample top-up at 4,096 tokens). It is saved every SAVE_EVERY completions."""
    out, oracle = tmp_path / "interrupted", Oracle()

    def interrupted(*args, **kwargs):
        if len(oracle.seen) == 2:  # the second part of the first unit
            raise KeyboardInterrupt
        return oracle(*args, **kwargs)

    monkeypatch.setattr(ruler_eval, "SAVE_EVERY", 2)
    monkeypatch.setattr(ruler_eval, "complete", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run_ruler(config(model_dir, samples=7), out)
    assert oracle.seen == [2, 2]
    saved = json.loads(next((out / "cache").glob("*/niah_single_1-*.json")).read_text())
    assert [p["index"] for p in saved["predictions"]] == [0, 1, 2, 3]
    monkeypatch.setattr(ruler_eval, "complete", oracle)
    results = run_ruler(config(model_dir, samples=7), out)
    assert oracle.seen == [2, 2, 2, 1, 2, 2, 2, 1]  # the rest of the first unit, then the second
    assert [u["samples"] for u in results["units"]] == [7, 7] and [u["score"] for u in results["units"]] == [100.0] * 2


def test_samples_per_task_is_read_and_checked():
    per_task = ruler_eval.per_task_counts
    assert per_task(None) == {} and per_task(["niah_single_1=300,niah_multikey_2=200", "vt=5"]) == {
        "niah_single_1": 300,
        "niah_multikey_2": 200,
        "vt": 5,
    }
    for bad, message in ((["niah_single_1"], "not TASK=N"), (["vt=x"], "not a count"), (["vt=1", "vt=2"], "twice")):
        with pytest.raises(ValueError, match=message):
            per_task(bad)
    with pytest.raises(ValueError, match="unknown RULER task"):
        RulerConfig(model="m", samples_per_task={"niah": 3})
    with pytest.raises(ValueError, match="count >= 1"):
        RulerConfig(model="m", samples_per_task={"vt": 0})
    assert RulerConfig(model="m", samples=4, samples_per_task={"vt": 9}).samples_for("vt") == 9
    assert RulerConfig(model="m", samples=4, samples_per_task={"vt": 9}).samples_for("cwe") == 4
    # one unit's count (a top-up of one length): TASK@LENGTH=N, before the task's own
    unit = RulerConfig(model="m", samples=4, samples_per_task={"vt": 9, "vt@1024": 30, "cwe@2048": 7})
    assert [unit.samples_for("vt", n) for n in (512, 1024)] == [9, 30]
    assert [unit.samples_for("cwe", n) for n in (1024, 2048)] == [4, 7]
    assert per_task(["vt@1024=30"]) == {"vt@1024": 30}
    for bad in ("vt@x", "vt@0", "niah@512", "vt@"):
        with pytest.raises(ValueError, match="unknown RULER task"):
            RulerConfig(model="m", samples_per_task={bad: 3})


@pytest.mark.integration
@pytest.mark.parametrize("finished", [True, False], ids=["finished", "interrupted"])
def test_a_folder_of_the_old_layout_is_read_and_topped_up(model_dir, tmp_path, monkeypatch, finished):
    """An --out written before per-sample caching (one file per unit under a key with the sample count;
    predictions.jsonl) keeps working: the same count reads every unit without the model (vt's skip too, when
    results.json says the count), a larger one completes only the new samples, and predictions.jsonl.gz replaces
    predictions.jsonl. Interrupted (no results.json yet), the count comes from the unit files."""
    oracle = Oracle()
    monkeypatch.setattr(ruler_eval, "complete", oracle)
    fresh = run_ruler(config(model_dir, tasks=("niah_single_1", "fwe", "vt")), tmp_path / "fresh")
    # the old layout, as the code before per-sample caching wrote it
    old = tmp_path / "old"
    old_key = ruler_units.LegacyUnitKey(ruler_eval.weights_fingerprint(model_dir), 3, 42, 6, "float32")
    new_key = ruler_units.UnitKey(ruler_eval.weights_fingerprint(model_dir), 42, 6, "float32")
    for path in sorted((tmp_path / "fresh" / "cache" / config_hash(new_key)).glob("*.json")):
        unit = json.loads(path.read_text())
        summary = ruler_eval.unit_summary(unit, 3)
        if not finished and summary["status"] != "ok":
            continue  # its skip: rediscovered below
        ResultCache(old, old_key).put(path.stem, summary)
    (old / "predictions.jsonl").write_text("".join(json.dumps(p) + "\n" for p in read_predictions(tmp_path / "fresh")))
    if finished:
        old_config = {k: v for k, v in dataclasses.asdict(config(model_dir)).items() if k != "samples_per_task"}
        (old / "results.json").write_text(json.dumps({"config": old_config, "units": fresh["units"]}))
    seen = len(oracle.seen)
    if finished:
        with monkeypatch.context() as patch:
            patch.setattr(ruler_eval, "load_model", lambda *a, **k: pytest.fail("the model was loaded"))
            again = run_ruler(config(model_dir, tasks=("niah_single_1", "fwe", "vt")), old)
    else:
        again = run_ruler(config(model_dir, tasks=("niah_single_1", "fwe", "vt")), old)
    assert again["units"] == fresh["units"] and len(oracle.seen) == seen
    assert not (old / "predictions.jsonl").exists() and read_predictions(old) == read_predictions(tmp_path / "fresh")
    grown = run_ruler(config(model_dir, tasks=("niah_single_1", "fwe", "vt"), samples=4), old)
    assert oracle.seen[seen:] == [1, 1] and [u["samples"] for u in grown["units"]] == [4, 4, 0]


@pytest.mark.integration
def test_fla_gated_deltanet_folder_is_evaluated_as_is(tokenizer, tmp_path):
    fla = tmp_path / "fla"
    export_fla(tiny_model(tokenizer, mixer="gated_deltanet"), fla)
    tokenizer.save_pretrained(fla)
    model, _, description = ruler_eval.load_model(fla)
    assert "fla Gated DeltaNet" in description
    assert {type(b.attn).__name__ for b in model.model.layers} == {"BayesianLayer"}
    assert {b.attn.retention for b in model.model.layers} == {"reset"}
    results = run_ruler(config(fla, tasks=("niah_single_1",), samples=2), tmp_path / "out")
    assert results["units"][0]["status"] == "ok"


def test_batched_left_padded_greedy_equals_one_by_one(model_dir):
    model, tokenizer, _ = ruler_eval.load_model(model_dir)
    prompts = [
        "One of the special magic numbers for key is: 12345. The special magic number for key is",
        "The grass is green.",
    ]
    batched, counts = ruler_eval.complete(model, tokenizer, prompts, 5, batch_size=2)
    single = [ruler_eval.complete(model, tokenizer, [p], 5, batch_size=1)[0][0] for p in prompts]
    assert batched == single
    assert counts == [len(tokenizer(p)["input_ids"]) for p in prompts]


def test_generation_uses_the_recurrent_cache_even_if_the_config_says_not(model_dir):
    model, tokenizer, _ = ruler_eval.load_model(model_dir)
    model.config.use_cache = False  # what a transformers.Trainer saves
    lengths = []

    def record(module, args, kwargs):
        lengths.append(kwargs["input_ids"].shape[1])

    hook = model.model.register_forward_pre_hook(record, with_kwargs=True)
    try:
        ruler_eval.complete(model, tokenizer, ["The grass is green. The sky is"], 4, batch_size=1)
    finally:
        hook.remove()
    assert lengths[0] > 1 and lengths[1:] == [1, 1, 1]  # prefill once, then one token per step


def test_unwritable_out_and_bad_config_are_errors_before_work(model_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(ruler_eval, "load_model", lambda *a, **k: pytest.fail("work started"))
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(ValueError, match="not a folder"):
        run_ruler(config(model_dir), blocker)
    for bad, message in (
        ({"tasks": ("niah",)}, "--tasks"),
        ({"lengths": (0,)}, "--lengths"),
        ({"samples": 0}, "--samples"),
        ({"max_new_tokens": 0}, "--max-new-tokens"),
    ):
        with pytest.raises(ValueError, match=message):
            config(model_dir, **bad)
    with pytest.raises(ValueError, match="is not a folder"):
        run_ruler(config(tmp_path / "missing"), tmp_path / "o")
    assert main(["ruler", "--model", str(model_dir), "--lengths", "x", "--out", str(tmp_path / "o2")]) == 2


def test_mean_ci():
    assert mean_ci([100.0]) == (100.0, 100.0, 100.0)
    mean, low, high = mean_ci([0.0, 100.0, 100.0, 100.0])
    assert mean == 75.0 and 0.0 <= low < 75.0 < high == 100.0


@pytest.mark.integration
def test_answer_likelihood_scores_reference_against_a_foil(model_dir, tokenizer, tmp_path):
    """scripts/ruler_answer_likelihood.py: log p(answer | prompt) by teacher forcing equals the sum of the model's
    next-token log-probabilities; foils are of the reference's form (multikey: another needle in the same prompt);
    the same model twice gives a paired difference of exactly 0."""
    import runpy

    from probseq.ruler import generate

    module = runpy.run_path(str(REPO / "scripts" / "ruler_answer_likelihood.py"))
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    prompt, answer = "The grass is green. The sky is", " 1234567"
    ids = tokenizer(prompt + answer, return_tensors="pt")["input_ids"]
    start = len(tokenizer(prompt)["input_ids"])
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=ids).logits[0].double(), -1)
    expected = sum(float(logp[t - 1, ids[0, t]]) for t in range(start, ids.shape[1]))
    assert module["answer_logprob"](model, tokenizer, prompt, answer) == pytest.approx(expected, abs=1e-4)

    records = generate("niah_multikey_2", tokenizer, LENGTH, 3, 42)
    for record, foil in zip(records, module["foils"]("niah_multikey_2", records)):
        assert foil != record["outputs"][0] and f"is: {foil}." in record["input"] and len(foil) == 7
    single = generate("niah_single_1", tokenizer, LENGTH, 1, 42)
    assert module["foils"]("niah_single_1", single)[0] != single[0]["outputs"][0]  # one sample: not itself

    out = tmp_path / "likelihood"
    assert (
        module["main"](
            [
                "--models",
                f"bayes={model_dir}",
                f"gdn={model_dir}",
                "--out",
                str(out),
                "--lengths",
                str(LENGTH),
                "--samples",
                "2",
                "--threads",
                "1",
            ]
        )
        == 0
    )
    rows = list(csv.DictReader((out / "answer_likelihood.csv").open()))
    assert [(r["model"], r["task"]) for r in rows] == [
        (m, t) for m in ("bayes", "gdn") for t in ("niah_single_1", "niah_multikey_2")
    ]
    assert all(0.0 <= float(r["reference_preferred"]) <= 1.0 and float(r["logp_reference"]) < 0 for r in rows)
    text = (out / "answer_likelihood.md").read_text()
    assert "| all | all | +0.00 | [+0.00, +0.00] | 4 |" in text


def test_answer_likelihood_multikey_foil_is_the_adjacent_needle(tokenizer):
    """The niah_multikey_2 foil sits next to the reference's needle (before it for even samples, after it for odd
    ones), not at a fixed place such as the prompt's first needle, so the margin does not mix in the depth; the
    niah_single_1 foil of the last sample is the next sample's reference, whatever the count."""
    import runpy

    from probseq.ruler import generate

    module = runpy.run_path(str(REPO / "scripts" / "ruler_answer_likelihood.py"))
    records = generate("niah_multikey_2", tokenizer, LENGTH, 6, 42)
    first_needle_differs = False
    for record, foil in zip(records, module["foils"]("niah_multikey_2", records)):
        values = module["NEEDLE"].findall(record["input"])
        ref = values.index(record["outputs"][0])
        side = -1 if record["index"] % 2 == 0 else 1
        if not 0 <= ref + side < len(values):
            side = -side  # at the haystack's edge: the other side
        assert foil == values[ref + side] != record["outputs"][0]
        first_needle_differs |= foil != next(v for v in values if v != record["outputs"][0])
    assert first_needle_differs
    single = generate("niah_single_1", tokenizer, LENGTH, 3, 42)
    assert module["foils"]("niah_single_1", single)[:2] == [single[1]["outputs"][0], single[2]["outputs"][0]]


@pytest.mark.integration
def test_answer_likelihood_resumes_per_arm_and_sample(model_dir, tokenizer, tmp_path, monkeypatch):
    """Arms discovered from a runs folder (teacher, gdn, bayes*; other folders are not arms); a rerun loads no
    model and computes nothing; a larger per-task count computes only the new samples of that task; a new arm only
    that arm."""
    import runpy
    import shutil

    from probseq.ruler import generate

    module = runpy.run_path(str(REPO / "scripts" / "ruler_answer_likelihood.py"))
    calls = []  # one forward pass per log-likelihood
    load = ruler_eval.load_model

    def counted(*args, **kwargs):
        model, tok, description = load(*args, **kwargs)
        model.register_forward_pre_hook(lambda *_: calls.append(1))
        return model, tok, description

    monkeypatch.setattr(ruler_eval, "load_model", counted)
    runs = tmp_path / "runs"
    shutil.copytree(model_dir, runs / "bayes")
    shutil.copytree(model_dir, runs / "teacher_pilots")  # a model folder, but not an arm
    out = tmp_path / "likelihood"
    argv = ["--runs", str(runs), "--out", str(out), "--lengths", str(LENGTH), "--samples", "2", "--threads", "1"]
    assert module["main"](argv) == 0
    assert len(calls) == 2 * 2 * 2  # 2 tasks × 2 samples × (reference, foil), one arm
    (unit,) = [json.loads(p.read_text()) for p in out.glob("cache/*/niah_single_1-*.json")]
    following = generate("niah_single_1", tokenizer, LENGTH, 3, 42)[2]["outputs"][0]
    assert unit["rows"][1]["foil"] == following  # the last sample's foil: the next sample's reference, no wrap
    rows = list(csv.DictReader((out / "answer_likelihood.csv").open()))
    assert {r["model"] for r in rows} == {"bayes"} and {r["samples"] for r in rows} == {"2"}
    with monkeypatch.context() as patch:
        patch.setattr(ruler_eval, "load_model", lambda *a, **k: pytest.fail("a model was loaded again"))
        assert module["main"](argv) == 0 and len(calls) == 8
    assert module["main"](argv + ["--samples-per-task", "niah_multikey_2=3"]) == 0
    assert len(calls) == 8 + 2  # one new niah_multikey_2 sample
    rows = list(csv.DictReader((out / "answer_likelihood.csv").open()))
    assert [(r["task"], r["samples"]) for r in rows] == [("niah_single_1", "2"), ("niah_multikey_2", "3")]
    gdn = runs / "gdn"
    tiny_model(tokenizer, mixer="gated_deltanet").save_pretrained(gdn)  # other weights: another cache key
    tokenizer.save_pretrained(gdn)
    assert module["main"](argv + ["--samples-per-task", "niah_multikey_2=3"]) == 0
    assert len(calls) == 10 + 2 * (2 + 3)  # the new arm only
    text = (out / "answer_likelihood.md").read_text()
    assert "Margin of bayes − margin of gdn" in text and "teacher_pilots" not in text


def test_a_cached_sample_of_another_prompt_with_the_same_references_is_refused():
    """The cache's check compared references only: another tokenizer's prompt with the same needle passed."""
    from probseq.experiments.ruler_units import check_same_samples, prompt_sha

    record = {"index": 0, "input": "haystack A", "answer_prefix": " Answer:", "outputs": ["1234567"]}
    cached = [{"references": ["1234567"], "prompt_sha": prompt_sha(record)}]
    check_same_samples(cached, [record], lambda row: row["references"], "the cache")
    other = {**record, "input": "haystack B"}
    check_same_samples([{"references": ["1234567"]}], [other], lambda row: row["references"], "an older cache")
    with pytest.raises(ValueError, match="was another prompt"):
        check_same_samples(cached, [{**record, "input": "haystack B"}], lambda row: row["references"], "the cache")
