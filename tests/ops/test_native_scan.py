"""The compiled CPU covariance scan (probseq.ops.bayes.native, csrc/covariance_scan.cpp) against the PyTorch scan:
outputs, every gradient, both dtypes, the shapes it takes and refuses, and what happens when it cannot be built.

``make test`` sets ``PROBSEQ_NATIVE=1``, so a kernel that fails to compile fails these tests instead of skipping."""

from __future__ import annotations

import contextlib

import pytest
import torch

from probseq.ops import bayes_filter
from probseq.ops.bayes import native
from probseq.ops.bayes.covariance_scan import covariance_path
from tests.helpers import assert_close, bayes_inputs

NAMES = ["k", "noise", "half_log_retention", "cov0"]


@pytest.fixture(scope="module", autouse=True)
def _kernel():
    if not native.available():
        pytest.skip("the compiled covariance scan is unavailable here (PROBSEQ_NATIVE=1 makes this an error)")


def _inputs(chunks, batch, size, key_dim, dtype=torch.float64, seed=0, symmetric_cov=True, retention=(0.0, 1.0)):
    """Inputs of steps 2–5 as the chunked form makes them: unit keys, noise, ``h = ½ log γ`` of per-token retentions
    in ``retention`` (floored at e⁻³⁰) and a covariance in (0, I] (symmetric unless asked otherwise)."""
    gen = torch.Generator().manual_seed(seed)
    rand = lambda *shape: torch.rand(*shape, generator=gen, dtype=torch.float64)  # noqa: E731
    k = torch.nn.functional.normalize(
        torch.randn(chunks, batch, size, key_dim, generator=gen, dtype=torch.float64), dim=-1
    )
    noise = 0.05 + rand(chunks, batch, size)
    low, high = retention
    half_log = 0.5 * torch.log(low + (high - low) * rand(chunks, batch, size)).clamp_min(-30)
    root = torch.randn(batch, key_dim, key_dim, generator=gen, dtype=torch.float64) / key_dim**0.5
    cov0 = torch.linalg.matrix_exp(-(root @ root.transpose(-1, -2)))
    if not symmetric_cov:
        cov0 = cov0 + 1e-3 * torch.randn(batch, key_dim, key_dim, generator=gen, dtype=torch.float64)
    tensors = (k, noise, half_log, cov0)
    return tuple(t.to(dtype).requires_grad_() for t in tensors)


def _both(inputs, weights):
    """(outputs, gradients) of steps 2–5 in the kernel and in PyTorch (retention_terms, scan_inputs and
    covariance_scan)."""
    results = []
    for use_native in (True, False):
        with contextlib.nullcontext() if use_native else native.disabled():
            assert native.usable(inputs[0]) is use_native
            outputs = covariance_path(*inputs)
            loss = sum((o * w).sum() for o, w in zip(outputs[:4], weights) if w is not None)
            grads = torch.autograd.grad(loss, inputs, allow_unused=True)
            results.append((outputs, grads))
    return results


def _weights(inputs, seed, mask=(1, 1, 1, 1)):
    gen = torch.Generator().manual_seed(seed)
    with native.disabled():
        outputs = covariance_path(*inputs)[:4]
    return [torch.randn(o.shape, generator=gen, dtype=o.dtype) if m else None for m, o in zip(mask, outputs)]


@pytest.mark.parametrize(
    "key_dim, size", [(16, 16), (32, 14), (32, 16), (32, 27), (64, 32), (128, 64), (16, 1), (64, 5)]
)
def test_outputs_and_every_gradient_match_pytorch(key_dim, size):
    inputs = _inputs(chunks=3, batch=3, size=size, key_dim=key_dim, seed=key_dim + size)
    (out_n, grad_n), (out_p, grad_p) = _both(inputs, _weights(inputs, 1))
    for name, a, b in zip(["x", "pivots", "starts", "cov"], out_n, out_p):
        assert_close(a, b, 1e-12, name)
    assert torch.equal(out_n[4], out_p[4]) and (out_n[4] == 0).all()
    for name, a, b in zip(NAMES, grad_n, grad_p):
        assert_close(a, b, 1e-11, name)


