"""Pretraining a Gated DeltaNet teacher, converting it and distilling it (probseq.train.pretrain / .distill), on
tiny models and a corpus made of generated text: ``prepare_corpus`` is replaced by a stub, so no Debian package
is needed. The real corpus is built by ``make corpus``."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM

import probseq.models  # noqa: F401  (registers the Auto classes)
from probseq.cli import main
from probseq.data import corpus as corpus_lib
from probseq.layers import BayesianLayer
from probseq.train import distill as distill_module
from probseq.train.distill import (
    convert_student,
    distill,
    distill_config,
    layerwise_terms,
    load_teacher,
    recurrent_layers,
    set_retention,
    set_trainable,
    stage_blocks,
    stage_steps,
)
from probseq.train.pretrain import pretrain, pretrain_config
from tests.helpers import write_fake_corpus

TINY = ["num_threads=1", "progress=false"]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """``prepare_corpus`` replaced by a stub that returns a small generated corpus (and counts its calls)."""
    paths = write_fake_corpus(tmp_path_factory.mktemp("corpus"))
    calls = []

    def fake_prepare_corpus(cache_dir=None, **kwargs):
        calls.append(cache_dir)
        return paths

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(corpus_lib, "prepare_corpus", fake_prepare_corpus)
        yield paths, calls


@pytest.fixture(scope="module")
def teacher(corpus, tmp_path_factory) -> Path:
    """A tiny Gated DeltaNet pretrained for 12 steps and exported as an fla checkpoint."""
    out = tmp_path_factory.mktemp("teacher")
    config = pretrain_config(
        "tiny", ["vocab_size=384", "tokens=6144", "batch_size=4", "seq_len=128", "save_steps=6", *TINY]
    )
    log = pretrain(config, out)
    assert corpus[1], "pretrain did not ask prepare_corpus for the corpus"
    assert log["steps"] == 12 and log["tokens"] == 12 * 4 * 128
    return out


@pytest.mark.integration
def test_pretrain_exports_an_fla_checkpoint_with_tokenizer_and_resumes(teacher, corpus):
    fla_config = json.loads((teacher / "config.json").read_text())
    assert fla_config["model_type"] == "gated_deltanet" and fla_config["architectures"] == ["GatedDeltaNetForCausalLM"]
    assert fla_config["use_cache"] is True  # not the Trainer's training-time False
    for name in ("model.safetensors", "tokenizer.json", "tokenizer_config.json", "train_log.json"):
        assert (teacher / name).is_file(), name
    log = json.loads((teacher / "train_log.json").read_text())
    assert log["valid_loss"] < log["history"][0]["loss"] + 1  # finite and sane
    assert log["seconds_per_step"] > 0 and log["tokens_per_second"] > 0
    # rerunning the same command resumes from the last checkpoint and trains nothing more
    again = pretrain(
        pretrain_config(
            "tiny", ["vocab_size=384", "tokens=6144", "batch_size=4", "seq_len=128", "save_steps=6", *TINY]
        ),
        teacher,
    )
    assert again["resumed_from_step"] == 12 and again["steps"] == 12
    assert 0.5 * log["train_seconds"] < again["train_seconds"] <= log["train_seconds"]  # kept, not reset to 0
    # another config in the same folder is refused, naming what differs
    with pytest.raises(ValueError, match="seq_len"):
        pretrain(pretrain_config("tiny", ["vocab_size=384", "tokens=6144", "seq_len=64", *TINY]), teacher)


@pytest.mark.integration
def test_pretraining_without_logits_trains_the_same_model(teacher, corpus, tmp_path):
    """skip_logits=true (the loss without the [B, T, V] logits) gives the same losses, step by step, and the same
    validation loss to float rounding."""
    sets = ["vocab_size=384", "tokens=6144", "batch_size=4", "seq_len=128", "save_steps=6", *TINY]
    log = pretrain(pretrain_config("tiny", [*sets, "skip_logits=true"]), tmp_path)
    reference = json.loads((teacher / "train_log.json").read_text())
    losses = [entry["loss"] for entry in log["history"] if "loss" in entry]
    expected = [entry["loss"] for entry in reference["history"] if "loss" in entry]
    assert len(losses) == len(expected) > 1
    assert losses == pytest.approx(expected, rel=1e-4)
    assert log["valid_loss"] == pytest.approx(reference["valid_loss"], rel=1e-4)


@pytest.mark.integration
def test_converted_student_equals_teacher(teacher, tmp_path):
    model = load_teacher(teacher)
    student = convert_student(teacher, tmp_path / "student").eval()
    assert all(isinstance(model.model.layers[i].attn, BayesianLayer) for i in recurrent_layers(model))
    assert {type(b.attn).__name__ for b in student.model.layers} == {"BayesianLayer"}
    assert student.config.retention == "learned"
    ids = torch.randint(3, model.config.vocab_size, (2, 96), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected, actual = model(ids).logits, student(ids).logits
    assert (actual - expected).abs().max() < 1e-4
    # the loaded teacher is fla's model: the exported tensors round-trip bit for bit
    from safetensors.torch import load_file

    saved = load_file(teacher / "model.safetensors")
    state = model.state_dict()
    assert all(torch.equal(saved[name], state[name]) for name in saved)


@pytest.mark.integration
def test_stage1_layerwise_matching_lowers_the_mse(teacher, tmp_path):
    torch.manual_seed(0)
    model = load_teacher(teacher)
    layers = recurrent_layers(model)
    student = convert_student(teacher, tmp_path / "student")
    ids = torch.randint(3, model.config.vocab_size, (2, 64), generator=torch.Generator().manual_seed(1))
    assert float(layerwise_terms(student, model, ids, layers)["nmse"]) < 1e-8  # the exact conversion
    set_retention(student, 1.0)  # certainty retention on: the layers now differ from the teacher's
    trainable = set_trainable(student, 1, layers)
    assert trainable == sum(p.numel() for i in layers for p in student.model.layers[i].attn.parameters())
    optimizer = torch.optim.Adam([p for p in student.parameters() if p.requires_grad], lr=3e-4)
    start = float(layerwise_terms(student, model, ids, layers)["nmse"])
    assert start > 1e-4
    for _ in range(25):
        loss = layerwise_terms(student, model, ids, layers)["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    end = float(layerwise_terms(student, model, ids, layers)["nmse"])
    assert end < 0.5 * start, (start, end)
    # only the mixers moved
    reference = load_teacher(teacher).state_dict()
    for name, tensor in student.state_dict().items():
        if ".attn." not in name:
            assert torch.equal(tensor, reference[name]), name


@pytest.mark.integration
def test_both_arms_train_on_the_same_tokens(teacher, tmp_path):
    logs = {}
    for baseline in (False, True):
        config = distill_config(
            "tiny",
            str(teacher),
            2560,
            baseline,
            ["seq_len=64", "batch_size=4", "save_steps=0", "valid_blocks=2", *TINY],
        )
        logs[baseline] = distill(config, tmp_path / ("baseline" if baseline else "bayesian"))
    student, base = logs[False], logs[True]
    assert student["tokens"] == base["tokens"] == 10 * 4 * 64  # ceil(2560 / 256) steps, both arms
    assert [s["tokens"] for s in student["stages"]] == [s["tokens"] for s in base["stages"]] == [512, 2048]
    assert [s["objective"] for s in student["stages"]] == ["mse", "kl_lm"]
    assert [s["objective"] for s in base["stages"]] == ["kl_lm", "kl_lm"]
    assert [s["trainable_parameters"] for s in student["stages"]][1] > student["stages"][0]["trainable_parameters"]
    assert student["eval"]["converted"]["max_abs_logit_diff"] < 1e-4
    assert base["eval"]["converted"]["kl"] == pytest.approx(0, abs=1e-6)
    for arm, expected in ((False, "BayesianLayer"), (True, "GatedDeltaNet")):
        folder = tmp_path / ("baseline" if arm else "bayesian")
        written = json.loads((folder / "train_log.json").read_text())
        assert written["tokens"] == logs[arm]["tokens"]
        model = AutoModelForCausalLM.from_pretrained(folder)
        assert {type(b.attn).__name__ for b in model.model.layers} == {expected}
        assert model.config.use_cache  # generate() decodes with the recurrent state
        assert (folder / "tokenizer.json").is_file()
    # another config in the same folder is refused before any work, naming what differs
    with pytest.raises(ValueError, match="different config .*differs in tokens.*use another --out"):
        distill(
            distill_config(
                "tiny",
                str(teacher),
                5120,
                False,
                ["seq_len=64", "batch_size=4", "save_steps=0", "valid_blocks=2", *TINY],
            ),
            tmp_path / "bayesian",
        )
    assert json.loads((tmp_path / "bayesian" / "train_log.json").read_text())["tokens"] == student["tokens"]
    assert stage_steps(distill_config("tiny", "t", 2560, overrides=["seq_len=64", "batch_size=4"])) == (256, 2, 8)


@pytest.mark.integration
def test_distillation_on_its_own_mixed_stream_and_the_stationary_student(corpus, teacher, tmp_path):
    """With ``retrieval_share > 0`` every arm trains on distillation's own mixed stream (the same blocks for every
    arm, each stage on its own consecutive blocks); the learned student's ``ρ`` is logged per layer and head;
    ``retention=stationary`` distils into stationary Bayesian Layers."""
    sets = ["seq_len=512", "batch_size=2", "save_steps=1", "save_total_limit=5", "valid_blocks=2", *TINY]
    sets += ["retrieval_share=0.5"]
    seen = []  # (stage folder, the batch's input ids) of every training step
    spy_base = distill_module.distill_trainer_class()

    class Spy(spy_base):
        def training_step(self, model, inputs, *args, **kwargs):
            seen.append((Path(self.args.output_dir).parent.name, inputs["input_ids"].numpy().copy()))
            return super().training_step(model, inputs, *args, **kwargs)

    arms = {"bayesian": (False, []), "baseline": (True, []), "stationary": (False, ["retention=stationary"])}
    logs = {}
    for name, (baseline, extra) in arms.items():
        with pytest.MonkeyPatch.context() as patch:
            if name == "bayesian":
                patch.setattr(distill_module, "distill_trainer_class", lambda: Spy)
            config = distill_config("tiny", str(teacher), 4 * 2 * 512, baseline, [*sets, *extra])
            logs[name] = distill(config, tmp_path / name)
    mix = logs["bayesian"]["mix"]
    assert mix["purpose"] == "distill" and mix["blocks"] == 4 * 2 and min(mix["share_reached"]) >= 0.49
    assert logs["baseline"]["mix"] == logs["stationary"]["mix"] == mix  # one stream for every arm
    # built once, beside the corpus, for every arm (the key covers tokenizer, corpus and settings)
    shared = [
        path
        for path in (corpus[0].manifest.parent / "streams").glob("mix-*.json")
        if json.loads(path.read_text()) == mix
    ]
    assert len(shared) == 1 and not any(any((tmp_path / name).glob("data/mix-*")) for name in arms)
    streams = [np.load(shared[0].with_suffix(".npy"))]
    assert [s["steps"] for s in logs["bayesian"]["stages"]] == [1, 3]
    # stage 1 trained on the stream's first 2 blocks, stage 2 on the other 6, in the stream's order
    blocks = streams[0].reshape(-1, 512)
    assert [stage for stage, _ in seen] == ["stage1"] + ["stage2"] * 3
    assert np.array_equal(np.concatenate([ids for _, ids in seen]), blocks)
    # resumed in stage 2 after its first step, the run reads the blocks it had not trained on yet
    shutil.rmtree(tmp_path / "bayesian" / "stage2" / "final")
    (tmp_path / "bayesian" / "stage2" / "stage_log.json").unlink()
    for checkpoint in (tmp_path / "bayesian" / "stage2" / "checkpoints").glob("checkpoint-*"):
        if checkpoint.name != "checkpoint-1":
            shutil.rmtree(checkpoint)
    seen.clear()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(distill_module, "distill_trainer_class", lambda: Spy)
        distill(distill_config("tiny", str(teacher), 4 * 2 * 512, False, sets), tmp_path / "bayesian")
    assert np.array_equal(np.concatenate([ids for _, ids in seen]), blocks[4:])
    config = distill_config("tiny", "t", 4 * 2 * 512, overrides=sets)
    assert stage_blocks(config, (1, 3), world_size=1) == [(0, 2), (2, 8)]  # disjoint, every block once

    scales = logs["bayesian"]["retention_scale"]
    assert set(scales) == {"start", "after_stage1", "after_stage2"}
    assert scales["start"] and all(rho == 0.5 for heads in scales["start"].values() for rho in heads)
    assert scales["after_stage2"] != scales["start"]  # ρ trains
    assert logs["bayesian"]["retention"] == "learned" and logs["baseline"]["retention"] is None
    assert logs["stationary"]["retention"] == "stationary" and logs["stationary"]["retention_scale"] is None
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "stationary")
    assert {b.attn.retention for b in model.model.layers} == {"stationary"}
    with pytest.raises(ValueError, match="the baseline has none"):
        distill_config("tiny", "t", 1000, True, ["retention=stationary"])


def test_config_errors_name_the_key():
    with pytest.raises(ValueError, match="unknown config key 'bogus'"):
        distill_config("small", "teacher", 1000, overrides=["bogus=1"])
    with pytest.raises(ValueError, match="batch_size must be int"):
        distill_config("small", "teacher", 1000, overrides=["batch_size=1.5"])
    with pytest.raises(ValueError, match="retention_init must be in"):
        distill_config("small", "teacher", 1000, overrides=["retention_init=2"])
    with pytest.raises(ValueError, match="lr_scheduler must be one of"):
        pretrain_config("small", ["lr_scheduler=step"])
    with pytest.raises(ValueError, match="unknown config key 'hidden'"):
        pretrain_config("small", ["hidden=3"])
    with pytest.raises(ValueError, match="unknown --preset"):
        pretrain_config("huge")
    # the shared run fields (LMRunConfig) are checked in both configs; the validation blocks only in pretraining
    for make in (
        lambda o: pretrain_config("small", o),
        lambda o: distill_config("small", "teacher", 1000, overrides=o),
    ):
        with pytest.raises(ValueError, match="adam_beta2 must be < 1"):
            make(["adam_beta2=1.0"])
        with pytest.raises(ValueError, match="warmup must be >= 0"):
            make(["warmup=-1"])
    with pytest.raises(ValueError, match="valid_blocks must be > 0"):
        pretrain_config("small", ["valid_blocks=0"])
    assert distill_config("small", "teacher", 1000, overrides=["valid_blocks=0"]).valid_blocks == 0


def test_cli_reports_errors_in_one_line(tmp_path, capsys):
    command = ["distill", "--teacher", str(tmp_path / "missing"), "--out", str(tmp_path / "o"), "--tokens", "1k"]
    assert main(command) == 2
    assert "no config.json" in capsys.readouterr().err
    assert main(["pretrain", "--preset", "tiny", "--out", str(tmp_path / "p"), "--set", "seq_len=zero"]) == 2
    assert "seq_len must be int" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["distill", "--teacher", "t", "--out", "o", "--tokens", "lots"])
