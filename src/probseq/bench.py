"""``probseq bench`` — the performance protocol (README.md, "Experiments and benchmark"; measured: results/README.md).

Times forward and forward+backward of each method at ``B=1, H=4, K=V=64`` (configurable), float32,
all in one run, and reports time, tokens/s, peak memory, analytical FLOPs and achieved GFLOP/s next to
this machine's float32 matmul GFLOP/s measured in the same run. Ratios, not absolute times, are the
figures of merit on shared machines; the ratio table compares them with the project's targets.

Methods: the Bayesian Layer (chunked, recurrent, and the token-loop reference), Gated DeltaNet
through the same chunked code path (``γ ≡ 0``), chunked linear attention, PyTorch SDPA causal
attention, and — when flash-linear-attention is installed — its pure-PyTorch references
``naive_chunk_gated_delta_rule`` and ``naive_mesa_net_CG`` (30 CG iterations).

Layer and model cases (``--layer`` runs only these): the Bayesian Layer (``retention="learned"``) against
the Gated DeltaNet layer, both as fla builds them (projections, short convolutions, gates, gated norm,
output projection) at ``hidden_size=512``, 4 heads of ``head_dim=128``, ``expand_v=1``, ``B=2``,
``T=2048``, forward+backward into the input and every parameter; ``bayes_filter`` alone, forward+backward
on the very inputs the Bayesian Layer hands it (its ``filter_inputs``), which gives the share of
the layer's time spent in the filter; and the time per generated token of a small Bayesian
``ProbSeqForCausalLM`` (2 layers of the same width, byte vocabulary) after a prefill of 128 and of 8192
tokens: single-token forwards with the cache, as ``generate`` runs them.

MQAR training cases (``--mqar`` runs only these): the training throughput of the MQAR model
(:class:`probseq.models.mqar_model.ZoologyModel`, ``[conv block, mixer] × 2``) per mixer at the ``cpu``
preset's shapes of ``probseq mqar`` (``d_model=64``, vocabulary 8192, a batch of 64 sequences of 256 tokens
with 64 key–value pairs): one optimizer step — forward with logits at the supervised positions only, the
cross-entropy, backward, AdamW — as :class:`probseq.train.PreShiftedTrainer` runs it, less its gradient
clipping and learning-rate schedule (negligible at this size); tokens/s counts every input token of the batch.
With ``compiled_mixers`` (none by default: each costs minutes of compilation) the same step again with the
model's forward under ``torch.compile(dynamic=False)`` (``mqar_compiled_<mixer>``; the Trainer's ``torch_compile``,
``TrainConfig.compile``), and an info row per mixer: compiled / eager.

Conventions: every case is timed in ``warmup + repeats`` interleaved rounds (each round runs every
case once, so the drift of a shared machine affects all methods alike) and a time is the median of
the ``repeats`` timed rounds; the slow token-loop reference runs once. Forward runs under
``torch.no_grad``; forward+backward backpropagates a dense all-ones gradient of the output into every input
(a loss's gradient is dense; ``output.sum()``'s is a stride-0 expansion, which sends the batched products
of the backward down a slow per-matrix path and so adds the same time to every filter). Peak memory is
the peak of bytes allocated by torch during one call (profiler allocation events), inputs excluded;
it is not profiled for the token loops (reference, recurrent, generation steps), whose cost the profiler
would dominate.
FLOPs are analytical (multiply-add = 2) for the forward; forward+backward counts 3× the forward.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import statistics
import sys
import time
import warnings
from dataclasses import dataclass, field
from typing import Callable, Literal

import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm import tqdm

from probseq.experiments.common import apply_overrides, environment
from probseq.files import atomic_write_json, check_same_config, check_writable_file
from probseq.layers.utils import delta_chunk_size
from probseq.ops import bayes_filter, bayes_step, superposition_filter
from probseq.train.config import MIXER_NAMES


@dataclass(frozen=True)
class BenchConfig:
    """What ``probseq bench`` measures; ``--set key=value`` overrides any field."""

    preset: Literal["quick", "full"] = "quick"
    batch: int = 1
    heads: int = 4
    key_dim: int = 64
    value_dim: int = 64
    # None: each delta-rule filter and layer at its layer's default for the key dim (delta_chunk_size: Bayesian 16 /
    # 32 / 64 and Gated DeltaNet 32 / 32 / 64 at K = 32 / 64 / 128), linear attention and fla's naive GDN at 64
    chunk_size: int | None = None  # every chunked filter but the Bayesian covariance path's
    bayes_chunk_size: int | None = None  # the Bayesian covariance path's
    lengths: tuple[int, ...] = (1024, 4096, 16384)
    reference_length: int = 4096  # the token-loop reference is slow: measured at this length only
    decode_positions: tuple[int, ...] = (1024, 16384)
    repeats: int = 5
    warmup: int = 2  # a model's training step keeps slowing its first calls (one warm-up round left it 2× slow)
    seed: int = 0
    cases: Literal["all", "filters", "layer", "mqar"] = "all"  # "layer" / "mqar": only those cases
    layer_hidden_size: int = 512
    layer_heads: int = 4
    layer_head_dim: int = 128
    layer_batch: int = 2
    layer_length: int = 2048
    generate_contexts: tuple[int, ...] = (128, 8192)
    generate_layers: int = 2
    mqar_mixers: tuple[str, ...] = MIXER_NAMES
    mqar_d_model: int = 64
    mqar_vocab: int = 8192
    mqar_batch: int = 64
    mqar_length: int = 256
    mqar_kv_pairs: int = 64
    small_heads: int = 128  # the experiments' filter shape: B·H = 64 · 2, K = V = 32, T = 256
    small_key_dim: int = 32
    small_length: int = 256
    recall_mixers: tuple[str, ...] = ("bayesian", "gated_deltanet", "mamba2")
    compiled_mixers: tuple[str, ...] = ()  # MQAR model steps also under torch.compile (minutes of compiling each)
    recall_batch: int = 64  # the recall cpu preset's training batch: 8 pairs, gap 16, 1 collision, 2 distractors
    recall_pairs: int = 8
    recall_gap: int = 16


PRESETS = {
    "quick": BenchConfig(),
    "full": BenchConfig(
        preset="full",
        lengths=(1024, 2048, 4096, 8192, 16384, 32768),
        decode_positions=(1024, 4096, 16384, 65536),
        repeats=7,
        warmup=2,
    ),
}

# (description, numerator, denominator, comparison, target): each side is (method, T, pass); comparison
# "info" reports the ratio without a target.
TARGETS = [
    (
        "Bayesian chunked fwd+bwd / our Gated DeltaNet chunked fwd+bwd, T=4096, K=64",
        ("bayes_chunked", 4096, "fwd+bwd"),
        ("gdn_chunked", 4096, "fwd+bwd"),
        "<=",
        1.5,
    ),
    (
        "Bayesian chunked fwd+bwd / our Gated DeltaNet, K=32, T=256, B·H=128 (the experiments' shape)",
        ("bayes_chunked_small", 256, "fwd+bwd"),
        ("gdn_chunked_small", 256, "fwd+bwd"),
        "<=",
        1.3,
    ),
    (
        "Bayesian chunked fwd+bwd / fla naive_chunk_gated_delta_rule fwd+bwd, T=4096",
        ("bayes_chunked", 4096, "fwd+bwd"),
        ("fla_gdn_naive_chunk", 4096, "fwd+bwd"),
        "<=",
        1.0,
    ),
    (
        "Bayesian chunked fwd+bwd time, T=16384 / T=4096",
        ("bayes_chunked", 16384, "fwd+bwd"),
        ("bayes_chunked", 4096, "fwd+bwd"),
        "<=",
        4.6,
    ),
    (
        "Bayesian chunked forward / PyTorch SDPA causal forward, T=16384",
        ("bayes_chunked", 16384, "fwd"),
        ("sdpa_causal", 16384, "fwd"),
        "<=",
        0.5,
    ),
    (
        "fla naive MesaNet (CG, 30 iters) fwd+bwd / Bayesian chunked fwd+bwd, T=1024",
        ("fla_mesanet_cg", 1024, "fwd+bwd"),
        ("bayes_chunked", 1024, "fwd+bwd"),
        ">=",
        3.0,
    ),
    (
        "Bayesian reference (token loop) fwd+bwd / chunked fwd+bwd, T=4096",
        ("bayes_reference", 4096, "fwd+bwd"),
        ("bayes_chunked", 4096, "fwd+bwd"),
        ">=",
        20.0,
    ),
    (
        "Bayesian chunked fwd+bwd, float64 covariance path / float32, T=4096 (the cost of RLS accuracy)",
        ("bayes_chunked_cov64", 4096, "fwd+bwd"),
        ("bayes_chunked", 4096, "fwd+bwd"),
        "<=",
        2.0,
    ),
    (
        "decoding step time at position 16,384 / at position 1,024",
        ("bayes_step", 16384, "step"),
        ("bayes_step", 1024, "step"),
        "<=",
        1.1,
    ),
    (
        "Bayesian Layer (learned γ) fwd+bwd / Gated DeltaNet layer fwd+bwd, D=512, 4 heads × 128, B=2, T=2048",
        ("layer_bayes", 2048, "fwd+bwd"),
        ("layer_gdn", 2048, "fwd+bwd"),
        "<=",
        1.6,
    ),
    (
        "share of the Bayesian Layer's fwd+bwd time spent in bayes_filter (same inputs), T=2048",
        ("layer_bayes_filter", 2048, "fwd+bwd"),
        ("layer_bayes", 2048, "fwd+bwd"),
        "info",
        None,
    ),
    (
        "generation time per token, small Bayesian ProbSeqForCausalLM, context 8,192 / context 128",
        ("generate_step", 8192, "step"),
        ("generate_step", 128, "step"),
        "<=",
        1.2,
    ),
    (
        "MQAR model training step, Bayesian Layer (learned γ) / Gated DeltaNet (mqar_* shapes, T=256)",
        ("mqar_train_bayesian", 256, "train"),
        ("mqar_train_gated_deltanet", 256, "train"),
        "<=",
        1.2,
    ),
    (
        "MQAR model training step, Mamba-2 / Gated DeltaNet (mqar_* shapes, T=256)",
        ("mqar_train_mamba2", 256, "train"),
        ("mqar_train_gated_deltanet", 256, "train"),
        "<=",
        1.1,
    ),
    (
        "recall model training step, Bayesian Layer (learned γ) / Gated DeltaNet (recall_* shapes)",
        ("recall_train_bayesian", None, "train"),
        ("recall_train_gated_deltanet", None, "train"),
        "<=",
        1.2,
    ),
]


@dataclass
class Measurement:
    method: str
    length: int
    mode: str  # "fwd", "fwd+bwd", "step" or "train" (one optimizer step)
    seconds: float
    tokens_per_s: float
    peak_mb: float | None
    gflop: float | None
    gflops: float | None
    runs: list[float] = field(default_factory=list)


# ---------------------------------------------------------------------------------------------
# Analytical forward FLOPs per (batch · head), multiply-add = 2.


def flops(method: str, length: int, key_dim: int, value_dim: int, chunk: int) -> float | None:
    k, v, c = key_dim, value_dim, chunk
    n = math.ceil(length / c)
    mean_path = n * (2 * c * c * k + c * c * (v + k) + 2 * c * c * k + 2 * c * c * v + 6 * c * k * v)
    if method == "gdn_chunked" or method == "fla_gdn_naive_chunk":
        return mean_path
    if method in ("bayes_chunked", "bayes_chunked_cov64"):
        covariance_path = n * (2 * c * c * k + 4 * c * k * k + 2 * c * c * k + c**3 / 3 + c * c * k)
        return mean_path + covariance_path
    if method in ("bayes_recurrent", "bayes_reference"):
        return length * (8 * k * k + 6 * k * v)
    if method == "bayes_step":
        return 8 * k * k + 6 * k * v
    if method == "la_chunked":
        return n * (2 * c * c * k + 2 * c * c * v + 4 * c * k * v)
    if method == "sdpa_causal":
        return 2 * length * length * (k + v) / 2
    return None


def matmul_gflops(size: int = 1024, repeats: int = 5) -> float:
    """This machine's float32 matmul throughput (GFLOP/s), measured now."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    a @ b
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - start)
    return 2 * size**3 / statistics.median(times) / 1e9


