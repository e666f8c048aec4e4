"""Every fast form equals the float64 token-by-token reference: outputs, final state, predictive
variance and the gradient of every input, within the tolerance table (docs/numerics.md, "How the tests compare
numbers")."""

from __future__ import annotations

import pytest
import torch

from probseq.design import superposition_design
from probseq.ops import BayesState, bayes_filter, run_filter, superposition_filter
from tests.helpers import FIELDS, TOLERANCE, assert_close, bayes_inputs, stable_seed


def _run_bayes(inputs, impl, chunk_size=16, requires_grad=True, reset=False, mean_chunk_size=None):
    """Filter, then backpropagate a fixed random projection of every output into every input.

    ``reset``: pass ``gamma=None`` (the covariance-reset fast path, Gated DeltaNet) instead of ``inputs["gamma"]``.
    """
    leaves = {n: inputs[n].clone().requires_grad_(requires_grad) for n in FIELDS}
    if reset:
        leaves["gamma"] = None
    state = inputs["initial_state"]
    if state is not None:
        state = BayesState(*(t.clone().requires_grad_(requires_grad) for t in state))
    out = bayes_filter(
        **leaves,
        initial_state=state,
        output_final_state=True,
        output_variance=True,
        impl=impl,
        chunk_size=chunk_size,
        mean_chunk_size=mean_chunk_size,
    )
    results = {"output": out.output, "mean": out.state.mean, "cov": out.state.cov, "variance": out.variance}
    if requires_grad:
        gen = torch.Generator().manual_seed(123)
        loss = sum(
            (r.double() * torch.randn(r.shape, generator=gen, dtype=torch.float64)).sum() for r in results.values()
        )
        loss.backward()
        results.update({f"d{n}": leaves[n].grad for n in FIELDS if leaves[n] is not None})
        if state is not None:
            results.update({"dmean0": state.mean.grad, "dcov0": state.cov.grad})
    return {name: value for name, value in results.items() if value is not None}  # reset: P_0 has no gradient


@pytest.mark.parametrize("regime", ["random", "retain", "reset", "mixed"])
@pytest.mark.parametrize("impl,chunk_size", [("recurrent", 16), ("chunked", 16), ("chunked", 32), ("chunked", 5)])
def test_bayes_forms_match_reference_float64(regime, impl, chunk_size):
    inputs = bayes_inputs(length=37, regime=regime, seed=stable_seed(regime, chunk_size))
    expected = _run_bayes(inputs, "reference")
    actual = _run_bayes(inputs, impl, chunk_size)
    for name, value in expected.items():
        assert_close(actual[name], value, TOLERANCE[torch.float64], f"{impl}/{regime}/{name}")


@pytest.mark.parametrize("chunk_size", [16, 32, 64, 128])
def test_bayes_chunked_float32_matches_float64_reference(chunk_size):
    inputs64 = bayes_inputs(length=150, key_dim=16, value_dim=8, seed=chunk_size)
    expected = _run_bayes(inputs64, "reference")
    actual = _run_bayes(
        bayes_inputs(length=150, key_dim=16, value_dim=8, seed=chunk_size, dtype=torch.float32), "chunked", chunk_size
    )
    for name, value in expected.items():
        assert actual[name].dtype in (torch.float32,), name
        assert_close(actual[name], value, TOLERANCE[torch.float32], f"float32 chunked C={chunk_size} {name}")


@pytest.mark.parametrize("reset", [False, True])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("impl,chunk_size", [("chunked", 16), ("chunked", 5), ("recurrent", 16)])
def test_reset_path_gradients_match_reference(impl, chunk_size, dtype, reset):
    """The γ ≡ 0 fast path (``gamma=None``: every Gated DeltaNet and a distilled layer's start) has its own
    backward: outputs, state and the gradient of every input equal the float64 reference's."""
    inputs = bayes_inputs(length=37, regime="reset", seed=stable_seed("reset", impl, chunk_size))
    expected = _run_bayes(inputs, "reference", reset=reset)
    actual = _run_bayes(
        {n: (x.to(dtype) if isinstance(x, torch.Tensor) else x) for n, x in inputs.items()},
        impl,
        chunk_size,
        reset=reset,
    )
    assert ("dgamma" in actual) != reset and set(actual) == set(expected)
    for name, value in expected.items():
        assert_close(actual[name], value, TOLERANCE[dtype], f"{impl}/reset={reset}/{dtype}/{name}")