@pytest.mark.parametrize("retention", [(0.0, 0.0), (1.0, 1.0), (0.999, 1.0)])
def test_extreme_retentions(retention):
    """γ ≡ 0 (every ratio 0, the learned retention's start), γ ≡ 1 (no forgetting) and γ ≈ 1."""
    inputs = _inputs(chunks=3, batch=2, size=16, key_dim=32, seed=5, retention=retention)
    (out_n, grad_n), (out_p, grad_p) = _both(inputs, _weights(inputs, 6))
    for name, a, b in zip(["x", "pivots", "starts", "cov"], out_n, out_p):
        assert_close(a, b, 1e-12, name)
    for name, a, b in zip(NAMES, grad_n, grad_p):
        assert_close(a, b, 1e-10, name)


@pytest.mark.parametrize("used", ["x_and_cov", "cov_only", "x_only", "pivots_and_starts"])
def test_gradients_of_some_outputs_only(used):
    """Unused outputs' gradients arrive as None; the kernel treats them as zeros."""
    inputs = _inputs(chunks=4, batch=2, size=16, key_dim=32, seed=7)
    mask = {
        "x_and_cov": (1, 0, 0, 1),
        "cov_only": (0, 0, 0, 1),
        "x_only": (1, 0, 0, 0),
        "pivots_and_starts": (0, 1, 1, 0),
    }
    (_, grad_n), (_, grad_p) = _both(inputs, _weights(inputs, 2, mask[used]))
    for name, a, b in zip(NAMES, grad_n, grad_p):
        assert_close(a, b, 1e-11, name)


def test_a_covariance_that_is_not_symmetric():
    """The backward uses P for Pᵀ only when the first covariance is exactly symmetric (the kernel's update keeps it
    so); a caller's unsymmetric one takes the transposes, and the gradient of every input still matches."""
    inputs = _inputs(chunks=3, batch=2, size=16, key_dim=32, seed=8, symmetric_cov=False)
    assert not torch.equal(inputs[3], inputs[3].transpose(-1, -2))
    (_, grad_n), (_, grad_p) = _both(inputs, _weights(inputs, 3))
    for name, a, b in zip(NAMES, grad_n, grad_p):
        assert_close(a, b, 1e-11, name)


def test_an_exactly_symmetric_covariance_uses_p_for_its_transpose():
    """A bitwise-symmetric first covariance (as the filter's states are: symmetrised after every call): the forward
    keeps every chunk-start covariance exactly symmetric and the backward reads P for Pᵀ; every gradient matches."""
    inputs = list(_inputs(chunks=4, batch=2, size=16, key_dim=32, seed=14))
    cov0 = inputs[3].detach()
    inputs[3] = (0.5 * (cov0 + cov0.transpose(-1, -2))).requires_grad_()
    assert torch.equal(inputs[3], inputs[3].transpose(-1, -2))
    starts = covariance_path(*inputs)[2]
    assert torch.equal(starts, starts.transpose(-1, -2)), "the kernel's covariances are exactly symmetric"
    (_, grad_n), (_, grad_p) = _both(inputs, _weights(inputs, 7))
    for name, a, b in zip(NAMES, grad_n, grad_p):
        assert_close(a, b, 1e-11, name)


@pytest.mark.parametrize("key_dim, size", [(16, 17), (32, 16), (64, 33), (128, 64)])
def test_float32_agrees_with_float64(key_dim, size):
    inputs64 = _inputs(chunks=4, batch=4, size=size, key_dim=key_dim, seed=9)
    inputs32 = tuple(t.detach().float().requires_grad_() for t in inputs64)
    weights = _weights(inputs64, 4)
    with native.disabled():
        outputs64 = covariance_path(*inputs64)
        grads64 = torch.autograd.grad(sum((o * w).sum() for o, w in zip(outputs64[:4], weights)), inputs64)
    assert native.usable(inputs32[0])
    outputs32 = covariance_path(*inputs32)
    grads32 = torch.autograd.grad(sum((o * w.float()).sum() for o, w in zip(outputs32[:4], weights)), inputs32)
    for name, a, b in zip(["x", "pivots", "starts", "cov"], outputs32, outputs64):
        assert a.dtype == torch.float32
        assert_close(a.double(), b, 1e-5, name)
    for name, a, b in zip(NAMES, grads32, grads64):
        assert_close(a.double(), b, 1e-4, name)