@contextlib.contextmanager
def _silent_stderr():
    """File descriptor 2 to /dev/null (C++ libraries write there directly, past ``sys.stderr``)."""
    sys.stderr.flush()
    try:
        saved = os.dup(2)
    except OSError:  # no fd 2 (2>&-): nothing to silence
        yield
        return
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
    except OSError:
        os.close(saved)
        yield
        return
    os.dup2(devnull, 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def peak_memory_mb(fn: Callable[[], object]) -> float:
    """Peak bytes allocated by torch during ``fn()`` (MB), from the profiler's allocation events."""
    from torch.profiler import ProfilerActivity, profile

    prof = profile(activities=[ProfilerActivity.CPU], profile_memory=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with _silent_stderr():  # kineto prints "USDT: … profiler_start" / "profiler_stop" from C++
            prof.start()
        try:
            fn()
        finally:
            with _silent_stderr():
                prof.stop()
    current = peak = 0
    for event in sorted(prof.events(), key=lambda e: e.time_range.start):
        usage = event.cpu_memory_usage if event.name == "[memory]" else event.self_cpu_memory_usage
        current += usage
        peak = max(peak, current)
    return peak / 1e6


# ---------------------------------------------------------------------------------------------
# The methods: each returns (forward, forward+backward) closures over fresh inputs.


def _inputs(config: BenchConfig, length: int, requires_grad: bool, small: bool = False) -> dict[str, torch.Tensor]:
    """Random filter inputs ``[B, T, H, ·]``; ``small``: the experiments' shape (``small_*``, B = 1)."""
    gen = torch.Generator().manual_seed(config.seed)
    heads, key_dim, value_dim = (
        (config.small_heads, config.small_key_dim, config.small_key_dim)
        if small
        else (config.heads, config.key_dim, config.value_dim)
    )
    shape = (1 if small else config.batch, length, heads)
    x = {
        "q": torch.randn(*shape, key_dim, generator=gen),
        "k": F.normalize(torch.randn(*shape, key_dim, generator=gen), dim=-1),
        "v": torch.randn(*shape, value_dim, generator=gen),
        "g": F.logsigmoid(torch.randn(shape, generator=gen) + 4),
        "beta": torch.rand(shape, generator=gen) * 0.9 + 0.05,
        "gamma": torch.rand(shape, generator=gen),
    }
    return {name: t.requires_grad_(requires_grad) for name, t in x.items()}


def chunk_sizes(config: BenchConfig, key_dim: int) -> tuple[int, int, int]:
    """(Bayesian covariance path, Gated DeltaNet and the Bayesian mean path, other chunked filters) chunk sizes at
    ``key_dim``: the config's, or the layers' defaults (:func:`~probseq.layers.utils.delta_chunk_size`) and 64."""
    bayes = config.bayes_chunk_size or delta_chunk_size(key_dim, None)
    gdn = config.chunk_size or delta_chunk_size(key_dim, None, covariance=False)
    return bayes, gdn, config.chunk_size or 64


def _method(name: str, config: BenchConfig) -> Callable[[dict], torch.Tensor] | None:
    name = name.removesuffix("_small")  # the same method at the experiments' shape (_inputs)

    def cb(x):
        return chunk_sizes(config, x["k"].shape[-1])[0]

    def cg(x):
        return chunk_sizes(config, x["k"].shape[-1])[1]

    c = chunk_sizes(config, config.key_dim)[2]
    if name == "bayes_chunked":
        return lambda x: bayes_filter(**x, impl="chunked", chunk_size=cb(x), mean_chunk_size=cg(x)).output
    if name == "bayes_chunked_cov64":  # the covariance path in float64 (accuracy near RLS; docs/numerics.md)
        return lambda x: (
            bayes_filter(
                **x, impl="chunked", chunk_size=cb(x), mean_chunk_size=cg(x), covariance_dtype=torch.float64
            ).output
        )
    if name == "bayes_recurrent":
        return lambda x: bayes_filter(**x, impl="recurrent").output
    if name == "bayes_reference":
        return lambda x: bayes_filter(**x, impl="reference").output
    if name == "gdn_chunked":
        return lambda x: bayes_filter(**{**x, "gamma": None}, impl="chunked", chunk_size=cg(x)).output
    if name == "la_chunked":
        return lambda x: superposition_filter(x["q"], x["k"], x["v"], impl="chunked", chunk_size=c).output
    if name == "sdpa_causal":
        return lambda x: F.scaled_dot_product_attention(*(x[n].transpose(1, 2) for n in "qkv"), is_causal=True)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from fla.ops.gated_delta_rule.naive import naive_chunk_gated_delta_rule
            from fla.ops.mesa_net.naive import naive_mesa_net_CG
    except ImportError:
        return None
    if name == "fla_gdn_naive_chunk":
        return lambda x: naive_chunk_gated_delta_rule(x["q"], x["k"], x["v"], x["g"], x["beta"], chunk_size=c)[0]
    if name == "fla_mesanet_cg":

        def mesa(x):
            lamb = torch.ones(config.heads, config.key_dim)
            return naive_mesa_net_CG(x["q"], x["k"], x["v"], x["g"], lamb, x["beta"], c, max_CG_iteration=30)[0]

        return mesa
    raise ValueError(f"unknown method {name!r}")


def _call(name: str, length: int, mode: str, config: BenchConfig) -> Callable[[], object] | None:
    """A closure running one method once on fixed inputs (``None`` when the method is not installed)."""
    if name in LAYER_METHODS:
        return _layer_call(name, length, config)
    if name == "generate_step":
        return _generate_call(length, config)
    if name.startswith(MQAR_PREFIX):
        return mqar_training_step(name[len(MQAR_PREFIX) :], length, config)[1]
    if name.startswith(COMPILED_PREFIX):
        return mqar_training_step(name[len(COMPILED_PREFIX) :], length, config, compiled=True)[1]
    if name.startswith(RECALL_PREFIX):
        return recall_training_step(name[len(RECALL_PREFIX) :], config)[1]
    if name == "bayes_step":
        return _step_call(length, config)
    method = _method(name, config)
    if method is None:
        return None
    backward = mode == "fwd+bwd"
    x = _inputs(config, length, requires_grad=backward, small=name.endswith("_small"))

    def call():
        if backward:
            for t in x.values():
                t.grad = None
            dense_backward(method(x))
        else:
            with torch.no_grad():
                method(x)

    return call


def dense_backward(output: torch.Tensor) -> None:
    """Backpropagate ``∂(Σ output)/∂output = 1`` as a dense tensor (what a loss hands a layer)."""
    output.backward(torch.ones_like(output))


def _step_call(position: int, config: BenchConfig) -> Callable[[], object]:
    """One decoding step from the state after ``position`` tokens (prefilled by the chunked form)."""
    x = _inputs(config, position + 1, requires_grad=False)
    with torch.no_grad():
        state = bayes_filter(
            **{n: t[:, :position] for n, t in x.items()},
            output_final_state=True,
            chunk_size=chunk_sizes(config, config.key_dim)[0],
        ).state
    token = {n: t[:, position] for n, t in x.items()}

    def call():
        with torch.no_grad():
            for _ in range(STEPS_PER_CALL):
                bayes_step(**token, state=state)

    return call


STEPS_PER_CALL = 20  # a decoding step is ~0.1 ms: time several per call
GENERATE_STEPS_PER_CALL = 5  # a model step is tens of ms on a CPU (``validate=True``'s checks included)


def steps_per_call(case: tuple[str, int, str]) -> int:
    """Single-token steps one call of ``case`` runs (1 for a whole-sequence case)."""
    if case[2] != "step":
        return 1
    return GENERATE_STEPS_PER_CALL if case[0] == "generate_step" else STEPS_PER_CALL


# ---------------------------------------------------------------------------------------------
# Layer and model cases.

LAYER_METHODS = ("layer_bayes", "layer_gdn", "layer_bayes_filter")


def _layer(name: str, config: BenchConfig) -> torch.nn.Module:
    from probseq.layers import BayesianLayer, GatedDeltaNet

    torch.manual_seed(config.seed)
    sizes = dict(
        hidden_size=config.layer_hidden_size,
        num_heads=config.layer_heads,
        head_dim=config.layer_head_dim,
        expand_v=1,
    )
    if name == "layer_gdn":
        return GatedDeltaNet(**sizes, chunk_size=config.chunk_size)  # None: the layers' defaults
    _, mean_chunk, _ = chunk_sizes(config, config.layer_head_dim)  # the filter rows' mean path
    return BayesianLayer(**sizes, retention="learned", chunk_size=config.bayes_chunk_size, mean_chunk_size=mean_chunk)


def _filter_arguments(layer: torch.nn.Module, x: torch.Tensor) -> dict[str, object]:
    """The arguments ``layer`` passes to ``bayes_filter`` on ``x``
    (:meth:`~probseq.layers.BayesianLayer.filter_inputs`), its float tensors as fresh leaves that require grad."""
    with torch.no_grad():
        inputs = layer.filter_inputs(x)
    return {
        name: a.detach().clone().requires_grad_(True) if isinstance(a, torch.Tensor) and a.is_floating_point() else a
        for name, a in inputs.items()
    }


def _layer_call(name: str, length: int, config: BenchConfig) -> Callable[[], object]:
    """Forward+backward of a whole layer (``layer_bayes``, ``layer_gdn``) or of the Bayesian Layer's filter
    alone on the inputs the layer gives it (``layer_bayes_filter``)."""
    layer = _layer(name, config)
    gen = torch.Generator().manual_seed(config.seed)
    x = torch.randn(config.layer_batch, length, config.layer_hidden_size, generator=gen).requires_grad_(True)
    if name == "layer_bayes_filter":
        inputs = _filter_arguments(layer, x)
        leaves = [a for a in inputs.values() if isinstance(a, torch.Tensor) and a.requires_grad]

        def call():
            for t in leaves:
                t.grad = None
            dense_backward(bayes_filter(**inputs).output)

        return call

    def call():
        layer.zero_grad(set_to_none=True)
        x.grad = None
        dense_backward(layer(x)[0])

    return call


def _generate_call(context: int, config: BenchConfig) -> Callable[[], object]:
    """``GENERATE_STEPS_PER_CALL`` single-token forwards with the cache of a small Bayesian model prefilled with
    ``context`` tokens (the state stays the same size, so later steps cost the same)."""
    from probseq.models import ProbSeqConfig, ProbSeqForCausalLM

    torch.manual_seed(config.seed)
    model = ProbSeqForCausalLM(
        ProbSeqConfig(
            vocab_size=256,
            hidden_size=config.layer_hidden_size,
            num_hidden_layers=config.generate_layers,
            num_heads=config.layer_heads,
            head_dim=config.layer_head_dim,
            expand_v=1.0,
            mixer="bayesian",
            retention="learned",
            chunk_size=config.bayes_chunk_size,
            bos_token_id=None,
            eos_token_id=None,
        )
    ).eval()
    ids = torch.randint(0, 256, (1, context + 1), generator=torch.Generator().manual_seed(config.seed))
    with torch.no_grad():
        cache = model(ids[:, :context], use_cache=True, logits_to_keep=1).cache
    token = ids[:, context:]

    def call():
        with torch.no_grad():
            for _ in range(GENERATE_STEPS_PER_CALL):
                model(token, cache=cache, use_cache=True)

    return call


MQAR_PREFIX = "mqar_train_"
COMPILED_PREFIX = "mqar_compiled_"


def mqar_training_step(
    mixer: str, length: int, config: BenchConfig, compiled: bool = False
) -> tuple[torch.nn.Module, Callable[[], Tensor]]:
    """The MQAR model with ``mixer`` and a closure that runs one training step of it on a fixed batch of
    MQAR data (``config.mqar_*``) and returns the step's loss; ``compiled``: the forward under
    ``torch.compile(dynamic=False)`` (compiled by the first call: the bench's warm-up round)."""
    from probseq.models.mqar_model import ZoologyConfig, ZoologyModel
    from probseq.tasks import IGNORE_INDEX, multiquery_ar
    from probseq.train.metrics import pre_shifted_cross_entropy

    torch.manual_seed(config.seed)
    model = ZoologyModel(ZoologyConfig(vocab_size=config.mqar_vocab, d_model=config.mqar_d_model, mixer=mixer))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    inputs, labels = multiquery_ar(
        config.mqar_vocab, config.mqar_batch, length, seed=config.seed, num_kv_pairs=config.mqar_kv_pairs
    )
    mask = labels != IGNORE_INDEX
    forward = torch.compile(model, dynamic=False) if compiled else model

    def call():
        optimizer.zero_grad(set_to_none=True)
        logits = forward(input_ids=inputs, logits_mask=mask).logits
        loss = pre_shifted_cross_entropy(logits, labels)
        loss.backward()
        optimizer.step()
        return loss.detach()

    return model, call


RECALL_PREFIX = "recall_train_"


def recall_task(config: BenchConfig):
    """The recall segment of the bench (``recall_*``), its length as the recall experiment sets it."""
    from probseq.tasks import RecallConfig

    task = RecallConfig(
        num_pairs=config.recall_pairs,
        num_queries=config.recall_pairs,
        collisions=1,
        distractors=2,
        key_noise=0.1,
        gap=config.recall_gap,
        num_keys=64,
        num_values=64,
    )
    return dataclasses.replace(task, seq_len=2 * task.num_writes + task.gap + 2 * task.num_pairs)


def recall_training_step(mixer: str, config: BenchConfig) -> tuple[torch.nn.Module, Callable[[], Tensor]]:
    """The recall model (:mod:`probseq.experiments.recall`'s ``cpu`` preset shapes: ``d_model`` 64, 4 layers, 64
    keys and values) with ``mixer`` and a closure that runs one training step on a fixed batch of its training
    segment (``recall_*``: pairs, gap, one collision, two distractors, key noise 0.1)."""
    from probseq.models.mqar_model import ZoologyConfig, ZoologyModel
    from probseq.tasks import IGNORE_INDEX
    from probseq.train.metrics import pre_shifted_cross_entropy

    task = recall_task(config)
    torch.manual_seed(config.seed)
    model = ZoologyModel(ZoologyConfig(vocab_size=task.vocab_size, d_model=64, mixer=mixer))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    inputs, labels = task.build(config.recall_batch, config.seed)
    mask = labels != IGNORE_INDEX

    def call():
        optimizer.zero_grad(set_to_none=True)
        loss = pre_shifted_cross_entropy(model(input_ids=inputs, logits_mask=mask).logits, labels)
        loss.backward()
        optimizer.step()
        return loss.detach()

    return model, call


def _measurement(name, length, mode, runs, config, peak) -> Measurement:
    seconds = statistics.median(runs)
    forward = flops(name, length, config.key_dim, config.value_dim, chunk_sizes(config, config.key_dim)[1])
    total = None if forward is None else forward * config.batch * config.heads * (3 if mode == "fwd+bwd" else 1)
    gflop = None if total is None else total / 1e9
    batch = config.layer_batch if name in LAYER_METHODS else config.mqar_batch if mode == "train" else config.batch
    tokens = batch * (1 if mode == "step" else length)
    return Measurement(
        name, length, mode, seconds, tokens / seconds, peak, gflop, None if gflop is None else gflop / seconds, runs
    )


def _timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


# ---------------------------------------------------------------------------------------------


def plan(config: BenchConfig) -> list[tuple[str, int, str]]:
    """Every (method, T, mode) to measure (``T`` is the position or context of the ``step`` cases)."""
    cases = []
    if config.cases in ("all", "filters"):
        for length in config.lengths:
            for mode in ("fwd", "fwd+bwd"):
                cases += [("bayes_chunked", length, mode), ("gdn_chunked", length, mode), ("la_chunked", length, mode)]
            cases.append(("sdpa_causal", length, "fwd"))
            if length <= 4096:
                cases += [("bayes_recurrent", length, "fwd"), ("fla_gdn_naive_chunk", length, "fwd+bwd")]
            if length == 4096:
                cases.append(("bayes_chunked_cov64", length, "fwd+bwd"))
            if length <= 1024:
                cases.append(("fla_mesanet_cg", length, "fwd+bwd"))
        cases.append(("bayes_reference", config.reference_length, "fwd+bwd"))
        cases += [("bayes_step", position, "step") for position in config.decode_positions]
    if config.cases in ("all", "layer"):
        cases += [(name, config.layer_length, "fwd+bwd") for name in LAYER_METHODS]
        cases += [("generate_step", context, "step") for context in config.generate_contexts]
    if config.cases in ("all", "filters"):
        cases += [
            ("bayes_chunked_small", config.small_length, "fwd+bwd"),
            ("gdn_chunked_small", config.small_length, "fwd+bwd"),
        ]
    if config.cases in ("all", "mqar"):
        cases += [(MQAR_PREFIX + mixer, config.mqar_length, "train") for mixer in config.mqar_mixers]
        cases += [(COMPILED_PREFIX + mixer, config.mqar_length, "train") for mixer in config.compiled_mixers]
        length = recall_task(config).seq_len
        cases += [(RECALL_PREFIX + mixer, length, "train") for mixer in config.recall_mixers]
    return cases


def run_bench(config: BenchConfig) -> dict:
    """Run every case; return the JSON-ready results with the ratio table.

    Cases are timed in interleaved rounds — round ``r`` runs every case once — so that a slow spell
    of a shared machine falls on all methods alike instead of on whichever ran then; the ratios
    compare medians over the same rounds. The token-loop reference runs once, outside the rounds.
    """
    torch.manual_seed(config.seed)
    matmul = matmul_gflops()
    calls = {}
    for name, length, mode in plan(config):
        call = _call(name, length, mode, config)
        if call is not None:
            calls[(name, length, mode)] = call
    once = {case for case in calls if case[0] == "bayes_reference"}
    rounds = [case for case in calls if case not in once]
    runs = {case: [] for case in calls}
    with tqdm(
        total=len(rounds) * (config.warmup + config.repeats) + len(once), desc="bench", file=sys.stderr, disable=None
    ) as bar:  # disable=None: a bar on a terminal only, not in a log
        for round_ in range(config.warmup + config.repeats):
            for case in rounds:
                seconds = _timed(calls[case])
                if round_ >= config.warmup:
                    runs[case].append(seconds / steps_per_call(case))
                bar.update()
        for case in once:
            runs[case].append(_timed(calls[case]))
            bar.update()
    measurements = []
    for case, call in tqdm(calls.items(), desc="memory", file=sys.stderr, disable=None):
        # Token loops: the profiler's per-operation cost would dominate (75 s for T = 4096), and
        # their memory is the O(K² + KV) state plus the outputs.
        profiled = case[0] not in ("bayes_reference", "bayes_recurrent", "generate_step")
        profiled = profiled and case[2] != "train"  # a training step changes the model: time it, do not profile
        measurements.append(_measurement(*case, runs[case], config, peak_memory_mb(call) if profiled else None))
    return {
        "config": dataclasses.asdict(config),
        "environment": environment(),
        "matmul_gflops": matmul,
        "measurements": [dataclasses.asdict(m) for m in measurements],
        "ratios": ratios(measurements),
    }


def ratios(measurements: list[Measurement]) -> list[dict]:
    """Each row of ``TARGETS``: the ratio, its target and whether it is met (``None``: not measured, or a
    figure without a target, ``op == "info"``)."""
    index = {(m.method, m.length, m.mode): m.seconds for m in measurements}
    index |= {(m.method, None, m.mode): m.seconds for m in measurements}  # length None: the case's own length
    rows = []
    for description, top, bottom, op, target in TARGETS:
        value = index[top] / index[bottom] if top in index and bottom in index else None
        met = None if value is None or op == "info" else bool(value <= target if op == "<=" else value >= target)
        rows.append(dict(figure=description, ratio=value, target="—" if op == "info" else f"{op} {target}", met=met))
    for (method, length, mode), seconds in index.items():  # compiled / eager, per compiled mixer
        eager = (MQAR_PREFIX + method[len(COMPILED_PREFIX) :], length, mode)
        if method.startswith(COMPILED_PREFIX) and length is not None and eager in index:
            mixer = method[len(COMPILED_PREFIX) :]
            figure = f"MQAR model training step, compiled / eager, {mixer} (mqar_* shapes, T={length})"
            rows.append(dict(figure=figure, ratio=seconds / index[eager], target="—", met=None))
    return rows


def format_tables(results: dict) -> str:
    """Markdown tables: every measurement, then the ratios against the targets."""
    lines = [
        f"float32 matmul on this machine: {results['matmul_gflops']:.1f} GFLOP/s",
        "",
        "| method | T | pass | time (ms) | tokens/s | peak MB | GFLOP | GFLOP/s | % of matmul |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    for m in results["measurements"]:
        share = "" if m["gflops"] is None else f"{100 * m['gflops'] / results['matmul_gflops']:.1f}"
        lines.append(
            f"| {m['method']} | {m['length']} | {m['mode']} | {1e3 * m['seconds']:.2f} | "
            f"{m['tokens_per_s']:,.0f} | {_fmt(m['peak_mb'], '.1f')} | {_fmt(m['gflop'], '.3f')} | "
            f"{_fmt(m['gflops'], '.1f')} | {share} |"
        )
    lines += ["", "| figure | ratio | target | met |", "|---|---:|---|---|"]
    for r in results["ratios"]:
        if r["ratio"] is None:  # a case group that was not run (--layer, --mqar)
            continue
        met = "n/a" if r["met"] is None else ("yes" if r["met"] else "**no**")
        lines.append(f"| {r['figure']} | {_fmt(r['ratio'], '.2f')} | {r['target']} | {met} |")
    return "\n".join(lines)


def _fmt(value, spec):
    return "" if value is None else format(value, spec)


def main(args) -> int:
    config = apply_overrides(PRESETS[args.preset], args.overrides)
    if args.layer:
        config = dataclasses.replace(config, cases="layer")
    if args.mqar:
        config = dataclasses.replace(config, cases="mqar")
    if args.out:  # before the run, not after it: writable, and not the measurements of another config
        check_writable_file(args.out)
        check_same_config(args.out, config)
    results = run_bench(config)
    print(format_tables(results))
    if args.out:
        atomic_write_json(args.out, results)
        print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    print(json.dumps(run_bench(PRESETS["quick"]), indent=2))
