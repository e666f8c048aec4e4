"""Compiled and device-agnostic paths: ``torch.compile(fullgraph=True)`` traces the filters (``validate=False``)
and every layer's forward and backward without a graph break, and gives the eager result; every layer runs on
the ``meta`` device (no host synchronisation, no CPU-only assumption in the training path)."""

from __future__ import annotations

import pytest
import torch

from probseq.layers import Attention, BayesianLayer, DeltaNet, GatedDeltaNet, LinearAttention, Mamba2
from probseq.ops import bayes_filter, superposition_filter
from tests.helpers import assert_close, tiny_train_config

LAYERS = {
    "bayesian": (BayesianLayer, dict(hidden_size=32, num_heads=2, head_dim=16)),
    "bayesian_stationary": (BayesianLayer, dict(hidden_size=32, num_heads=2, head_dim=16, retention="stationary")),
    "gated_deltanet": (GatedDeltaNet, dict(hidden_size=32, num_heads=2, head_dim=16)),
    "deltanet": (DeltaNet, dict(hidden_size=32, num_heads=2)),
    "linear_attention": (LinearAttention, dict(hidden_size=32, num_heads=2)),
    "mamba2": (Mamba2, dict(hidden_size=32, head_dim=16, state_size=8)),
    "attention": (Attention, dict(hidden_size=32, num_heads=2)),
}


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def _filter_inputs(gen, length=40):
    batch, heads, key_dim = 2, 2, 8
    q, k, v = (torch.randn(batch, length, heads, key_dim, generator=gen, requires_grad=True) for _ in range(3))
    g = (-torch.rand(batch, length, heads, generator=gen)).requires_grad_()
    beta, gamma = (torch.rand(batch, length, heads, generator=gen).requires_grad_() for _ in range(2))
    return q, k, v, g, beta, gamma


def _grads(fn, inputs):
    for x in inputs:
        x.grad = None
    out = fn(*inputs)
    out.square().sum().backward()
    return [out.detach()] + [x.grad.clone() for x in inputs if x.grad is not None]  # γ has none on the reset path


@pytest.mark.parametrize("reset", [False, True], ids=["covariance", "reset"])
def test_bayes_filter_traces_as_one_graph_and_matches_eager(reset):
    inputs = _filter_inputs(torch.Generator().manual_seed(0))

    def run(q, k, v, g, beta, gamma):
        return bayes_filter(
            q, k, v, g, beta, None if reset else gamma, impl="chunked", chunk_size=16, validate=False
        ).output

    compiled = torch.compile(run, fullgraph=True, backend="eager")
    actual, expected = _grads(compiled, inputs), _grads(run, inputs)
    assert len(actual) == len(expected) == (6 if reset else 7)
    for name, a, b in zip(["output", "dq", "dk", "dv", "dg", "dbeta", "dgamma"], actual, expected):
        assert_close(a, b, 1e-6, name)


def test_bayes_filter_traces_again_at_a_new_length():
    """A second length (dynamo then traces with a symbolic length, and the balanced chunk length is computed from
    it): one graph each time, equal to eager."""

    def run(q, k, v, g, beta, gamma):
        return bayes_filter(q, k, v, g, beta, gamma, impl="chunked", chunk_size=16, validate=False).output

    compiled = torch.compile(run, fullgraph=True, backend="eager")
    for length in (40, 70):
        inputs = _filter_inputs(torch.Generator().manual_seed(length), length)
        for a, b in zip(_grads(compiled, inputs), _grads(run, inputs)):
            assert_close(a, b, 1e-6, f"T={length}")


def test_bayes_filter_with_two_chunk_lengths_traces_at_new_lengths_too():
    """Covariance chunks of 8, mean chunks of 16, then a second length (dynamo traces it with a symbolic length):
    one graph each time, equal to eager."""

    def run(q, k, v, g, beta, gamma):
        return bayes_filter(
            q, k, v, g, beta, gamma, impl="chunked", chunk_size=8, mean_chunk_size=16, validate=False
        ).output

    compiled = torch.compile(run, fullgraph=True, backend="eager")
    for length in (40, 70):
        inputs = _filter_inputs(torch.Generator().manual_seed(length), length)
        for a, b in zip(_grads(compiled, inputs), _grads(run, inputs)):
            assert_close(a, b, 1e-6, f"T={length}")