def test_a_failed_factorisation_is_flagged_in_its_chunk():
    inputs = [t.detach().clone() for t in _inputs(chunks=3, batch=2, size=16, key_dim=16, seed=10)]
    inputs[1][1, 1, 3] = -5.0  # chunk 1 of sequence 1: a negative noise, the chunk matrix is not positive definite
    info = covariance_path(*inputs)[4]
    with native.disabled():
        expected = covariance_path(*inputs)[4]
    assert info.dtype == expected.dtype and torch.equal(info != 0, expected != 0)
    assert info[1, 1] != 0 and (info[0] == 0).all() and info[1, 0] == 0


def test_double_backward_differentiates_the_plain_ops():
    """create_graph=True: the backward is autograd through the plain ops (retention_terms, scan_inputs,
    scan_reference; exact to any order)."""
    inputs = _inputs(chunks=2, batch=1, size=16, key_dim=16, seed=13)
    weights = _weights(inputs, 5)
    results = []
    for context in (contextlib.nullcontext(), native.disabled()):
        with context:
            outputs = covariance_path(*inputs)
            grads = torch.autograd.grad(
                sum((o * w).sum() for o, w in zip(outputs[:4], weights)), inputs, create_graph=True
            )
            results.append(torch.autograd.grad(sum(g.square().sum() for g in grads[:2]), inputs[0]))
    assert_close(results[0][0], results[1][0], 1e-10, "second derivative")


def _rows(t, per_row):
    """[R·M, B·H, C, ...] → [R, B·H, M·C, ...]: M chunks a row (the mean path's layout at M covariance chunks)."""
    return t.unflatten(0, (-1, per_row)).transpose(1, 2).flatten(2, 3)


@pytest.mark.parametrize("use_native", [True, False])
@pytest.mark.parametrize("per_row", [1, 2])
def test_double_backward_agrees_with_plain_autograd(use_native, per_row):
    """create_graph=True through the kernel or the PyTorch path, rows of one or two chunks: the first derivatives of
    every input (h included) equal those without create_graph and plain autograd's through the same ops
    (_plain_path), and so do the second derivatives."""
    from probseq.ops.bayes.covariance_scan import _plain_path

    inputs = _inputs(chunks=2 * per_row, batch=2, size=5, key_dim=16, seed=19, retention=(0.5, 1.0))
    rows = [_rows(t.detach(), per_row).requires_grad_() for t in inputs[:3]] + [inputs[3].detach().requires_grad_()]
    weights = _weights(inputs, 9)
    weights = [_rows(weights[0], per_row), _rows(weights[1], per_row), *weights[2:]]

    def first(path, create_graph):
        outputs = path(*rows, chunk=5)
        loss = sum((o * w).sum() for o, w in zip(outputs[:4], weights))
        return torch.autograd.grad(loss, rows, create_graph=create_graph)

    with contextlib.nullcontext() if use_native else native.disabled():
        assert native.usable(rows[0], 5) is use_native
        plain, graph = first(covariance_path, False), first(covariance_path, True)
    reference = first(_plain_path, True)
    for name, a, b, c in zip(NAMES, plain, graph, reference):
        assert_close(b, a, 1e-11, f"{name}: with create_graph")
        assert_close(b, c, 1e-11, f"{name}: against plain autograd")
    second = torch.autograd.grad(sum(g.square().sum() for g in graph), rows)
    expected = torch.autograd.grad(sum(g.square().sum() for g in reference), rows)
    for name, a, b in zip(NAMES, second, expected):
        assert_close(a, b, 1e-10, f"{name}: second derivative")


def test_a_chunk_that_does_not_divide_the_rows_is_refused():
    inputs = _inputs(chunks=2, batch=1, size=16, key_dim=16, seed=20)
    for use_native in (True, False):
        with contextlib.nullcontext() if use_native else native.disabled():
            for chunk in (0, 5, 10, 32):
                with pytest.raises(ValueError, match=f"chunk {chunk} does not divide"):
                    covariance_path(*inputs, chunk=chunk)


