"""Reliability of training (probseq.train; docs/reliability.md): a diverging run stops with a message naming the
step and the learning rate and keeps no checkpoint of the diverged weights, an evaluation loss that overflows is a
divergence, fp16 overflow steps are not, and a run config file or cached token array with the wrong content is an
error that names the file — cases found by a review, then problems of the same class found next to them. Tiny
configs. The experiments' side (sweeps that record diverged units, their caches) is tested in
tests/experiments/test_reliability.py."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
import torch
from transformers import TrainerCallback

from probseq.train import ModelSpec, MQARData, MQARSplit, TrainConfig, train
from probseq.train.pretrain import check_run_config
from probseq.train.trainer import TrainingDiverged
from tests.helpers import write_fake_corpus

pytestmark = pytest.mark.usefixtures("runs_in_tmp")


def tiny_config(**changes) -> TrainConfig:
    config = TrainConfig(
        model=ModelSpec(mixer="linear_attention", d_model=16),
        data=MQARData(
            vocab_size=64, train=(MQARSplit(16, 2, 16),), valid=(MQARSplit(16, 2, 8),), test=(MQARSplit(32, 4, 8),)
        ),
        learning_rate=1e-2,
        warmup=0.0,
        max_steps=4,
        batch_size=8,
        eval_batch_size=16,
        seed=0,
        num_threads=1,
        progress=False,
        logging_steps=1,
    )
    return dataclasses.replace(config, **changes)


class LoggedLosses(TrainerCallback):
    def __init__(self):
        self.losses = []

    def on_log(self, args, state, control, logs=None, **kwargs):
        if "loss" in logs:
            self.losses.append(logs["loss"])


# ------------------------------------------------------------------------------------------ divergence


@pytest.mark.integration
def test_diverging_run_stops_at_the_step_with_a_message_naming_step_and_lr():
    logged = LoggedLosses()
    expected = r"diverged at step 2 of 4: .*not finite.*learning rate 1e\+10"
    with pytest.raises(TrainingDiverged, match=expected) as caught:
        train(tiny_config(learning_rate=1e10), callbacks=(logged,))
    assert isinstance(caught.value, ValueError)  # the CLI prints it as one line, exit code 2
    record = caught.value.record
    assert record["status"] == "diverged" and record["steps"] == 2
    assert record["diverged"]["step"] == 2 and record["diverged"]["learning_rate"] == 1e10
    # the last finite loss is the first step's, and the diverging step's loss is logged as it is (not 0.0)
    assert record["diverged"]["last_finite_loss"] == pytest.approx(logged.losses[0])
    assert record["diverged"]["last_finite_loss_step"] == 1
    assert len(logged.losses) == 2 and math.isfinite(logged.losses[0]) and math.isnan(logged.losses[1])
    assert record["eval"] == {} and record["state_bytes"] > 0
    json.dumps(record, allow_nan=False)  # strict JSON as it is


@pytest.mark.integration
def test_diverged_run_saves_no_checkpoint_of_the_diverged_weights(tmp_path):
    config = tiny_config(learning_rate=1e6, output_dir=str(tmp_path / "run"), save_steps=1, save_total_limit=None)
    with pytest.raises(TrainingDiverged) as first:
        train(config)
    assert sorted(p.name for p in (tmp_path / "run").glob("checkpoint-*")) == ["checkpoint-1", "checkpoint-2"]
    with pytest.raises(TrainingDiverged) as again:  # a rerun resumes from step 2 and decides the same
        train(config)
    assert again.value.record["resumed_from_step"] == 2
    for key in ("step", "last_finite_loss", "last_finite_loss_step", "learning_rate", "scheduled_learning_rate"):
        assert again.value.record["diverged"][key] == first.value.record["diverged"][key], key


def test_the_logged_loss_is_the_real_loss():
    from probseq.train.trainer import training_arguments

    assert training_arguments(tiny_config(), "unused").logging_nan_inf_filter is False


# ------------------------------------------------------------------------------------------ the same class, elsewhere


@pytest.mark.integration
def test_evaluation_loss_that_overflows_is_a_divergence_not_an_accuracy():
    class BreakTheModel(TrainerCallback):  # finite training, then weights whose logits are not finite
        def on_train_end(self, args, state, control, model=None, **kwargs):
            with torch.no_grad():
                model.embeddings.weight.fill_(float("inf"))

    with pytest.raises(
        TrainingDiverged,
        match=r"step 2 of 2: the evaluation loss on valid_T16_k2, test_T32_k4 is "
        r"not finite \(loss nan\).*last finite loss .* at step 2",
    ) as caught:
        train(tiny_config(max_steps=2), callbacks=(BreakTheModel(),))
    record = caught.value.record
    assert record["status"] == "diverged" and record["steps"] == 2 and record["eval"] == {}
    json.dumps(record, allow_nan=False)


def test_run_config_file_with_wrong_content_names_the_file(tmp_path):
    for content in ("[]", '"text"', "{"):
        (tmp_path / "probseq_train_config.json").write_text(content)
        with pytest.raises(ValueError, match="probseq_train_config.json"):
            train(tiny_config(output_dir=str(tmp_path), max_steps=1))
        (tmp_path / "probseq_run_config.json").write_text(content)
        with pytest.raises(ValueError, match="probseq_run_config.json"):
            check_run_config(tmp_path, {"tokens": 1})


def test_fp16_overflow_steps_are_not_divergence():
    from types import SimpleNamespace

    from transformers import TrainerControl, TrainerState

    from probseq.train.trainer import DivergenceGuard

    model = torch.nn.Linear(2, 2)
    model.weight.grad = torch.full((2, 2), float("inf"))  # what a loss-scaled fp16 step overflows to
    for fp16, stops in ((True, False), (False, True)):
        guard, control = DivergenceGuard(), TrainerControl()
        guard.on_pre_optimizer_step(
            SimpleNamespace(fp16=fp16, learning_rate=1e-3), TrainerState(), control, model=model
        )
        assert control.should_training_stop == stops and (guard.diverged is not None) == stops
    # the loss is still checked at every log, fp16 or not
    guard, control = DivergenceGuard(), TrainerControl()
    guard.on_log(
        SimpleNamespace(fp16=True, learning_rate=1e-3),
        TrainerState(global_step=7),
        control,
        logs={"loss": float("nan"), "learning_rate": 5e-4},
    )
    assert control.should_training_stop and not control.should_save
    assert (guard.diverged["step"], guard.diverged["scheduled_learning_rate"]) == (7, 5e-4)
    assert guard.diverged["cause"] == "the loss" and math.isnan(guard.diverged["loss"])


def test_cached_token_array_that_is_not_one_names_the_file(tmp_path):
    import numpy as np

    from probseq.train.pretrain import load_token_array

    np.save(tmp_path / "ok.npy", np.arange(5, dtype=np.uint16))
    assert load_token_array(tmp_path / "ok.npy").tolist() == [0, 1, 2, 3, 4]
    (tmp_path / "cut.npy").write_bytes((tmp_path / "ok.npy").read_bytes()[:-4])  # truncated
    np.save(tmp_path / "float.npy", np.zeros((2, 3)))
    for name in ("cut.npy", "float.npy"):
        with pytest.raises(ValueError, match=f"{name}.*delete it to tokenise the corpus again"):
            load_token_array(tmp_path / name)


@pytest.mark.integration
def test_diverging_pretraining_stops_and_exports_nothing(tmp_path, monkeypatch):
    from probseq.data import corpus as corpus_lib
    from probseq.train.pretrain import pretrain, pretrain_config

    paths = write_fake_corpus(tmp_path / "corpus")
    monkeypatch.setattr(corpus_lib, "prepare_corpus", lambda cache_dir=None, **kwargs: paths)
    config = pretrain_config(
        "tiny",
        [
            "vocab_size=384",
            "tokens=4096",
            "batch_size=4",
            "seq_len=128",
            "save_steps=1",
            "learning_rate=1000000.0",
            "num_threads=1",
            "progress=false",
        ],
    )
    with pytest.raises(TrainingDiverged, match=r"pretraining in .*: training diverged at step 3 of 8: .*1e\+06"):
        pretrain(config, tmp_path / "out")
    assert not (tmp_path / "out" / "model.safetensors").exists() and not (tmp_path / "out" / "train_log.json").exists()
    # the last checkpoint is the last finite step's, not the diverged one's
    assert max(int(p.name.split("-")[1]) for p in (tmp_path / "out" / "checkpoints").glob("checkpoint-*")) == 2