def test_superposition_filter_traces_as_one_graph():
    q, k, v, g, beta, _ = _filter_inputs(torch.Generator().manual_seed(1))
    run = torch.compile(
        lambda *x: superposition_filter(*x, impl="chunked", chunk_size=16, validate=False).output,
        fullgraph=True,
        backend="eager",
    )
    run(q, k, v, g, beta).sum().backward()
    assert q.grad is not None and torch.isfinite(q.grad).all()


@pytest.mark.parametrize("padded", [False, True], ids=["no_mask", "padding_mask"])
@pytest.mark.parametrize("name", list(LAYERS))
def test_layer_forward_and_backward_trace_as_one_graph_and_match_eager(name, padded):
    cls, kwargs = LAYERS[name]
    torch.manual_seed(0)
    layer = cls(**kwargs)
    x = torch.randn(2, 40, 32, requires_grad=True)
    mask = None
    if padded:  # a left-padded row and a row with a gap: the mask's checks must not break the graph
        mask = torch.ones(2, 40, dtype=torch.long)
        mask[0, :9] = 0
        mask[1, 20:25] = 0

    def run(x):
        return layer(x, attention_mask=mask)[0]

    eager = _grads(run, [x]) + [p.grad.clone() for p in layer.parameters() if p.grad is not None]
    layer.zero_grad(set_to_none=True)
    compiled = _grads(torch.compile(run, fullgraph=True, backend="eager"), [x])
    compiled += [p.grad.clone() for p in layer.parameters() if p.grad is not None]
    assert len(compiled) == len(eager)
    for i, (a, b) in enumerate(zip(compiled, eager)):
        assert_close(a, b, 1e-6, f"{name}: tensor {i} (output, dx, parameter gradients)")


@pytest.mark.parametrize("name", list(LAYERS))
def test_layer_runs_on_the_meta_device(name):
    """Shapes only, no data: a host synchronisation or a CPU-only call in the forward would fail here."""
    cls, kwargs = LAYERS[name]
    with torch.device("meta"):
        layer = cls(**kwargs)
        x = torch.empty(2, 40, 32, requires_grad=True)
    out = layer(x)[0]
    assert out.device.type == "meta" and out.shape == (2, 40, 32)
    out.sum().backward()
    assert x.grad.shape == x.shape


def test_training_config_compile_reaches_the_trainer_and_keeps_eager_fingerprints(tmp_path):
    """``compile=true`` is the Trainer's ``torch_compile``; at its default the fingerprint of every run cached
    before the field existed is unchanged (it is left out of the identity)."""
    import dataclasses

    from probseq.train.trainer import training_arguments

    eager, compiled = tiny_train_config(), tiny_train_config(compile=True)
    assert "compile" not in eager.identity() and compiled.identity()["compile"] is True
    assert compiled.fingerprint() != eager.fingerprint()
    assert dataclasses.replace(compiled, compile=False).fingerprint() == eager.fingerprint()
    assert training_arguments(compiled, tmp_path).torch_compile is True
    assert training_arguments(eager, tmp_path).torch_compile is False


@pytest.mark.parametrize("mixer", ["bayesian", "gated_deltanet", "deltanet", "linear_attention", "mamba2", "attention"])
def test_the_experiments_model_traces_as_one_graph(mixer):
    """The MQAR/recall model (what ``TrainConfig.compile`` compiles): no graph break, the token-id check included
    (it is skipped while compiling: it would need the host to read a device value)."""
    from probseq.models import ZoologyConfig, ZoologyModel

    torch.manual_seed(0)
    model = ZoologyModel(ZoologyConfig(vocab_size=64, d_model=32, mixer=mixer))
    ids = torch.randint(0, 64, (2, 24))
    mask = torch.zeros(2, 24, dtype=torch.bool)
    mask[:, -4:] = True
    run = torch.compile(lambda i, m: model(input_ids=i, logits_mask=m).logits, fullgraph=True, backend="eager")
    compiled = run(ids, mask)
    assert_close(compiled, model(input_ids=ids, logits_mask=mask).logits, 1e-6, mixer)
    compiled.sum().backward()
    assert all(p.grad is not None for name, p in model.named_parameters() if "c_bias" not in name)
