"""``probseq ruler`` (probseq.experiments.ruler_eval): RULER generation, batched greedy completion, scoring, files,
resume, fla folders and errors — on tiny random models with a tiny tokenizer trained here on generated text."""

from __future__ import annotations

import csv
import json
import math
import re
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

import probseq.models  # noqa: F401  (registers the Auto classes)
from probseq.cli import main
from probseq.data import retrieval_documents, train_tokenizer
from probseq.experiments import ruler_eval
from probseq.experiments.ruler_eval import RulerConfig, mean_ci, run_ruler
from probseq.interop.fla import export_fla
from probseq.models import ProbSeqConfig, ProbSeqForCausalLM
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
    for name in ("summary.csv", "predictions.jsonl", "results.json", "ruler.png"):
        assert (out / name).is_file(), name
    rows = list(csv.DictReader((out / "summary.csv").open()))
    assert [(r["task"], int(r["length"])) for r in rows] == [("niah_single_1", LENGTH), ("fwe", LENGTH), ("vt", LENGTH)]
    for row in rows[:2]:
        assert row["status"] == "ok" and int(row["samples"]) == 3
        assert 0 <= float(row["ci_low"]) <= float(row["score"]) <= float(row["ci_high"]) <= 100
        assert float(row["prompt_tokens"]) <= LENGTH
    assert rows[2]["status"].startswith("skipped:")  # vt's solved example alone needs ~500 tokens
    predictions = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert len(predictions) == 6 and {p["task"] for p in predictions} == {"niah_single_1", "fwe"}
    assert all(isinstance(p["prediction"], str) and p["references"] for p in predictions)
    results = json.loads((out / "results.json").read_text())
    assert results["units"] == [{**r, "length": int(r["length"])} | _numbers(r) for r in rows]
    assert "niah_single_1" in capsys.readouterr().out


def _numbers(row: dict) -> dict:
    numbers = {}
    for key in ("score", "ci_low", "ci_high", "prompt_tokens"):
        numbers[key] = float(row[key]) if row[key] else None
    numbers["samples"] = int(row["samples"])
    return numbers


@pytest.mark.integration
def test_scores_reference_answers_100_and_resumes_per_unit(model_dir, tmp_path, monkeypatch):
    out = tmp_path / "oracle"
    seen = []

    def oracle(model, tokenizer, prompts, max_new_tokens, batch_size, progress=False):
        seen.append(len(prompts))
        from probseq.ruler import generate

        # the reference answers of the prompts being completed, as a perfect model would write them
        task = "niah_single_1" if "special magic" in prompts[0] else "fwe"
        records = generate(task, tokenizer, LENGTH, len(prompts), 42)
        assert [r["input"] + r["answer_prefix"] for r in records] == prompts
        return [" " + ", ".join(r["outputs"]) + "." for r in records], [LENGTH] * len(prompts)

    monkeypatch.setattr(ruler_eval, "complete", oracle)
    results = run_ruler(config(model_dir), out)
    assert [u["score"] for u in results["units"]] == [100.0, 100.0] and seen == [3, 3]
    # a rerun reads every finished unit from the cache: no model is loaded, nothing is generated
    monkeypatch.setattr(ruler_eval, "load_model", lambda *a, **k: pytest.fail("the model was loaded again"))
    again = run_ruler(config(model_dir), out)
    assert again["units"] == results["units"] and seen == [3, 3]
    # so does one with other batches and threads (they change no unit); other samples, seed or dtype are refused
    assert run_ruler(config(model_dir, batch_size=3, num_threads=2), out)["units"] == results["units"]
    for model, change, shown in (
        (model_dir, {"samples": 4}, "samples (3 there, 4 now)"),
        (model_dir, {"seed": 1}, "seed (42 there, 1 now)"),
        (out, {}, "model ("),
    ):
        with pytest.raises(ValueError, match=re.escape(shown) + ".*use another --out"):
            run_ruler(config(model, **change), out)
    # a new length is one more unit; the old ones stay cached
    monkeypatch.undo()
    monkeypatch.setattr(ruler_eval, "complete", oracle)
    with pytest.raises(AssertionError):  # the oracle only knows LENGTH: proves the new unit was computed
        run_ruler(config(model_dir, lengths=(LENGTH, 2 * LENGTH)), out)


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
def test_ruler_compare_tabulates_and_plots_the_three_arms(tmp_path, capsys):
    """scripts/ruler_compare.py: every arm's score per task and length with its interval, the mean over the tasks
    scored at every length by every arm (a skipped unit drops its task from the mean), and each stage's time."""
    import runpy

    fields = ["task", "length", "score", "ci_low", "ci_high", "samples", "prompt_tokens", "status"]
    for offset, arm in enumerate(("teacher", "bayes", "gdn")):
        folder = tmp_path / "ruler" / arm
        folder.mkdir(parents=True)
        with (folder / "summary.csv").open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=fields)
            writer.writeheader()
            for task, length in [("niah_single_1", 512), ("niah_single_1", 1024), ("vt", 512), ("vt", 1024)]:
                skipped = task == "vt" and length == 512 and arm == "bayes"
                writer.writerow(
                    {
                        "task": task,
                        "length": length,
                        "score": 0 if skipped else 10 * offset + length / 512,
                        "ci_low": 0,
                        "ci_high": 50,
                        "samples": 4,
                        "prompt_tokens": length - 10,
                        "status": "needs 600 tokens" if skipped else "ok",
                    }
                )
        (folder / "results.json").write_text(json.dumps({"seconds": 1800.0}))
    (tmp_path / "distill" / "teacher").mkdir(parents=True)
    (tmp_path / "distill" / "teacher" / "train_log.json").write_text(
        json.dumps({"train_seconds": 7200.0, "tokens": 1000})
    )
    (tmp_path / "distill" / "bayes").mkdir(parents=True)
    (tmp_path / "distill" / "bayes" / "train_log.json").write_text(
        json.dumps({"tokens": 500, "stages": [{"train_seconds": 1800.0}, {"train_seconds": 1800.0}]})
    )
    main = runpy.run_path(str(REPO / "scripts" / "ruler_compare.py"))["main"]
    assert main(str(tmp_path)) == 0
    text = (tmp_path / "ruler" / "comparison.md").read_text()
    assert "| niah_single_1 | 1024 | 2.0 [0.0, 50.0] | 12.0 [0.0, 50.0] | 22.0 [0.0, 50.0] |" in text
    assert "| vt | 512 | 1.0 [0.0, 50.0] | needs 600 tokens | 21.0 [0.0, 50.0] |" in text
    assert "| mean of 1 tasks | 512 | 1.0 | 11.0 | 21.0 |" in text  # vt is not scored everywhere: left out
    assert "| pretrain (GDN teacher) | 2.00 | 1,000 |" in text and "| distill, Bayesian arm | 1.00 | 500 |" in text
    assert "| ruler, gdn | 0.50 | |" in text
    assert (tmp_path / "ruler" / "comparison.png").stat().st_size > 10_000
    assert main(str(tmp_path / "empty")) == 1


