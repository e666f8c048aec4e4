"""``probseq uncertainty`` end to end on tiny models: files written, the CSV's shape, the plot title, skipped
layers, tokenizers, and errors raised before any work."""

from __future__ import annotations

import csv
import json

import pytest
import torch
from PIL import Image

from probseq.cli import main
from probseq.experiments import uncertainty
from probseq.models import ProbSeqConfig, ProbSeqForCausalLM

TEXT = "The cat sat; the cät sat."  # 25 characters, 26 UTF-8 bytes (ä is two)


pytestmark = pytest.mark.usefixtures("one_thread")


def read_outputs(out):
    with open(out / "variance.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    results = json.loads((out / "results.json").read_text())
    title = Image.open(out / "variance.png").text["Title"]
    return rows, results, title


def value_columns(rows):
    return [name for name in rows[0] if name not in ("position", "token")]


def tiny_saved_model(folder, **overrides):
    kwargs = dict(
        vocab_size=300,
        hidden_size=32,
        num_hidden_layers=2,
        num_heads=2,
        head_dim=8,
        expand_v=1.0,
        intermediate_size=48,
        retention_init=0.5,
        chunk_size=8,
        attn_num_heads=2,
        bos_token_id=None,
        eos_token_id=None,
    )
    kwargs.update(overrides)
    torch.manual_seed(0)
    ProbSeqForCausalLM(ProbSeqConfig(**kwargs)).save_pretrained(folder)
    return folder


@pytest.mark.integration
def test_random_model_end_to_end(tmp_path, capsys):
    out = tmp_path / "report"
    assert main(["uncertainty", "--text", TEXT, "--out", str(out)]) == 0
    rows, results, title = read_outputs(out)
    assert sorted(p.name for p in out.iterdir()) == ["results.json", "variance.csv", "variance.png"]
    tokens = len(TEXT.encode("utf-8"))
    assert len(rows) == tokens  # tokens × (layers · heads)
    assert value_columns(rows) == ["L0.H0", "L0.H1", "L1.H0", "L1.H1"]
    assert [row["token"] for row in rows[:4]] == ["T", "h", "e", "␣"]
    values = torch.tensor([[float(row[name]) for name in value_columns(rows)] for row in rows])
    assert torch.isfinite(values).all() and (values > 0).all()
    assert "randomly initialised" in title and title == results["title"]
    assert results["randomly_initialised"] and results["tokenizer"] == "bytes" and results["notes"] == []
    assert "randomly initialised" in capsys.readouterr().out
    # the same command again rewrites its own results; another text into the same --out is refused
    assert main(["uncertainty", "--text", TEXT, "--out", str(out)]) == 0
    assert main(["uncertainty", "--text", "Another text.", "--out", str(out)]) == 2
    assert 'text ("' in capsys.readouterr().err
    assert read_outputs(out)[1]["tokens"] == results["tokens"]


@pytest.mark.integration
def test_checkpoint_with_attention_layer_skipped(tmp_path):
    model = tiny_saved_model(tmp_path / "model", mixer="bayesian", attn_every=2)  # layer 1 is attention
    out = tmp_path / "out"
    results = uncertainty.run_uncertainty(uncertainty.UncertaintyConfig(text=TEXT, model=str(model)), out)
    rows, _, title = read_outputs(out)
    assert len(rows) == len(TEXT.encode("utf-8")) and value_columns(rows) == ["L0.H0", "L0.H1"]
    assert not results["randomly_initialised"] and "randomly initialised" not in title
    assert results["layers"] == [0] and len(results["notes"]) == 1 and "layer 1 (Attention)" in results["notes"][0]


@pytest.mark.integration
def test_folder_without_checkpoint_is_random(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    results = uncertainty.run_uncertainty(uncertainty.UncertaintyConfig(text="abc", model=str(empty)), tmp_path / "a")
    assert results["randomly_initialised"] and "randomly initialised" in results["title"]
    # a config without weights: that architecture, random weights
    folder = tiny_saved_model(tmp_path / "config_only", mixer="gated_deltanet")
    (folder / "model.safetensors").unlink()
    results = uncertainty.run_uncertainty(uncertainty.UncertaintyConfig(text="abc", model=str(folder)), tmp_path / "b")
    assert results["randomly_initialised"] and "config.json (no weights)" in results["title"]
    assert list(results["heads"]) == ["L0.H0", "L0.H1", "L1.H0", "L1.H1"]


@pytest.mark.integration
def test_tokenizer_folder(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"[UNK]": 0, "the": 1, "cat": 2, "sat": 3, ";": 4, ".": 5}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]").save_pretrained(tmp_path / "tok")
    out = tmp_path / "out"
    assert (
        main(
            [
                "uncertainty",
                "--text",
                "the cat sat; the cat sat.",
                "--out",
                str(out),
                "--tokenizer",
                str(tmp_path / "tok"),
            ]
        )
        == 0
    )
    rows, results, _ = read_outputs(out)
    assert [row["token"] for row in rows] == ["the", "cat", "sat", ";", "the", "cat", "sat", "."]
    assert results["tokenizer"] == str(tmp_path / "tok")


def test_unwritable_out_fails_before_the_run(tmp_path, monkeypatch, capsys):
    def no_model(*args, **kwargs):
        raise AssertionError("the model was loaded before --out was checked")

    monkeypatch.setattr(uncertainty, "load_model", no_model)
    blocker = tmp_path / "file.txt"
    blocker.write_text("not a folder")
    assert main(["uncertainty", "--text", TEXT, "--out", str(blocker / "sub")]) == 2
    assert "not a writable folder" in capsys.readouterr().err
    assert main(["uncertainty", "--text", TEXT, "--out", str(blocker)]) == 2
    assert "not a folder" in capsys.readouterr().err


def test_errors(tmp_path):
    no_bayes = tiny_saved_model(tmp_path / "attn", mixer="attention")
    with pytest.raises(ValueError, match="no Bayesian layers"):
        uncertainty.run_uncertainty(uncertainty.UncertaintyConfig(text=TEXT, model=str(no_bayes)), tmp_path / "a")
    small_vocab = tiny_saved_model(tmp_path / "small", vocab_size=100)
    with pytest.raises(ValueError, match="outside the model's vocabulary"):
        uncertainty.run_uncertainty(uncertainty.UncertaintyConfig(text=TEXT, model=str(small_vocab)), tmp_path / "b")
    with pytest.raises(ValueError, match="not a folder"):
        uncertainty.run_uncertainty(
            uncertainty.UncertaintyConfig(text=TEXT, model=str(tmp_path / "missing")), tmp_path / "c"
        )
    with pytest.raises(ValueError, match="empty"):
        uncertainty.UncertaintyConfig(text="")