@pytest.mark.parametrize("reset", [False, True])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_bayes_chunked_half_inputs(dtype, reset):
    """Half inputs: the filter computes in float32. Tolerances belong to what is compared — half where a half
    tensor is involved (the output, and every gradient: the cotangent of a half output is itself half); the
    float32 state and variance must be float32-accurate (a half-precision r would be 1000× off)."""
    half = bayes_inputs(length=70, key_dim=16, value_dim=8, dtype=dtype, seed=3)
    # The reference sees exactly the rounded inputs, so the comparison measures the filter alone.
    exact = {n: (x.double() if isinstance(x, torch.Tensor) else x) for n, x in half.items()}
    expected = _run_bayes(exact, "reference", reset=reset)
    actual = _run_bayes(half, "chunked", 32, reset=reset)
    assert actual["output"].dtype == dtype
    assert actual["mean"].dtype == torch.float32 and actual["cov"].dtype == torch.float32
    assert set(actual) == set(expected)
    for name, value in expected.items():
        tol = TOLERANCE[torch.float32] if name in ("mean", "cov", "variance") else TOLERANCE[dtype]
        assert_close(actual[name], value, tol, f"{dtype} {name} ({actual[name].dtype})")


def test_gamma_zero_takes_reset_path_and_matches_explicit_zeros():
    inputs = bayes_inputs(regime="reset", seed=5)
    fast = bayes_filter(
        **{n: inputs[n] for n in FIELDS},
        initial_state=inputs["initial_state"],
        output_final_state=True,
        output_variance=True,
        impl="chunked",
    )
    gamma = inputs["gamma"].clone().requires_grad_()  # a gamma needing its gradient takes the general path
    general = bayes_filter(
        **{**{n: inputs[n] for n in FIELDS}, "gamma": gamma},
        initial_state=inputs["initial_state"],
        output_final_state=True,
        output_variance=True,
        impl="chunked",
    )
    for a, b, name in zip(fast, general, ("output", "state", "variance")):
        if name == "state":
            assert_close(a.mean, b.mean, 1e-12, "mean")
            assert_close(a.cov, b.cov, 1e-12, "cov")
        else:
            assert_close(a, b, 1e-12, name)


def test_gradient_into_gamma_at_exactly_zero():
    """A layer started at γ ≡ 0 (function-preserving) must still learn γ: the chunked gradient at
    γ = 0 equals the reference's, in float64 and float32."""
    inputs = bayes_inputs(regime="reset", seed=11, length=40)
    expected = _run_bayes(inputs, "reference")["dgamma"]
    assert expected.abs().max() > 1e-3
    assert_close(_run_bayes(inputs, "chunked", 16)["dgamma"], expected, 1e-9, "float64 dgamma at 0")
    inputs32 = {n: (x.float() if isinstance(x, torch.Tensor) else x) for n, x in inputs.items()}
    inputs32["initial_state"] = BayesState(*(t.float() for t in inputs["initial_state"]))
    assert_close(_run_bayes(inputs32, "chunked", 16)["dgamma"], expected, 1e-4, "float32 dgamma at 0")


def test_no_initial_state_and_tiny_lengths():
    for length in (1, 2, 7):
        inputs = bayes_inputs(length=length, with_state=False, seed=length)
        expected = _run_bayes(inputs, "reference")
        for impl in ("recurrent", "chunked"):
            actual = _run_bayes(inputs, impl, 4)
            for name, value in expected.items():
                assert_close(actual[name], value, 1e-9, f"T={length} {impl} {name}")


def test_empty_sequence_returns_initial_state():
    inputs = bayes_inputs(length=0, seed=1)
    for impl in ("reference", "recurrent", "chunked"):
        out = bayes_filter(
            **{n: inputs[n] for n in FIELDS},
            initial_state=inputs["initial_state"],
            output_final_state=True,
            output_variance=True,
            impl=impl,
        )
        assert out.output.shape == (2, 0, 2, 6) and out.variance.shape == (2, 0, 2)
        assert_close(out.state.mean, inputs["initial_state"].mean, 1e-12, impl)
        assert_close(out.state.cov, inputs["initial_state"].cov, 1e-12, impl)