def test_ruler_compare_pairs_the_bayesian_arm_with_the_baseline_per_prompt(tmp_path):
    """The paired difference Bayesian − GDN baseline: per unit and over all pairs, from predictions.jsonl; samples
    with different references (not the same prompts) are an error."""
    import runpy

    module = runpy.run_path(str(REPO / "scripts" / "ruler_compare.py"))
    scores = {
        "bayes": {("vt", 512): [100, 100, 0, 50], ("vt", 1024): [0, 0]},
        "gdn": {("vt", 512): [0, 100, 0, 50], ("vt", 1024): [100, 0], ("cwe", 512): [100]},
    }
    for arm, units in scores.items():
        (tmp_path / "ruler" / arm).mkdir(parents=True)
        lines = [
            json.dumps({"task": task, "length": length, "index": i, "references": [f"r{i}"], "score": value})
            for (task, length), values in units.items()
            for i, value in enumerate(values)
        ]
        (tmp_path / "ruler" / arm / "predictions.jsonl").write_text("\n".join(lines) + "\n")
    rows = module["paired_difference"](tmp_path)
    by_unit = {(task, length): (mean, low, high, n) for task, length, mean, low, high, n in rows}
    assert set(by_unit) == {("vt", "512"), ("vt", "1024"), ("all", "all")}  # cwe: only one arm scored it
    mean, low, high, n = by_unit[("vt", "512")]
    assert (mean, n) == (25.0, 4) and low < 0 < 25 < high  # differences 100, 0, 0, 0: sd 50, half-width 49
    assert math.isclose(high - mean, 1.96 * 50 / 2)
    assert by_unit[("vt", "1024")][:1] == (-50.0,) and by_unit[("all", "all")][0] == 0.0
    assert by_unit[("all", "all")][3] == 6
    text = module["markdown"]({"bayes": [], "gdn": []}, tmp_path)
    assert "| vt | 512 | +25.0 | [-24.0, +74.0] | 4 |" in text and "| all | all | +0.0 |" in text
    (tmp_path / "ruler" / "gdn" / "predictions.jsonl").write_text(
        json.dumps({"task": "vt", "length": 512, "index": 0, "references": ["other"], "score": 0}) + "\n"
    )
    with pytest.raises(ValueError, match="different samples"):
        module["paired_difference"](tmp_path)


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
