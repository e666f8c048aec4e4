"""probseq bench: the plan per case group, the MQAR training-throughput cases, the ratio table."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from probseq import bench
from probseq.train.trainer import run_threads

TINY = dataclasses.replace(
    bench.PRESETS["quick"],
    repeats=1,
    warmup=0,
    mqar_d_model=16,
    mqar_vocab=512,
    mqar_batch=2,
    mqar_length=256,
    mqar_kv_pairs=4,  # the ratio row is at T = 256
    recall_batch=2,
)


def test_plan_groups_cases():
    mqar = bench.plan(dataclasses.replace(TINY, cases="mqar"))
    assert mqar == (
        [(f"mqar_train_{m}", 256, "train") for m in TINY.mqar_mixers]
        + [(f"recall_train_{m}", bench.recall_task(TINY).seq_len, "train") for m in TINY.recall_mixers]
    )
    everything = bench.plan(TINY)
    assert set(mqar) < set(everything)
    filters = bench.plan(dataclasses.replace(TINY, cases="filters"))
    assert {("bayes_chunked_small", 256, "fwd+bwd"), ("gdn_chunked_small", 256, "fwd+bwd")} <= set(filters)
    assert not any(case[2] == "train" for case in bench.plan(dataclasses.replace(TINY, cases="layer")))


@pytest.mark.parametrize("mixer", ["bayesian", "attention"])
def test_mqar_training_step_is_an_optimizer_step(mixer):
    """The timed call trains: the parameters move and the loss on its batch falls over a few steps."""
    with run_threads(1):
        model, step = bench.mqar_training_step(mixer, 256, TINY)
        before = [p.detach().clone() for p in model.parameters()]
        losses = [float(step()) for _ in range(5)]
        unchanged = [name for (name, p), b in zip(model.named_parameters(), before) if torch.equal(p, b)]
    # c_bias alone may stay: at the function-preserving start (c_scale = 0) γ ≡ 0 has no gradient into it
    assert model.config.mixer == mixer and all(name.endswith("c_bias") for name in unchanged)
    assert losses[-1] < losses[0]


@pytest.mark.integration
def test_run_bench_reports_mqar_throughput():
    with run_threads(1):
        results = bench.run_bench(
            dataclasses.replace(TINY, cases="mqar", mqar_mixers=("bayesian", "gated_deltanet"), recall_mixers=())
        )
    rows = {m["method"]: m for m in results["measurements"]}
    assert set(rows) == {"mqar_train_bayesian", "mqar_train_gated_deltanet"}
    for row in rows.values():
        assert row["mode"] == "train" and row["seconds"] > 0
        assert row["tokens_per_s"] == pytest.approx(TINY.mqar_batch * TINY.mqar_length / row["seconds"])
    ratio = next(r for r in results["ratios"] if r["figure"].startswith("MQAR model training step"))
    assert ratio["ratio"] == pytest.approx(
        rows["mqar_train_bayesian"]["seconds"] / rows["mqar_train_gated_deltanet"]["seconds"]
    )
    assert ratio["met"] == (ratio["ratio"] <= 1.2)
    assert "mqar_train_bayesian" in bench.format_tables(results)


@pytest.mark.parametrize("mixer", ["bayesian", "mamba2"])
def test_recall_training_step_is_an_optimizer_step_on_the_recall_segment(mixer):
    with run_threads(1):
        model, step = bench.recall_training_step(mixer, TINY)
        losses = [float(step()) for _ in range(5)]
    assert model.config.mixer == mixer and model.config.vocab_size == 1 + 2 * 64 + 64
    assert losses[-1] < losses[0]


def test_the_experiments_filter_shape_uses_each_form_at_its_default_chunk_size(monkeypatch):
    """``_small``: one sequence of B·H = 128 heads, K = V = 32 — the MQAR/recall layers' filter calls; by default the
    Bayesian form and Gated DeltaNet each at its layer's default chunk sizes for K = 32 (the Bayesian covariance path
    at 16, its mean path at Gated DeltaNet's 32); the layer rows pass the filter rows' pair."""
    from probseq.layers import BayesianLayer, GatedDeltaNet

    x = bench._inputs(TINY, 64, requires_grad=False, small=True)
    assert x["q"].shape == (1, 64, 128, 32) and x["v"].shape == (1, 64, 128, 32)
    assert TINY.chunk_size is None and TINY.bayes_chunk_size is None
    layer = BayesianLayer(hidden_size=64, num_heads=2, head_dim=32)
    expected = {
        False: (layer.chunk_size, layer.mean_chunk_size),
        True: (GatedDeltaNet(hidden_size=64, num_heads=2, head_dim=32, expand_v=1).chunk_size, None),
    }
    assert expected == {False: (16, 32), True: (32, None)}
    calls = {}
    original = bench.bayes_filter

    def spy(*args, **kwargs):
        reset = kwargs["gamma"] is None if "gamma" in kwargs else args[5] is None
        calls[reset] = (kwargs["chunk_size"], kwargs.get("mean_chunk_size"))
        return original(*args, **kwargs)

    monkeypatch.setattr(bench, "bayes_filter", spy)
    bench._method("bayes_chunked_small", TINY)(x)
    bench._method("gdn_chunked_small", TINY)(x)
    assert calls == expected
    pinned = dataclasses.replace(TINY, chunk_size=64, bayes_chunk_size=32)  # --set overrides both
    calls.clear()
    bench._method("bayes_chunked_small", pinned)(x)
    bench._method("gdn_chunked_small", pinned)(x)
    assert calls == {False: (32, 64), True: (64, None)}
    layer = bench._layer("layer_bayes", dataclasses.replace(pinned, layer_head_dim=32))
    assert (layer.chunk_size, layer.mean_chunk_size) == (32, 64)


def test_layer_filter_case_runs_on_the_layers_own_filter_inputs():
    """``layer_bayes_filter`` times ``bayes_filter`` alone on what the Bayesian Layer hands it — the layer's public
    ``filter_inputs``, nothing patched — as fresh leaves, so forward+backward reaches every filter input."""
    config = dataclasses.replace(TINY, layer_hidden_size=32, layer_heads=2, layer_head_dim=16, layer_batch=1)
    layer = bench._layer("layer_bayes_filter", config)
    x = torch.randn(1, 24, 32, generator=torch.Generator().manual_seed(0))
    with run_threads(1):
        inputs, given = bench._filter_arguments(layer, x), layer.filter_inputs(x)
        leaves = {name for name, a in inputs.items() if isinstance(a, torch.Tensor) and a.requires_grad}
        assert sorted(inputs) == sorted(given) and leaves == {"q", "k", "v", "g", "beta", "gamma"}
        for name, value in inputs.items():
            if name in leaves:
                assert value.is_leaf and torch.equal(value, given[name]), name
            else:
                assert value == given[name], name
        bench.bayes_filter(**inputs).output.sum().backward()
        assert all(inputs[name].grad is not None and bool(inputs[name].grad.isfinite().all()) for name in leaves)
        bench._layer_call("layer_bayes_filter", 24, config)()
    assert "mock" not in bench.__dict__


@pytest.mark.integration
def test_memory_profiling_prints_nothing_and_keeps_stderr():
    """The profiler's C++ lines ("USDT: … profiler_start") stay off the terminal; stderr works afterwards."""
    import subprocess
    import sys

    script = (
        "import sys, torch\nfrom probseq.bench import peak_memory_mb\n"
        "print(peak_memory_mb(lambda: torch.ones(1000, 1000) @ torch.ones(1000, 1000)))\n"
        "print('after', file=sys.stderr)\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert float(result.stdout) > 3.9  # the 4 MB product (at least)
    assert result.stderr.strip() == "after"


def test_compiled_mqar_cases_only_when_asked_and_their_ratio_rows():
    assert not any(case[0].startswith("mqar_compiled_") for case in bench.plan(TINY))
    config = dataclasses.replace(TINY, cases="mqar", compiled_mixers=("gated_deltanet",))
    assert ("mqar_compiled_gated_deltanet", 256, "train") in bench.plan(config)
    measurements = [
        bench.Measurement(name, 256, "train", seconds, 1.0, None, None, None, [seconds])
        for name, seconds in (("mqar_train_gated_deltanet", 0.5), ("mqar_compiled_gated_deltanet", 0.3))
    ]
    row = next(r for r in bench.ratios(measurements) if "compiled / eager" in r["figure"])
    assert row["ratio"] == pytest.approx(0.6) and row["met"] is None and "gated_deltanet" in row["figure"]
    # no eager measurement of that mixer: no row (nothing to divide by)
    assert not any("compiled / eager" in r["figure"] for r in bench.ratios(measurements[1:]))


@pytest.mark.slow  # inductor compiles for ≈ 2 min on the 2-core machine
def test_the_compiled_mqar_step_trains_like_the_eager_one():
    with run_threads(1):
        _, eager = bench.mqar_training_step("gated_deltanet", 256, TINY)
        _, compiled = bench.mqar_training_step("gated_deltanet", 256, TINY, compiled=True)
        eager_losses = [float(eager()) for _ in range(3)]
        compiled_losses = [float(compiled()) for _ in range(3)]
    assert compiled_losses == pytest.approx(eager_losses, rel=1e-4)  # same seed, data and steps
    assert compiled_losses[-1] < compiled_losses[0]