def _superposition_inputs(per_channel: bool, dtype=torch.float64, seed=0, length=45):
    gen = torch.Generator().manual_seed(seed)
    b, t, h, kd, vd = 2, length, 3, 8, 5
    q, k = (torch.randn(b, t, h, kd, generator=gen, dtype=torch.float64) for _ in range(2))
    v = torch.randn(b, t, h, vd, generator=gen, dtype=torch.float64)
    g = -torch.rand(b, t, h, *((kd,) if per_channel else ()), generator=gen, dtype=torch.float64) * 0.3
    beta = torch.rand(b, t, h, generator=gen, dtype=torch.float64) + 0.1
    mean0 = torch.randn(b, h, vd, kd, generator=gen, dtype=torch.float64)
    return [x.to(dtype) for x in (q, k, v, g, beta)], mean0.to(torch.promote_types(dtype, torch.float32))


def _run_superposition(inputs, mean0, impl, chunk_size):
    leaves = [x.clone().requires_grad_() for x in inputs]
    m0 = mean0.clone().requires_grad_()
    out = superposition_filter(*leaves, initial_state=m0, output_final_state=True, impl=impl, chunk_size=chunk_size)
    gen = torch.Generator().manual_seed(7)
    loss = sum(
        (r.double() * torch.randn(r.shape, generator=gen, dtype=torch.float64)).sum()
        for r in (out.output, out.state.mean)
    )
    loss.backward()
    return [out.output, out.state.mean] + [x.grad for x in leaves] + [m0.grad]


@pytest.mark.parametrize("per_channel", [False, True])
@pytest.mark.parametrize("impl,chunk_size", [("recurrent", 16), ("chunked", 16), ("chunked", 7)])
def test_superposition_forms_match_reference(per_channel, impl, chunk_size):
    inputs, mean0 = _superposition_inputs(per_channel, seed=chunk_size)
    expected = _run_superposition(inputs, mean0, "reference", chunk_size)
    actual = _run_superposition(inputs, mean0, impl, chunk_size)
    for i, (a, e) in enumerate(zip(actual, expected)):
        assert_close(a, e, 1e-9, f"{impl} per_channel={per_channel} #{i}")


@pytest.mark.parametrize("per_channel", [False, True])
def test_superposition_chunked_float32(per_channel):
    inputs, mean0 = _superposition_inputs(per_channel, seed=2, length=130)
    expected = _run_superposition(inputs, mean0, "reference", 16)
    inputs32, mean32 = _superposition_inputs(per_channel, dtype=torch.float32, seed=2, length=130)
    actual = _run_superposition(inputs32, mean32, "chunked", 32)
    for i, (a, e) in enumerate(zip(actual, expected)):
        assert_close(a, e, 1e-4, f"float32 per_channel={per_channel} #{i}")


@pytest.mark.parametrize("regime", ["random", "reset"])
def test_bayes_chunked_over_several_segments(monkeypatch, regime):
    """Long inputs are filtered segment by segment, carrying the state: exactly the same filter."""
    import probseq.ops.run as filters

    monkeypatch.setattr(filters, "SEGMENT_CHUNKS", 2)  # segments of 2 chunks of 4 tokens
    inputs = bayes_inputs(length=37, regime=regime, seed=21)
    expected = _run_bayes(inputs, "reference")
    actual = _run_bayes(inputs, "chunked", chunk_size=4)
    for name, value in expected.items():
        assert_close(actual[name], value, TOLERANCE[torch.float64], f"segmented {name}")


