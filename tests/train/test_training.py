"""probseq.train: validated configs, the loss on pre-shifted labels, metrics, resume equivalence, torchrun."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from transformers import TrainerCallback, TrainerState
from transformers.trainer_utils import EvalPrediction
from transformers.utils import logging as hf_logging

from probseq.layers import BayesianLayer
from probseq.tasks import IGNORE_INDEX, RecallConfig
from probseq.train import (
    ModelSpec,
    MQARData,
    MQARSplit,
    RecallData,
    RecallSplit,
    TrainConfig,
    from_dict,
    train,
    with_overrides,
)
from probseq.train.data import TokenDataset, generate, pad_collate
from probseq.train.metrics import pre_shifted_cross_entropy, recall_metrics, scatter_predictions
from probseq.train.trainer import CONFIG_FILE, TrainingClock, build_model
from tests.helpers import REPO, tiny_train_config


class KeepParameters(TrainerCallback):
    def __init__(self):
        self.state = None

    def on_train_end(self, args, state, control, model=None, **kwargs):
        self.state = {k: v.detach().clone() for k, v in model.state_dict().items()}


# ------------------------------------------------------------------------------------------ configs


def test_config_unknown_key_is_an_error_naming_it():
    with pytest.raises(ValueError, match="'learning_rat'"):
        from_dict(TrainConfig, {"learning_rat": 1e-3})
    with pytest.raises(ValueError, match="'model.d_modle'"):
        from_dict(TrainConfig, {"model": {"d_modle": 32}})
    with pytest.raises(ValueError, match=r"'data.train\[0\].seqlen'"):
        from_dict(TrainConfig, {"data": {"kind": "mqar", "train": [{"seqlen": 64}]}})
    with pytest.raises(ValueError, match="'model.d_modle'"):
        with_overrides(TrainConfig(), ["model.d_modle=32"])
    with pytest.raises(ValueError, match="'warmup_ratio'"):
        with_overrides(TrainConfig(), ["warmup_ratio=0.1"])


def test_config_wrong_type_is_an_error_naming_the_key():
    with pytest.raises(ValueError, match="max_steps"):
        from_dict(TrainConfig, {"max_steps": "10"})
    with pytest.raises(ValueError, match="model.d_model"):
        from_dict(TrainConfig, {"model": {"d_model": 1.5}})
    with pytest.raises(ValueError, match="model.mixer"):
        from_dict(TrainConfig, {"model": {"mixer": "transformer"}})
    with pytest.raises(ValueError, match=r"data.train\[0\].seq_len"):
        from_dict(
            TrainConfig, {"data": {"kind": "mqar", "train": [{"seq_len": "64", "num_kv_pairs": 4, "num_examples": 10}]}}
        )
    with pytest.raises(ValueError, match="data.kind"):
        from_dict(TrainConfig, {"data": {"kind": "ruler"}})
    with pytest.raises(ValueError, match="progress"):
        with_overrides(TrainConfig(), ["progress=1"])
    with pytest.raises(ValueError, match="max_steps"):
        TrainConfig(max_steps=2.5)  # direct construction is checked too
    with pytest.raises(ValueError, match="learning_rate"):
        TrainConfig(learning_rate=-1.0)


def test_config_round_trips_through_dicts_and_overrides():
    recall = RecallData(
        train=(RecallSplit("train", RecallConfig(num_pairs=4, seq_len=32), 64),),
        test=(RecallSplit("gap", RecallConfig(num_pairs=4, gap=8, seq_len=40), 16),),
    )
    for config in (tiny_train_config(), TrainConfig(data=recall)):
        assert from_dict(TrainConfig, dataclasses.asdict(config)) == config
    changed = with_overrides(
        tiny_train_config(), ["learning_rate=3e-3", "model.mixer=attention", "max_steps=7", "data.vocab_size=128"]
    )
    assert (changed.learning_rate, changed.model.mixer, changed.max_steps, changed.data.vocab_size) == (
        3e-3,
        "attention",
        7,
        128,
    )
    assert with_overrides(tiny_train_config(), ["learning_rate=1"]).learning_rate == 1.0  # an int is a float
    # where and how a run is written does not change its identity
    assert tiny_train_config(output_dir="x", progress=True).fingerprint() == tiny_train_config().fingerprint()
    assert tiny_train_config(learning_rate=2e-3).fingerprint() != tiny_train_config().fingerprint()
    # a field added later counts only when it differs from its default (the runs cached before keep their keys)
    started_stationary = with_overrides(tiny_train_config(), ["model.retention_init=1.0"])
    assert "retention_init" not in tiny_train_config().identity()["model"]
    assert started_stationary.identity()["model"]["retention_init"] == 1.0
    assert started_stationary.fingerprint() != tiny_train_config().fingerprint()
    with pytest.raises(ValueError, match="retention_init must be in"):
        with_overrides(tiny_train_config(), ["model.retention_init=2.0"])


def test_retention_init_reaches_the_bayesian_layers():
    for rho in (0.0, 1.0):
        model = build_model(with_overrides(tiny_train_config(), [f"model.retention_init={rho}"]))
        scales = [m.c_scale for m in model.modules() if isinstance(m, BayesianLayer)]
        assert len(scales) == 2 and all(torch.all(scale == rho) for scale in scales)


def test_init_is_fla_by_default_and_zoology_on_request():
    """``model.init`` enters the fingerprint only as ``"zoology"`` (the cached runs are fla's); Zoology's
    initialisation leaves the short convolutions at PyTorch's default (uniform ±1/√kernel, depthwise), keeps
    normal(0.02) linear weights — PyTorch's Kaiming default for Mamba-2 — and scales attention's output
    projection by 1/√(2 n_layers)."""
    assert "init" not in tiny_train_config().identity()["model"]
    zoology = with_overrides(tiny_train_config(), ["model.init=zoology"])
    assert (
        zoology.identity()["model"]["init"] == "zoology" and zoology.fingerprint() != tiny_train_config().fingerprint()
    )
    with pytest.raises(ValueError, match="init must be one of"):
        with_overrides(tiny_train_config(), ["model.init=xavier"])

    def weights(config, mixer):
        model = build_model(with_overrides(config, [f"model.mixer={mixer}", "model.d_model=64"]))
        return {name: p.detach() for name, p in model.named_parameters() if p.dim() > 1}

    fla, zoo = weights(tiny_train_config(), "gated_deltanet"), weights(zoology, "gated_deltanet")
    for name in ("layers.1.k_conv1d.weight", "layers.0.conv.weight"):  # fan-in = kernel (depthwise)
        bound = 1 / fla[name].shape[-1] ** 0.5
        assert fla[name].std() < 0.03 and 0.5 * bound < zoo[name].abs().max() <= bound
    assert abs(float(zoo["layers.1.q_proj.weight"].std()) - 0.02) < 0.003
    mamba = weights(zoology, "mamba2")
    fan_in = mamba["layers.1.in_proj.weight"].shape[1]
    assert abs(float(mamba["layers.1.in_proj.weight"].std()) - (3 * fan_in) ** -0.5) < 0.01
    out_fan_in = mamba["layers.1.out_proj.weight"].shape[1]  # Kaiming / √(2 Mamba-2 layers)
    assert abs(float(mamba["layers.1.out_proj.weight"].std()) - (3 * out_fan_in) ** -0.5 / 2**0.5) < 0.004
    attention = weights(zoology, "attention")
    assert abs(float(attention["layers.1.o_proj.weight"].std()) - 0.02 / (2 * 4) ** 0.5) < 0.002


def test_layout_is_alternating_by_default_and_mixers_on_request():
    """``model.layout`` enters the fingerprint only as ``"mixers"`` (the cached runs have conv blocks): the default
    config written out with the field hashes as one read from a dict without it (a run cached before the field);
    ``"mixers"`` builds ``n_layers`` mixers, no conv block, and may have one block."""
    default = tiny_train_config()
    assert "layout" not in default.identity()["model"]
    old = default.to_dict()
    del old["model"]["layout"]  # a config saved before the field existed
    assert from_dict(TrainConfig, old) == default
    assert from_dict(TrainConfig, old).fingerprint() == default.fingerprint()
    explicit = with_overrides(default, ["model.layout=alternating"])
    assert explicit.fingerprint() == default.fingerprint()
    assert [type(layer).__name__ for layer in build_model(explicit).layers] == [
        "ConvBlock",
        "BayesianLayer",
        "ConvBlock",
        "BayesianLayer",
    ]
    mixers = with_overrides(default, ["model.mixer=mamba2", "model.n_layers=2", "model.layout=mixers"])
    assert mixers.identity()["model"]["layout"] == "mixers"
    assert mixers.fingerprint() != with_overrides(mixers, ["model.layout=alternating"]).fingerprint()
    model = build_model(mixers)
    assert model.config.layout == "mixers"
    assert [type(layer).__name__ for layer in model.layers] == ["Mamba2", "Mamba2"]
    assert [layer.layer_idx for layer in model.layers] == [0, 1]
    assert len(build_model(with_overrides(mixers, ["model.n_layers=1"])).layers) == 1
    with pytest.raises(ValueError, match="model.layout"):
        with_overrides(default, ["model.layout=mamba"])
    with pytest.raises(ValueError, match=r"n_layers must be >= 2 with layout='alternating'"):
        ModelSpec(n_layers=1)
    assert ModelSpec(n_layers=1, layout="mixers").n_layers == 1


# The mixers that share Gated DeltaNet's parameters: GDN itself and the Bayesian Layer with each retention.
PAIRED = {
    "gated_deltanet": ["model.mixer=gated_deltanet"],
    "reset": ["model.retention=reset"],
    "stationary": ["model.retention=stationary"],
    "learned": ["model.retention=learned"],
}


def step0(config: TrainConfig, batch: dict) -> tuple[dict, torch.Tensor, dict]:
    """The initial parameters, the loss on ``batch`` and its gradients of the model of ``config``."""
    model = build_model(config)
    labels = batch["labels"]
    loss = pre_shifted_cross_entropy(
        model(input_ids=batch["input_ids"], logits_mask=labels != IGNORE_INDEX).logits, labels
    )
    loss.backward()
    return (
        {n: p.detach() for n, p in model.named_parameters()},
        loss.detach(),
        {n: p.grad for n, p in model.named_parameters()},
    )


@pytest.mark.parametrize("init", ["fla", "zoology"])
def test_mixers_sharing_gated_deltanets_parameters_start_paired(init):
    """For one seed, every variant starts from Gated DeltaNet's weights, bit for bit; the learned retention's own
    parameters come from their own stream. At ρ = 0 the learned retention is GDN (γ ≡ 0) and ``reset`` is GDN, so
    step 0 gives GDN's loss bit for bit, and GDN's gradients: exactly for ``reset`` (the same code), to float
    rounding for ``learned`` (γ is a tensor of zeros, so the filter's general path runs and its backward sums in
    another order)."""
    base = with_overrides(tiny_train_config(), [f"model.init={init}", "model.d_model=32"])
    batch = pad_collate([TokenDataset(generate(base.data, 0).train)[i] for i in range(8)])
    runs = {name: step0(with_overrides(base, overrides), batch) for name, overrides in PAIRED.items()}
    gdn_params, gdn_loss, gdn_grads = runs.pop("gated_deltanet")
    for name, (params, loss, grads) in runs.items():
        own = sorted(set(params) - set(gdn_params))
        assert own == (
            [f"layers.{i}.{p}" for i in (1, 3) for p in ("c_bias", "c_scale", "c_weight")] if name == "learned" else []
        ), name
        for key, value in gdn_params.items():
            assert torch.equal(params[key], value), (name, key)
        if name == "stationary":
            continue  # γ = α² is another function of the same weights
        assert torch.equal(loss, gdn_loss), (name, loss.item(), gdn_loss.item())
        for key, value in gdn_grads.items():
            if name == "reset":
                assert torch.equal(grads[key], value), key
            else:
                torch.testing.assert_close(grads[key], value, rtol=1e-4, atol=1e-5 * float(value.abs().max()))
    params = runs["learned"][0]
    assert not torch.equal(params["layers.1.c_weight"], params["layers.3.c_weight"])  # seeded by layer too
    other_seed = build_model(dataclasses.replace(with_overrides(base, PAIRED["learned"]), seed=6))
    assert not torch.equal(other_seed.layers[1].c_weight, params["layers.1.c_weight"])  # and by the run's seed


@pytest.mark.integration
def test_paired_mixers_see_the_same_batches(monkeypatch):
    """The Trainer's data order does not depend on the mixer: the first training batches of GDN and of the
    Bayesian Layer are the same, and so is the first logged loss at ρ = 0."""
    from probseq.train.trainer import PreShiftedTrainer

    seen = []
    compute_loss = PreShiftedTrainer.compute_loss

    def record(self, model, inputs, *args, **kwargs):
        loss = compute_loss(self, model, inputs, *args, **kwargs)
        if model.training:
            seen[-1].append((inputs["input_ids"].clone(), loss.detach().clone()))
        return loss

    monkeypatch.setattr(PreShiftedTrainer, "compute_loss", record)
    for name in ("gated_deltanet", "learned"):
        seen.append([])
        train(with_overrides(tiny_train_config(max_steps=2), PAIRED[name]))
    assert len(seen[0]) == len(seen[1]) == 2
    assert all(torch.equal(a[0], b[0]) for a, b in zip(*seen))
    assert torch.equal(seen[0][0][1], seen[1][0][1])  # step 0's loss


def test_data_is_generated_from_seeds_with_disjoint_splits():
    data = tiny_train_config().data
    first, again, other = generate(data, 1), generate(data, 1), generate(data, 2)
    assert torch.equal(first.train[0].inputs, again.train[0].inputs)
    assert not torch.equal(first.train[0].inputs, other.train[0].inputs)
    assert set(first.evaluation) == {"valid_T32_k4", "test_T48_k6"}
    # the validation segment has the train segment's shape but its own seed
    assert not torch.equal(first.evaluation["valid_T32_k4"].inputs, first.train[0].inputs[:16])
    batch = pad_collate(
        [
            {"input_ids": torch.ones(3, dtype=torch.long), "labels": torch.tensor([5, -100, 6])},
            {"input_ids": torch.ones(5, dtype=torch.long), "labels": torch.full((5,), 7)},
        ]
    )
    assert batch["input_ids"].tolist()[0] == [1, 1, 1, 0, 0]
    assert batch["labels"].tolist()[0] == [5, -100, 6, -100, -100]


# ------------------------------------------------------------------------------------------ loss, metrics


def test_loss_on_pre_shifted_labels_equals_a_hand_computation():
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 5, 7, generator=gen)
    labels = torch.tensor([[-100, 3, -100, -100, 6], [0, -100, -100, 2, -100]])
    hand = [
        -(logits[b, t].exp() / logits[b, t].exp().sum()).log()[labels[b, t]]
        for b in range(2)
        for t in range(5)
        if labels[b, t] != -100
    ]
    expected = torch.stack(hand).mean()
    assert torch.allclose(pre_shifted_cross_entropy(logits, labels), expected, atol=1e-6)
    # logits gathered at the supervised positions give the same loss
    assert torch.allclose(pre_shifted_cross_entropy(logits[labels != -100], labels), expected, atol=1e-6)
    # num_items_in_batch is the normaliser (the whole accumulated batch)
    assert torch.allclose(pre_shifted_cross_entropy(logits, labels, torch.tensor(8)), torch.stack(hand).sum() / 8)
    # no shift: a causal-LM loss (prediction at t scored against labels[t + 1]) is a different number
    shifted = F.cross_entropy(logits[:, :-1].reshape(-1, 7), labels[:, 1:].reshape(-1), ignore_index=-100)
    assert not torch.allclose(shifted, expected)
    with pytest.raises(ValueError, match="logits"):
        pre_shifted_cross_entropy(torch.randn(3, 7), labels)


def test_loss_weighted_per_example_equals_a_hand_computation():
    """``weighting="example"``: each example's mean over its supervised tokens, then the mean over the examples
    that have one; ``"token"`` (the default) is the mean over every supervised token, as before."""
    gen = torch.Generator().manual_seed(1)
    logits = torch.randn(3, 5, 7, generator=gen)
    labels = torch.tensor([[-100, 3, -100, -100, 6], [0, 1, 5, 2, -100], [-100] * 5])  # 2, 4 and 0 queries

    def nll(b, t):
        return -(logits[b, t].exp() / logits[b, t].exp().sum()).log()[labels[b, t]]

    rows = [[nll(b, t) for t in range(5) if labels[b, t] != -100] for b in range(3)]
    example = (torch.stack(rows[0]).mean() + torch.stack(rows[1]).mean()) / 2  # the empty row does not count
    token = torch.stack(rows[0] + rows[1]).mean()  # here the second example weighs twice the first
    assert torch.allclose(pre_shifted_cross_entropy(logits, labels, weighting="example"), example, atol=1e-6)
    assert torch.allclose(
        pre_shifted_cross_entropy(logits[labels != -100], labels, weighting="example"), example, atol=1e-6
    )  # logits gathered at the supervised positions, in row-major order
    # num_items_in_batch counts the examples of the accumulated batch
    half = (torch.stack(rows[0]).mean() + torch.stack(rows[1]).mean()) / 4
    assert torch.allclose(pre_shifted_cross_entropy(logits, labels, torch.tensor(4), "example"), half, atol=1e-6)
    assert torch.equal(
        pre_shifted_cross_entropy(logits, labels), pre_shifted_cross_entropy(logits, labels, weighting="token")
    )
    assert torch.allclose(pre_shifted_cross_entropy(logits, labels), token, atol=1e-6)
    assert not torch.allclose(example, token)
    with pytest.raises(ValueError, match="weighting"):
        pre_shifted_cross_entropy(logits, labels, weighting="sequence")
    with pytest.raises(ValueError, match=r"labels \[B, T\]"):
        pre_shifted_cross_entropy(logits[labels != -100], labels[labels != -100], weighting="example")


def test_loss_weighting_is_a_config_option_that_keeps_the_cached_keys():
    from probseq.experiments import mqar, recall
    from probseq.experiments.common import apply_overrides

    assert tiny_train_config().loss_weighting == "token" and "loss_weighting" not in tiny_train_config().identity()
    example = with_overrides(tiny_train_config(), ["loss_weighting=example"])
    assert (
        example.identity()["loss_weighting"] == "example" and example.fingerprint() != tiny_train_config().fingerprint()
    )
    with pytest.raises(ValueError, match="loss_weighting must be one of"):
        with_overrides(tiny_train_config(), ["loss_weighting=sequence"])
    for experiment in (mqar.PRESETS["quick"], recall.PRESETS["quick"]):  # probseq mqar --set loss_weighting=example
        assert {unit.config.loss_weighting for unit in experiment.units()} == {"token"}
        chosen = apply_overrides(experiment, ["loss_weighting=example"])
        assert {unit.config.loss_weighting for unit in chosen.units()} == {"example"}


@pytest.mark.integration
def test_per_example_weighting_trains_through_the_trainer(tmp_path, monkeypatch):
    """The Trainer's loss with ``loss_weighting="example"`` is the hand computation's: the first logged loss, of
    one batch of 16 or of 2 accumulated micro-batches of 8, is the sum of the examples' means over the examples of
    the whole accumulated batch (the normaliser counts examples, not tokens); the accumulated run ends with the
    one-batch run's parameters, and differs from the token-weighted run (examples with 4 and 10 queries)."""
    from probseq.train.trainer import PreShiftedTrainer, build_trainer

    data = MQARData(vocab_size=64, train=(MQARSplit(32, 4, 16), MQARSplit(48, 10, 16)), test=(MQARSplit(32, 4, 8),))
    trainer = build_trainer(tiny_train_config(data=data, loss_weighting="example"), output_dir=tmp_path)
    batch = pad_collate([trainer.train_dataset[i] for i in (0, 1, 20, 21)])
    with torch.no_grad():
        loss = trainer.compute_loss(trainer.model, dict(batch))
        full = trainer.model(input_ids=batch["input_ids"]).logits
    assert torch.allclose(loss, pre_shifted_cross_entropy(full, batch["labels"], weighting="example"), atol=1e-6)

    seen = []
    compute_loss = PreShiftedTrainer.compute_loss

    def record(self, model, inputs, *args, **kwargs):
        if model.training:
            seen.append({key: value.clone() for key, value in inputs.items()})
        return compute_loss(self, model, inputs, *args, **kwargs)

    monkeypatch.setattr(PreShiftedTrainer, "compute_loss", record)
    for size, accumulation in ((16, 1), (8, 2)):
        seen.clear()
        config = tiny_train_config(
            data=data, batch_size=size, gradient_accumulation_steps=accumulation, max_steps=1, loss_weighting="example"
        )
        logged = train(config)["final_train_loss"]
        model = build_model(config)  # the run's initial weights
        with torch.no_grad():
            sums = [
                pre_shifted_cross_entropy(model(input_ids=b["input_ids"]).logits, b["labels"], 1, "example")
                for b in seen
            ]  # Σ_b mean_b of each micro-batch
        examples = sum(int((b["labels"] != IGNORE_INDEX).any(-1).sum()) for b in seen)
        assert len(seen) == accumulation and examples == 16
        assert logged == pytest.approx(float(sum(sums)) / examples, abs=1e-5)
    monkeypatch.undo()

    params = []
    for weighting, size, accumulation in (("example", 16, 1), ("example", 8, 2), ("token", 16, 1)):
        keep = KeepParameters()
        train(
            tiny_train_config(
                data=data,
                batch_size=size,
                gradient_accumulation_steps=accumulation,
                max_steps=3,
                loss_weighting=weighting,
            ),
            callbacks=(keep,),
        )
        params.append(keep.state)
    for key, value in params[0].items():
        assert torch.allclose(params[1][key], value, atol=1e-6, rtol=0), key
    assert not torch.allclose(params[2]["embeddings.weight"], params[0]["embeddings.weight"], atol=1e-6, rtol=0)


def test_segment_batches_hold_one_segment_each_and_drop_incomplete_blocks():
    from probseq.train.data import SegmentBatches

    data = MQARData(vocab_size=64, train=(MQARSplit(32, 4, 20), MQARSplit(48, 10, 16)), test=(MQARSplit(32, 4, 8),))
    splits = generate(data, 3)
    batches = SegmentBatches(splits.train, batch_size=8)
    assert len(batches) == 2 + 2  # 20 examples: two blocks of 8 (the last 4 dropped); 16: two blocks
    for index, (segment, start) in enumerate([(0, 0), (0, 8), (1, 0), (1, 8)]):
        block = batches[index]
        assert torch.equal(block["input_ids"], splits.train[segment].inputs[start : start + 8])
        assert torch.equal(block["labels"], splits.train[segment].labels[start : start + 8])
    collated = pad_collate([batches[3]])  # a block collates to itself: no padding, no reordering
    assert torch.equal(collated["input_ids"], batches[3]["input_ids"])
    assert torch.equal(collated["labels"], batches[3]["labels"])
    mixed = pad_collate([TokenDataset(splits.train)[0], batches[2]])  # a lone example and a block of 8: 9 rows
    assert mixed["input_ids"].shape == (9, 48) and torch.equal(mixed["input_ids"][1:], batches[2]["input_ids"])
    assert (mixed["labels"][0, 32:] == IGNORE_INDEX).all()
    with pytest.raises(ValueError, match=r"at least one full batch \(32 examples\).*\[20, 16\]"):
        SegmentBatches(splits.train, batch_size=32)


@pytest.mark.integration
def test_batching_by_segment_trains_one_segment_per_step_and_resumes_exactly(tmp_path, monkeypatch):
    """``batching="by_segment"``: every training step sees ``batch_size`` examples of one segment (no padding),
    both segments are visited, an interrupted run ends like an uninterrupted one, and the option keeps the cached
    keys of runs without it."""
    from probseq.train.trainer import PreShiftedTrainer

    assert "batching" not in tiny_train_config().identity()
    data = MQARData(
        vocab_size=64,
        train=(MQARSplit(32, 4, 16), MQARSplit(48, 10, 16)),
        valid=(MQARSplit(32, 4, 8),),
        test=(MQARSplit(48, 10, 8),),
    )
    config = tiny_train_config(data=data, batching="by_segment", output_dir=str(tmp_path / "whole"), save_steps=1)
    assert config.identity()["batching"] == "by_segment"
    assert config.fingerprint() != tiny_train_config(data=data).fingerprint()

    seen = []
    compute_loss = PreShiftedTrainer.compute_loss

    def record(self, model, inputs, *args, **kwargs):
        if model.training:
            seen.append(inputs["labels"].clone())
        return compute_loss(self, model, inputs, *args, **kwargs)

    monkeypatch.setattr(PreShiftedTrainer, "compute_loss", record)
    keep_whole = KeepParameters()
    expected = train(config, callbacks=(keep_whole,))
    monkeypatch.undo()
    assert len(seen) == 6 and all(labels.shape[0] == 8 for labels in seen)
    queries = {int((labels != IGNORE_INDEX).sum(-1).unique().item()) for labels in seen}  # one segment per batch
    assert {labels.shape[1] for labels in seen} == {32, 48} and queries == {4, 10}
    for labels in seen:
        assert (labels != IGNORE_INDEX).sum(-1).unique().numel() == 1

    split = dataclasses.replace(config, output_dir=str(tmp_path / "split"), save_total_limit=None)
    with pytest.raises(Crash):
        train(split, callbacks=(CrashAfterCheckpoint(5),))
    keep_split = KeepParameters()
    resumed = train(split, callbacks=(keep_split,))
    assert resumed["resumed_from_step"] == 5 and resumed["final_train_loss"] == pytest.approx(
        expected["final_train_loss"], abs=1e-5
    )
    for key, value in keep_whole.state.items():
        assert torch.allclose(keep_split.state[key], value, atol=1e-6, rtol=0), key
    mixed = KeepParameters()
    train(dataclasses.replace(config, batching="mixed", output_dir=""), callbacks=(mixed,))
    assert not torch.allclose(mixed.state["embeddings.weight"], keep_whole.state["embeddings.weight"])


@pytest.mark.integration
def test_retention_parameters_train_at_their_own_learning_rate_and_resume_exactly(tmp_path):
    """``retention_lr_scale``: the learned retention's ``c_weight``, ``c_bias``, ``c_scale`` sit in optimizer groups
    of their own at the run's lr times the scale, through warmup and decay; an interrupted run ends like an
    uninterrupted one; the scale changes training (and the run's key) only when it is not 1."""
    from probseq.train.trainer import build_trainer

    assert "retention_lr_scale" not in tiny_train_config().identity()
    with pytest.raises(ValueError, match="retention_lr_scale"):
        tiny_train_config(retention_lr_scale=0.0)
    config = tiny_train_config(retention_lr_scale=0.1, output_dir=str(tmp_path / "whole"), save_steps=1)
    assert config.identity()["retention_lr_scale"] == 0.1

    trainer = build_trainer(config, tmp_path / "probe")
    trainer.create_optimizer_and_scheduler(num_training_steps=6)
    names = {id(p): n for n, p in trainer.model.named_parameters()}
    retention = ("c_weight", "c_bias", "c_scale")
    kinds = [{names[id(p)].rsplit(".", 1)[1] in retention for p in g["params"]} for g in trainer.optimizer.param_groups]
    assert all(len(kind) == 1 for kind in kinds)  # no group mixes retention and other parameters
    own = [g for g, kind in zip(trainer.optimizer.param_groups, kinds) if kind == {True}]
    rest = [g for g, kind in zip(trainer.optimizer.param_groups, kinds) if kind == {False}]
    assert sum(len(g["params"]) for g in own) == 3 * 2  # three tensors in each of the two Bayesian layers
    for _ in range(4):  # through the warmup and into the decay: the ratio stays
        trainer.optimizer.step()
        trainer.lr_scheduler.step()
        assert rest[0]["lr"] > 0 and all(g["lr"] == pytest.approx(0.1 * rest[0]["lr"], rel=1e-9) for g in own)
    assert {g["weight_decay"] for g in own} == {0.0, 0.1}  # c_scale is not decayed, c_weight is

    keep_whole = KeepParameters()
    expected = train(config, callbacks=(keep_whole,))
    split = dataclasses.replace(config, output_dir=str(tmp_path / "split"), save_total_limit=None)
    with pytest.raises(Crash):
        train(split, callbacks=(CrashAfterCheckpoint(4),))
    keep_split = KeepParameters()
    assert train(split, callbacks=(keep_split,))["resumed_from_step"] == 4
    for key, value in keep_whole.state.items():
        assert torch.allclose(keep_split.state[key], value, atol=1e-6, rtol=0), key
    full = KeepParameters()  # the same run at scale 1: ρ (c_scale, from 0) moves about ten times as far
    train(tiny_train_config(), callbacks=(full,))
    moved = {
        name: state["layers.1.c_scale"].abs().max().item()
        for name, state in (("full", full.state), ("scaled", keep_whole.state))
    }
    assert 0 < moved["scaled"] < 0.3 * moved["full"]
    assert expected["retention_trace"]


@pytest.mark.integration
def test_retention_trace_records_rho_and_gradient_norms_at_every_logging_step():
    metrics = train(tiny_train_config(logging_steps=2))
    trace = metrics["retention_trace"]
    assert [entry["step"] for entry in trace] == [2, 4, 6]
    for entry in trace:
        assert 0 <= entry["retention_scale"] <= 1
        assert entry["retention_grad_norm"] > 0 and entry["other_grad_norm"] > 0
    layers = metrics["retention_scale"]
    assert trace[-1]["retention_scale"] == pytest.approx(
        sum(sum(heads) for heads in layers.values()) / sum(len(heads) for heads in layers.values()), abs=1e-6
    )
    assert "retention_trace" not in train(tiny_train_config(model=ModelSpec(mixer="gated_deltanet", d_model=16)))


def test_trainer_loss_and_predictions_match_the_full_logits(tmp_path):
    from probseq.train.trainer import build_trainer

    trainer = build_trainer(tiny_train_config(), output_dir=tmp_path)
    batch = pad_collate([trainer.train_dataset[i] for i in range(4)])
    model = trainer.model.eval()
    with torch.no_grad():
        loss, outputs = trainer.compute_loss(model, dict(batch), return_outputs=True)
        full = model(input_ids=batch["input_ids"]).logits  # [B, T, V], no mask
    assert trainer.gathers_logits
    assert torch.allclose(loss, pre_shifted_cross_entropy(full, batch["labels"]), atol=1e-5)
    mask = batch["labels"] != IGNORE_INDEX
    assert torch.equal(outputs["predictions"][mask], full.argmax(-1)[mask])
    assert (outputs["predictions"][~mask] == IGNORE_INDEX).all()


@pytest.mark.parametrize("mixer", ["bayesian", "mamba2", "attention"])
def test_weight_decay_spares_marked_parameters_and_every_norm_weight(tmp_path, mixer):
    """AdamW's no-decay group holds exactly the biases (transformers: every name with "bias"), the parameters
    marked ``_no_weight_decay`` (A_log, dt_bias, Mamba-2's D, the learned retention's c_scale) and every norm weight
    (``norms.0.weight`` included, which transformers' name patterns miss); everything else decays at
    ``weight_decay``."""
    from probseq.train.trainer import build_trainer

    trainer = build_trainer(with_overrides(tiny_train_config(), [f"model.mixer={mixer}"]), output_dir=tmp_path)
    optimizer = trainer.create_optimizer()
    names = {id(p): n for n, p in trainer.model.named_parameters()}
    groups = {group["weight_decay"]: {names[id(p)] for p in group["params"]} for group in optimizer.param_groups}
    assert set(groups) == {0.0, 0.1}
    norms = {f"norms.{i}.weight" for i in range(4)} | {"norm.weight"}
    marked = {"bayesian": {"A_log", "dt_bias", "c_scale"}, "mamba2": {"A_log", "dt_bias", "D"}, "attention": set()}
    inner_norms = {"bayesian": {"o_norm"}, "mamba2": {"norm"}, "attention": set()}
    expected = norms | {
        n
        for n in names.values()
        if "bias" in n.split(".")[-1] or n.split(".")[-1] in marked[mixer] or n.split(".")[-2] in inner_norms[mixer]
    }
    assert {"layers.1.A_log", "layers.3.dt_bias"} <= expected or mixer == "attention"
    assert groups[0.0] == expected
    assert groups[0.1] == set(names.values()) - expected and "embeddings.weight" in groups[0.1]


def test_recall_metrics():
    labels = np.array([[-100, 3, -100, 4], [5, -100, 6, -100], [-100] * 4])
    predictions = np.array([[9, 3, 9, 0], [5, 1, 6, 1], [1, 1, 1, 1]])
    metrics = recall_metrics(EvalPrediction(predictions=predictions, label_ids=labels))
    assert metrics == {"accuracy": 0.75, "example_accuracy": 0.75, "all_correct": 0.5}
    scattered = scatter_predictions(torch.eye(3)[[2, 0]], torch.tensor([[-100, 1, 1]]))
    assert scattered.tolist() == [[-100, 2, 0]]


# ------------------------------------------------------------------------------------------ runs


class Crash(Exception):
    pass


class CrashAfterCheckpoint(TrainerCallback):
    """Stop the process right after checkpoint ``step`` is written (an interruption)."""

    def __init__(self, step: int):
        self.step = step

    def on_save(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            raise Crash


@pytest.mark.integration
@pytest.mark.parametrize("partial_save", [False, True], ids=["after-checkpoint", "during-checkpoint"])
def test_resumed_run_ends_like_an_uninterrupted_one(tmp_path, partial_save, caplog, monkeypatch):
    # 32 examples in batches of 8: 4 steps per epoch, so the run resumes in its second epoch
    whole, keep_whole = tiny_train_config(output_dir=str(tmp_path / "whole"), save_steps=1), KeepParameters()
    expected = train(whole, callbacks=(keep_whole,))

    split = tiny_train_config(output_dir=str(tmp_path / "split"), save_steps=1, save_total_limit=None)
    with pytest.raises(Crash):
        train(split, callbacks=(CrashAfterCheckpoint(5),))
    assert (tmp_path / "split" / "checkpoint-5" / "model.safetensors").exists()
    if partial_save:  # interrupted while writing checkpoint 5: the Trainer writes trainer_state.json last
        (tmp_path / "split" / "checkpoint-5" / "trainer_state.json").unlink()
    resume_point = tmp_path / "split" / f"checkpoint-{4 if partial_save else 5}" / "trainer_state.json"
    seconds_before = TrainingClock.saved_seconds(TrainerState.load_from_json(str(resume_point)))
    assert seconds_before > 0  # each checkpoint stores the training time so far
    keep_split = KeepParameters()
    monkeypatch.setattr(hf_logging.get_logger(), "propagate", True)  # transformers' log records reach caplog
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        resumed = train(split, callbacks=(keep_split,))
    assert any("incomplete checkpoint" in str(w.message) for w in caught) == partial_save
    assert "missing keys" not in caplog.text  # the tied head is re-tied on load, not reported lost

    assert resumed["resumed_from_step"] == (4 if partial_save else 5) and resumed["steps"] == expected["steps"] == 6
    assert seconds_before < resumed["train_seconds"] <= seconds_before + resumed["seconds_per_step"] * (6 - 4)
    assert resumed["final_train_loss"] == pytest.approx(expected["final_train_loss"], abs=1e-5)
    # the learned retention's trained scale ρ per Bayesian layer and head (the mixers at layers 1 and 3)
    assert list(expected["retention_scale"]) == ["layers.1", "layers.3"]
    assert all(0 <= rho <= 1 for heads in expected["retention_scale"].values() for rho in heads)
    for layer, heads in expected["retention_scale"].items():
        assert resumed["retention_scale"][layer] == pytest.approx(heads, abs=1e-6), layer
    for name, metrics in expected["eval"].items():
        for key, value in metrics.items():
            assert resumed["eval"][name][key] == pytest.approx(value, abs=1e-6), (name, key)
    for key, value in keep_whole.state.items():
        assert torch.allclose(keep_split.state[key], value, atol=1e-6, rtol=0), key
    # the parameters did move: the comparison is not of two untouched initialisations
    initial = KeepParameters()
    train(tiny_train_config(max_steps=1, learning_rate=1e-9), callbacks=(initial,))
    assert not torch.allclose(initial.state["embeddings.weight"], keep_whole.state["embeddings.weight"])


@pytest.mark.integration
def test_resumes_a_checkpoint_saved_without_the_clock(tmp_path):
    config = tiny_train_config(output_dir=str(tmp_path / "run"), save_steps=1, save_total_limit=None)
    with pytest.raises(Crash):
        train(config, callbacks=(CrashAfterCheckpoint(4),))
    state_file = tmp_path / "run" / "checkpoint-4" / "trainer_state.json"
    state = json.loads(state_file.read_text())
    del state["stateful_callbacks"]["TrainingClock"]  # as written before TrainingClock existed
    state_file.write_text(json.dumps(state))
    resumed = train(config)
    assert resumed["resumed_from_step"] == 4 and resumed["steps"] == 6
    # the 4 steps before the checkpoint are estimated at this call's rate, the 2 after it are timed
    step = resumed["seconds_per_step"]
    assert 4 * step <= resumed["train_seconds"] <= 6 * step * (1 + 1e-9)


@pytest.mark.integration
def test_a_run_stopped_after_its_last_checkpoint_resumes_without_another_step(tmp_path):
    whole, keep_whole = tiny_train_config(output_dir=str(tmp_path / "whole")), KeepParameters()
    expected = train(whole, callbacks=(keep_whole,))
    split = tiny_train_config(output_dir=str(tmp_path / "split"), save_steps=1, save_total_limit=None)
    with pytest.raises(Crash):
        train(split, callbacks=(CrashAfterCheckpoint(6),))  # stopped before its metrics were computed
    resumed = train(split)
    assert resumed["resumed_from_step"] == 6 and resumed["steps"] == 6 and resumed["train_seconds"] > 0
    for name, metrics in expected["eval"].items():
        assert resumed["eval"][name]["accuracy"] == pytest.approx(metrics["accuracy"], abs=1e-6), name
        assert resumed["eval"][name]["loss"] == pytest.approx(metrics["loss"], abs=1e-5), name


class FailInFirstStepAfterResume(TrainerCallback):
    def on_pre_optimizer_step(self, args, state, control, **kwargs):  # inside step 5: global_step is still 4
        if state.global_step == 4:
            raise RuntimeError("a failure in training, not in resuming")


@pytest.mark.integration
def test_only_a_failed_resume_is_reported_as_one(tmp_path):
    config = tiny_train_config(output_dir=str(tmp_path / "run"), save_steps=1, save_total_limit=None)
    with pytest.raises(Crash):
        train(config, callbacks=(CrashAfterCheckpoint(4),))
    with pytest.raises(RuntimeError, match="a failure in training"):  # after the resume: raised as it is
        train(config, callbacks=(FailInFirstStepAfterResume(),))
    for checkpoint in (tmp_path / "run").glob("checkpoint-*"):
        (checkpoint / "optimizer.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="(?s)could not resume from .*checkpoint-4.*delete it to start over"):
        train(config)


def test_training_clock_adds_the_resumed_checkpoints_time():
    clock, state = TrainingClock(), TrainerState()
    state.stateful_callbacks = {"TrainingClock": {"args": {}, "attributes": {"seconds": 100.0}}}
    clock.on_train_begin(None, state, None)
    clock.on_train_end(None, state, None)
    assert 100.0 <= clock.seconds < 110.0 and clock.state()["attributes"]["seconds"] == clock.seconds
    fresh = TrainingClock()
    fresh.on_train_begin(None, TrainerState(), None)  # a run from scratch, or a checkpoint without a clock
    assert fresh.seconds < 10.0


@pytest.mark.integration
def test_gradient_accumulation_matches_the_larger_batch():
    # labels of different examples hold different numbers of supervised tokens (two segments): the loss
    # is normalised by the supervised tokens of the whole accumulated batch, so 2 × 8 equals 1 × 16
    data = MQARData(vocab_size=64, train=(MQARSplit(32, 4, 16), MQARSplit(48, 10, 16)), test=(MQARSplit(32, 4, 8),))
    params = []
    for batch, accumulation in ((16, 1), (8, 2)):
        keep = KeepParameters()
        train(
            tiny_train_config(data=data, batch_size=batch, gradient_accumulation_steps=accumulation, max_steps=3),
            callbacks=(keep,),
        )
        params.append(keep.state)
    for key, value in params[0].items():
        assert torch.allclose(params[1][key], value, atol=1e-6, rtol=0), key


@pytest.mark.integration
def test_output_dir_of_another_config_is_refused(tmp_path):
    train(tiny_train_config(output_dir=str(tmp_path), max_steps=1))
    with pytest.raises(ValueError, match="different config.*learning_rate"):
        train(tiny_train_config(output_dir=str(tmp_path), max_steps=1, learning_rate=5e-3))


def test_a_run_that_fails_before_its_first_checkpoint_gives_its_folder_back(tmp_path):
    """The folder was claimed (its config recorded) before the model was built: a model that cannot be built
    locked it, and the corrected config was refused as 'a different config'."""
    with pytest.raises(ValueError, match="divisible by num_heads=3"):
        train(tiny_train_config(output_dir=str(tmp_path), model=ModelSpec(mixer="bayesian", d_model=16, num_heads=3)))
    assert not (tmp_path / CONFIG_FILE).exists()
    result = train(tiny_train_config(output_dir=str(tmp_path), max_steps=1))
    assert result["status"] == "ok" and (tmp_path / CONFIG_FILE).exists()


def test_resume_false_refuses_a_folder_with_an_earlier_runs_checkpoints(tmp_path):
    """They were kept and rotated by step number: the new run's checkpoint was deleted, the old one kept, and a
    later resume continued the old run."""
    train(tiny_train_config(output_dir=str(tmp_path), max_steps=2, save_steps=1))
    with pytest.raises(ValueError, match="resume=False, but .* holds checkpoint-2, final of an earlier run"):
        train(tiny_train_config(output_dir=str(tmp_path), max_steps=2, save_steps=1, resume=False))
    assert (tmp_path / CONFIG_FILE).exists()  # the earlier run's folder is left as it was


@pytest.mark.parametrize(
    "changes, match",
    [
        (dict(seed=2**32), r"seed must be in \[0, 2\*\*32\)"),
        (dict(data_seed=2**40), r"data_seed must be in \[0, 2\*\*32\)"),
        (dict(warmup=1.5), "a whole number of steps"),
        (dict(warmup=10.0), "longer than the run"),
        (dict(batch_size=64), "fewer than one batch"),
        (dict(batch_size=64, batching="by_segment"), "a train segment of at least one batch"),
    ],
)
def test_config_values_that_failed_late_are_refused_at_construction(changes, match):
    with pytest.raises(ValueError, match=match):
        tiny_train_config(**changes)


@pytest.mark.integration
def test_torchrun_two_processes_match_one_process_with_the_same_global_batch(tmp_path):
    script = REPO / "tests" / "train" / "ddp_script.py"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    single, ddp = tmp_path / "single.safetensors", tmp_path / "ddp.safetensors"
    subprocess.run(
        [sys.executable, str(script), str(single)], check=True, cwd=tmp_path, env=env, capture_output=True, timeout=300
    )
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    result = subprocess.run(
        [*torchrun, str(script), str(ddp)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    one, two = load_file(single), load_file(ddp)
    assert one.keys() == two.keys()
    for key in one:
        assert torch.allclose(one[key], two[key], atol=1e-5, rtol=0), key