@pytest.mark.parametrize("per_row, size, key_dim", [(2, 16, 32), (4, 8, 16), (3, 5, 64)])
def test_rows_of_several_chunks_are_read_in_place(per_row, size, key_dim):
    """Keys in the mean path's layout, ``per_row`` covariance chunks a row: the kernel reads them in place, the PyTorch
    path re-chunks them; both equal the same chunks handed over one a row (outputs and every gradient)."""
    inputs = _inputs(chunks=3 * per_row, batch=2, size=size, key_dim=key_dim, seed=17 + size)
    weights = _weights(inputs, 8)
    with native.disabled():
        expected = covariance_path(*inputs)
        expected_grads = torch.autograd.grad(sum((o * w).sum() for o, w in zip(expected[:4], weights)), inputs)
    row_weights = [_rows(weights[0], per_row), _rows(weights[1], per_row), *weights[2:]]
    for use_native in (True, False):
        rows = [_rows(t.detach(), per_row).requires_grad_() for t in inputs[:3]] + [inputs[3]]
        with contextlib.nullcontext() if use_native else native.disabled():
            assert native.usable(rows[0], size) is use_native
            outputs = covariance_path(*rows, chunk=size)
            grads = torch.autograd.grad(sum((o * w).sum() for o, w in zip(outputs[:4], row_weights)), rows)
        for name, a, b in zip(["x", "pivots"], outputs, expected):
            assert_close(a, _rows(b, per_row), 1e-12, name)
        for name, a, b in zip(["starts", "cov", "info"], outputs[2:], expected[2:]):
            assert_close(a.double(), b.double(), 1e-12, name)
        for name, a, b in zip(NAMES, grads, expected_grads):
            assert_close(a, _rows(b, per_row) if name != "cov0" else b, 1e-11, name)


@pytest.mark.parametrize("key_dim", [16, 32])
def test_the_chunked_filter_with_the_kernel_equals_the_reference(key_dim):
    """End to end: bayes_filter's chunked form (kernel inside) against the token-by-token float64 reference, and
    against itself with the PyTorch scan (outputs, state, variance and the inputs' gradients)."""
    x = bayes_inputs(batch=2, length=45, heads=2, key_dim=key_dim, value_dim=8, seed=11)
    leaves = [x[n].requires_grad_() for n in ("q", "k", "v", "g", "beta", "gamma")]
    results = []
    for context in (contextlib.nullcontext(), native.disabled()):
        with context:
            out = bayes_filter(**x, impl="chunked", chunk_size=16, output_final_state=True, output_variance=True)
            loss = out.output.square().sum() + out.state.cov.sum() + out.variance.sum() + out.state.mean.sum()
            results.append((out, torch.autograd.grad(loss, leaves)))
    reference = bayes_filter(**x, impl="reference", output_final_state=True, output_variance=True)
    (out_n, grads_n), (out_p, grads_p) = results
    assert_close(out_n.output, reference.output, 1e-10, "output vs reference")
    assert_close(out_n.state.cov, reference.state.cov, 1e-10, "cov vs reference")
    assert_close(out_n.variance, reference.variance, 1e-10, "variance vs reference")
    for name, a, b in zip("q k v g beta gamma".split(), grads_n, grads_p):
        assert_close(a, b, 1e-11, name)


@pytest.mark.parametrize("mean_chunk, row, segments", [(6, 4, 6), (8, 8, 4)])
def test_two_chunk_lengths_over_several_segments_run_in_the_kernel(monkeypatch, mean_chunk, row, segments):
    """Covariance chunks of 4, mean chunks of 6 (the keys re-chunked: rows of 4 tokens) or 8 (read in place: rows of
    two chunks), segments of two mean chunks, K = 16 (the kernel's smallest): every segment goes through the kernel,
    and the result equals the token-by-token reference, gradients included."""
    import probseq.ops.bayes.covariance_scan as scan
    import probseq.ops.run as filters

    rows = []
    kernel = scan._CovariancePathKernel.apply
    monkeypatch.setattr(scan._CovariancePathKernel, "apply", lambda k, *a: rows.append(k.shape[2]) or kernel(k, *a))
    monkeypatch.setattr(filters, "SEGMENT_CHUNKS", 2)
    x = bayes_inputs(batch=2, length=61, heads=2, key_dim=16, value_dim=8, seed=15)
    leaves = [x[n].requires_grad_() for n in ("q", "k", "v", "g", "beta", "gamma")]
    results = []
    for impl, extra in (("chunked", {"chunk_size": 4, "mean_chunk_size": mean_chunk}), ("reference", {})):
        out = bayes_filter(**x, impl=impl, output_final_state=True, **extra)
        loss = out.output.square().sum() + out.state.cov.sum() + out.state.mean.sum()
        results.append((out, torch.autograd.grad(loss, leaves)))
    assert rows == [row] * segments, f"rows of {rows} tokens through the kernel"
    (chunked, grads_c), (reference, grads_r) = results
    assert_close(chunked.output, reference.output, 1e-10, "output")
    assert_close(chunked.state.cov, reference.state.cov, 1e-10, "cov")
    for name, a, b in zip("q k v g beta gamma".split(), grads_c, grads_r):
        assert_close(a, b, 1e-9, name)