@pytest.mark.parametrize("chunk_size", [1, 4, 16, 32, 64])
def test_chunks_are_evenly_filled(chunk_size):
    """As many chunks as ``chunk_size`` needs, each at most that long, padding fewer tokens than there are chunks."""
    from probseq.ops.run import balanced_chunk_size

    for length in range(1, 300):
        size = balanced_chunk_size(chunk_size, length)
        chunks = -(-length // chunk_size)
        assert size <= min(chunk_size, length) and -(-length // size) == chunks, (length, size)
        assert chunks * size - length < chunks, (length, size)


@pytest.mark.parametrize(
    "chunk_size, mean_chunk_size", [(16, 32), (8, 32), (4, 12), (16, 24), (32, 8), (16, 64), (64, 128)]
)
def test_a_mean_chunk_that_is_a_multiple_of_the_covariance_chunk_stays_one(chunk_size, mean_chunk_size):
    """The mean chunk is balanced alone; where it was asked to be M covariance chunks, the covariance chunk is its 1/M
    when M divides it, else all of it when that is short (at most twice the covariance chunk asked for, and 64), else
    balanced alone; a mean chunk that is not a multiple leaves the covariance chunk balanced alone."""
    from probseq.ops.run import balanced_chunk_size, balanced_chunk_sizes

    for length in range(1, 300):
        size, mean = balanced_chunk_sizes(chunk_size, mean_chunk_size, length)
        alone = balanced_chunk_size(chunk_size, length)
        assert mean == balanced_chunk_size(mean_chunk_size, length), (length, mean)
        if mean_chunk_size % chunk_size:
            assert size == alone, (length, size)
        elif mean % (mean_chunk_size // chunk_size) == 0:
            assert size == mean // (mean_chunk_size // chunk_size), (length, size, mean)
        else:
            assert size == alone or (size == mean and mean <= min(2 * chunk_size, 64)), (length, size, mean)
    assert balanced_chunk_sizes(16, 32, 256) == (16, 32) and balanced_chunk_sizes(16, 32, 54) == (27, 27)
    assert balanced_chunk_sizes(16, 32, 60) == (15, 30)
    assert balanced_chunk_sizes(16, 64, 189) == (16, 63), "a mean chunk of 63 is too long to be one covariance chunk"
    assert balanced_chunk_sizes(32, 128, 254) == (32, 127), "nor one longer than the kernel's 64"


def test_the_chunked_forms_run_at_the_balanced_chunk_length(monkeypatch):
    """T = 54 at C = 16 runs four chunks of 14 (not four of 16 with 10 tokens of padding), the same filter."""
    import probseq.ops.run as filters

    sizes, form = [], filters.bayes_chunked
    monkeypatch.setattr(filters, "bayes_chunked", lambda *a: sizes.append(a[8]) or form(*a))
    inputs = bayes_inputs(length=54, seed=9)
    actual, expected = _run_bayes(inputs, "chunked", 16), _run_bayes(inputs, "reference")
    assert sizes == [14]
    for name, value in expected.items():
        assert_close(actual[name], value, TOLERANCE[torch.float64], name)


@pytest.mark.parametrize("regime", ["random", "retain", "reset", "mixed"])
@pytest.mark.parametrize("chunk_size,mean_chunk_size", [(8, 32), (16, 32), (4, 6), (32, 8)])
def test_the_mean_path_may_chunk_differently_from_the_covariance_path(regime, chunk_size, mean_chunk_size):
    """The mean path needs only the per-token write keys, so any pair of chunk lengths is the same filter: outputs,
    state, variance and every gradient equal the reference (and the reset path, which has no covariance path,
    takes the mean path's chunk length)."""
    inputs = bayes_inputs(length=45, regime=regime, seed=stable_seed(regime, chunk_size, mean_chunk_size))
    for reset in (False, True):
        expected = _run_bayes(inputs, "reference", reset=reset)
        actual = _run_bayes(inputs, "chunked", chunk_size, reset=reset, mean_chunk_size=mean_chunk_size)
        for name, value in expected.items():
            assert_close(actual[name], value, TOLERANCE[torch.float64], f"{regime}/reset={reset}/{name}")


def test_two_chunk_lengths_over_several_segments_and_in_float32(monkeypatch):
    """Segments of SEGMENT_CHUNKS of the longer chunks (where the lengths do not divide each other a segment's last
    chunk of the other path is padded, which is exact); float32 with two chunk lengths is as accurate as with one."""
    import probseq.ops.run as filters

    inputs = bayes_inputs(length=150, key_dim=16, value_dim=8, seed=5, dtype=torch.float32)
    expected = _run_bayes(bayes_inputs(length=150, key_dim=16, value_dim=8, seed=5), "reference")
    for name, value in _run_bayes(inputs, "chunked", 16, mean_chunk_size=32).items():
        assert value.dtype == torch.float32, name
        assert_close(value, expected[name], TOLERANCE[torch.float32], f"float32 {name}")
    monkeypatch.setattr(filters, "SEGMENT_CHUNKS", 2)  # segments of max(4, 6) · 2 = 12 tokens
    inputs = bayes_inputs(length=61, seed=22)
    expected = _run_bayes(inputs, "reference")
    for name, value in _run_bayes(inputs, "chunked", 4, mean_chunk_size=6).items():
        assert_close(value, expected[name], TOLERANCE[torch.float64], f"segmented {name}")


def test_each_path_runs_at_its_own_chunk_length_and_segments_hold_the_longer_chunks(monkeypatch):
    """What the equality tests cannot see (every pair is the same filter): the covariance path's ratio matrices are
    C × C, the mean path's C_m × C_m, the reset path has only the latter, and a long sequence is cut into segments
    of SEGMENT_CHUNKS of the longer chunks; ``mean_chunk_size`` is refused where there is no covariance path to
    differ from (superposition)."""
    import probseq.ops.bayes.chunked as chunked
    import probseq.ops.run as filters

    mean_sizes, covariance_sizes, lengths = [], [], []
    ratios, path, forms = chunked.segment_ratios, chunked.covariance_path, filters.bayes_chunked
    monkeypatch.setattr(chunked, "segment_ratios", lambda x: mean_sizes.append(x.shape[-1]) or ratios(x))
    monkeypatch.setattr(chunked, "covariance_path", lambda k, *a: covariance_sizes.append(k.shape[2]) or path(k, *a))
    monkeypatch.setattr(filters, "bayes_chunked", lambda q, *a: lengths.append(q.shape[1]) or forms(q, *a))
    monkeypatch.setattr(filters, "SEGMENT_CHUNKS", 2)
    inputs = bayes_inputs(length=45, seed=3)
    for reset, expected_covariance in ((False, {4}), (True, set())):
        mean_sizes.clear(), covariance_sizes.clear(), lengths.clear()
        _run_bayes(inputs, "chunked", 4, reset=reset, mean_chunk_size=6)
        assert set(mean_sizes) == {6} and set(covariance_sizes) == expected_covariance, (reset, mean_sizes)
        assert lengths == [12, 12, 12, 9], (reset, lengths)
    design = superposition_design(inputs["g"], None, scale=0.5)
    with pytest.raises(ValueError, match="mean_chunk_size is for regression designs"):
        run_filter(design, inputs["q"], inputs["k"], inputs["v"], impl="chunked", chunk_size=4, mean_chunk_size=8)


@pytest.mark.parametrize("per_channel", [False, True])
def test_superposition_chunked_over_several_segments(monkeypatch, per_channel):
    import probseq.ops.run as filters

    monkeypatch.setattr(filters, "SEGMENT_CHUNKS", 2)
    inputs, mean0 = _superposition_inputs(per_channel, seed=4)
    expected = _run_superposition(inputs, mean0, "reference", 4)
    actual = _run_superposition(inputs, mean0, "chunked", 4)
    for i, (a, e) in enumerate(zip(actual, expected)):
        assert_close(a, e, 1e-9, f"segmented per_channel={per_channel} #{i}")


def test_a_zero_key_with_no_noise_is_a_no_op_in_the_chunked_form_too():
    """β = 1 and r_min = 0 at a zero key (r = 0): the recurrent form's update is a no-op, the chunked form's chunk
    matrix had a zero row (its Cholesky failed: a misleading 'γ ≈ 1 and β ≈ 1' error, or NaN unvalidated). Outputs,
    variances, the final state and the gradients agree."""
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 11, 2, n, generator=gen, dtype=torch.float64) for n in (4, 4, 3))
    k[0, 3] = 0
    k[1, 7, 1] = 0
    g = -torch.rand(2, 11, 2, generator=gen, dtype=torch.float64)
    beta = torch.rand(2, 11, 2, generator=gen, dtype=torch.float64)
    beta[0, 3] = beta[1, 7, 1] = 1.0  # r = 0 exactly at the zero keys
    gamma = torch.full((2, 11, 2), 0.5, dtype=torch.float64)
    inputs = [t.requires_grad_() for t in (q, k, v, g, beta, gamma)]
    results = {}
    for impl in ("recurrent", "chunked"):
        for x in inputs:
            x.grad = None
        out = bayes_filter(*inputs, r_min=0.0, impl=impl, chunk_size=4, output_variance=True, output_final_state=True)
        (out.output.square().sum() + out.variance.sum()).backward()
        # not ∂/∂k: at k = 0 with r = 0 the write k/‖k‖² is discontinuous (both forms give ~1e307 there)
        results[impl] = [out.output, out.variance, *out.state, *(x.grad.clone() for x in inputs if x is not k)]
    for a, b in zip(results["chunked"], results["recurrent"]):
        assert torch.isfinite(a).all()
        assert_close(a, b, 1e-10, "chunked vs recurrent with a zero key and r = 0")