def test_the_kernel_refuses_inputs_of_the_wrong_shape():
    """The op is public (torch.ops.probseq_native): mismatched shapes are an error, not a write out of bounds."""
    inputs = [t.detach() for t in _inputs(chunks=4, batch=2, size=16, key_dim=16, seed=16)]
    short = list(inputs)
    short[2] = inputs[2][:1]  # h for one chunk of four
    with pytest.raises(RuntimeError, match="half_log_retention must be"):
        torch.ops.probseq_native.covariance_path_forward(*short, 16)
    mixed = list(inputs)
    mixed[1] = inputs[1].float()
    with pytest.raises(RuntimeError, match="noise is Float"):
        torch.ops.probseq_native.covariance_path_forward(*mixed, 16)
    with pytest.raises(RuntimeError, match="chunk 5 does not divide 16"):
        torch.ops.probseq_native.covariance_path_forward(*inputs, 5)


def test_an_unknown_setting_is_an_error(monkeypatch):
    monkeypatch.setenv("PROBSEQ_NATIVE", "false")
    native._load.cache_clear()
    try:
        with pytest.raises(ValueError, match="PROBSEQ_NATIVE must be 0"):
            native.available()
    finally:
        monkeypatch.undo()
        native._load.cache_clear()
    assert native.available()


def test_which_inputs_run_in_the_kernel():
    k = torch.zeros(2, 3, 16, 32)
    assert native.usable(k) and native.usable(k.double())
    assert not native.usable(k.half()), "half precision: the PyTorch scan"
    assert not native.usable(torch.zeros(2, 3, 16, 24)), "a key dim without a compiled kernel"
    assert not native.usable(torch.zeros(2, 3, 65, 32)), "chunks longer than 64"
    assert not native.usable(k.to("meta")), "not on the CPU"
    with native.disabled():
        assert not native.usable(k)
    assert native.usable(k)


def test_torch_compile_traces_the_pytorch_scan():
    """Under torch.compile the kernel is not called (the PyTorch scan is traced): no graph break."""
    inputs = [t.detach().float() for t in _inputs(chunks=2, batch=2, size=16, key_dim=16, seed=12)]
    compiled = torch.compile(lambda *a: covariance_path(*a)[3], fullgraph=True, backend="eager")
    assert_close(compiled(*inputs).double(), covariance_path(*inputs)[3].double(), 1e-5)


def test_an_unbuildable_kernel_warns_and_falls_back(tmp_path, monkeypatch):
    """No compiler: a warning and the PyTorch scan by default; an error under PROBSEQ_NATIVE=1; nothing under 0."""
    monkeypatch.setenv("PROBSEQ_NATIVE_DIR", str(tmp_path))
    monkeypatch.setenv("CXX", str(tmp_path / "no-such-compiler"))
    try:
        for setting in ("", "1", "0"):
            monkeypatch.setenv("PROBSEQ_NATIVE", setting)
            native._load.cache_clear()
            if setting == "":
                with pytest.warns(RuntimeWarning, match="could not be built"):
                    assert native.available() is False
            elif setting == "1":
                with pytest.raises(native.NativeBuildError, match="cannot run the C\\+\\+ compiler"):
                    native.available()
            else:
                assert native.available() is False
        assert not any(tmp_path.glob("*/*.so")), "nothing half-built is left in the cache"
    finally:
        native._load.cache_clear()
        monkeypatch.undo()
    assert native.available()  # the real kernel again


def test_the_build_is_cached():
    path = native.build()
    assert path.exists() and path.parent.parent == native._cache_dir()
    assert native.build() == path  # a second call finds it
