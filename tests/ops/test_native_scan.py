"""The compiled CPU covariance scan (probseq.ops.bayes.native, csrc/covariance_scan.cpp) against the PyTorch scan:
outputs, every gradient, both dtypes, the shapes it takes and refuses, and what happens when it cannot be built.

``make test`` sets ``PROBSEQ_NATIVE=1``, so a kernel that fails to compile fails these tests instead of skipping."""

from __future__ import annotations

import contextlib

import pytest
import torch

from probseq.ops import bayes_filter
from probseq.ops.bayes import native
from probseq.ops.bayes.covariance_scan import covariance_scan
from tests.helpers import assert_close, bayes_inputs

NAMES = ["k_hat", "rhs", "cum_sqrt", "b_base", "ratio_sqrt", "tail_sqrt", "retention_chunk", "reset_chunk", "cov0"]


@pytest.fixture(scope="module", autouse=True)
def _kernel():
    if not native.available():
        pytest.skip("the compiled covariance scan is unavailable here (PROBSEQ_NATIVE=1 makes this an error)")


def _inputs(chunks, batch, size, key_dim, dtype=torch.float64, seed=0, symmetric_cov=True):
    """Scan inputs shaped as the chunked path makes them: a positive definite chunk matrix, gates in (0, 1], a
    covariance in (0, I] (symmetric unless asked otherwise), writes small enough to keep every chunk's covariance
    positive definite."""
    gen = torch.Generator().manual_seed(seed)
    rand = lambda *shape: torch.rand(*shape, generator=gen, dtype=torch.float64)  # noqa: E731
    randn = lambda *shape: torch.randn(*shape, generator=gen, dtype=torch.float64)  # noqa: E731
    k_hat = 0.5 * randn(chunks, batch, size, key_dim) / key_dim**0.5
    rhs = 0.3 * randn(chunks, batch, size, key_dim) / key_dim**0.5
    cum_sqrt, tail_sqrt = 0.2 + rand(chunks, batch, size, 1), 0.2 + rand(chunks, batch, size, 1)
    root = randn(chunks, batch, size, size)
    b_base = root @ root.transpose(-1, -2) / size + torch.eye(size, dtype=torch.float64)
    ratio_sqrt = (0.3 + rand(chunks, batch, size, size)).tril()
    retention_chunk, reset_chunk = rand(chunks, batch, 1, 1), 0.5 + 0.5 * rand(chunks, batch, 1, 1)
    root = randn(batch, key_dim, key_dim) / key_dim**0.5
    cov0 = torch.linalg.matrix_exp(-(root @ root.transpose(-1, -2)))
    if not symmetric_cov:
        cov0 = cov0 + 1e-3 * randn(batch, key_dim, key_dim)
    tensors = (k_hat, rhs, cum_sqrt, b_base, ratio_sqrt, tail_sqrt, retention_chunk, reset_chunk, cov0)
    return tuple(t.to(dtype).requires_grad_() for t in tensors)


def _both(inputs, weights):
    """(outputs, gradients) of the compiled scan and of the PyTorch scan on the same inputs."""
    results = []
    for use_native in (True, False):
        context = contextlib.nullcontext() if use_native else native.disabled()
        with context:
            assert native.usable(inputs[0]) is use_native
            outputs = covariance_scan(*inputs)
            loss = sum((o * w).sum() for o, w in zip(outputs[:4], weights) if w is not None)
            results.append((outputs, torch.autograd.grad(loss, inputs, allow_unused=True)))
    return results


@pytest.mark.parametrize(
    "key_dim, size", [(16, 16), (32, 14), (32, 16), (32, 27), (64, 32), (128, 64), (16, 1), (64, 5)]
)
def test_outputs_and_every_gradient_match_the_pytorch_scan(key_dim, size):
    inputs = _inputs(chunks=3, batch=3, size=size, key_dim=key_dim, seed=key_dim + size)
    gen = torch.Generator().manual_seed(1)
    weights = [torch.randn(o.shape, generator=gen, dtype=torch.float64) for o in covariance_scan(*inputs)[:4]]
    (out_n, grad_n), (out_p, grad_p) = _both(inputs, weights)
    for name, a, b in zip(["x", "pivots", "starts", "cov"], out_n, out_p):
        assert_close(a, b, 1e-12, name)
    assert torch.equal(out_n[4], out_p[4]) and (out_n[4] == 0).all()
    for name, a, b in zip(NAMES, grad_n, grad_p):
        assert_close(a, b, 1e-11, name)


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
    gen = torch.Generator().manual_seed(2)
    weights = [
        torch.randn(o.shape, generator=gen, dtype=torch.float64) if m else None
        for m, o in zip(mask[used], covariance_scan(*inputs)[:4])
    ]
    (_, grad_n), (_, grad_p) = _both(inputs, weights)
    for name, a, b in zip(NAMES, grad_n, grad_p):
        assert_close(a, b, 1e-11, name)


def test_a_covariance_that_is_not_symmetric():
    """The backward uses P for Pᵀ only when the first covariance is exactly symmetric (the kernel's update keeps it
    so); a user's unsymmetric one takes the transposes, and the gradient of every input still matches."""
    inputs = _inputs(chunks=3, batch=2, size=16, key_dim=32, seed=8, symmetric_cov=False)
    assert not torch.equal(inputs[8], inputs[8].transpose(-1, -2))
    gen = torch.Generator().manual_seed(3)
    weights = [torch.randn(o.shape, generator=gen, dtype=torch.float64) for o in covariance_scan(*inputs)[:4]]
    (_, grad_n), (_, grad_p) = _both(inputs, weights)
    for name, a, b in zip(NAMES, grad_n, grad_p):
        assert_close(a, b, 1e-11, name)


def test_float32_agrees_with_float64():
    inputs64 = _inputs(chunks=4, batch=4, size=16, key_dim=32, seed=9)
    inputs32 = tuple(t.detach().float().requires_grad_() for t in inputs64)
    gen = torch.Generator().manual_seed(4)
    weights = [torch.randn(o.shape, generator=gen, dtype=torch.float64) for o in covariance_scan(*inputs64)[:4]]
    with native.disabled():
        outputs64 = covariance_scan(*inputs64)
        grads64 = torch.autograd.grad(sum((o * w).sum() for o, w in zip(outputs64[:4], weights)), inputs64)
    assert native.usable(inputs32[0])
    outputs32 = covariance_scan(*inputs32)
    grads32 = torch.autograd.grad(sum((o * w.float()).sum() for o, w in zip(outputs32[:4], weights)), inputs32)
    for name, a, b in zip(["x", "pivots", "starts", "cov"], outputs32, outputs64):
        assert a.dtype == torch.float32
        assert_close(a.double(), b, 1e-5, name)
    for name, a, b in zip(NAMES, grads32, grads64):
        assert_close(a.double(), b, 1e-4, name)


def test_a_failed_factorisation_is_flagged_in_its_chunk():
    inputs = [t.detach().clone() for t in _inputs(chunks=3, batch=2, size=16, key_dim=16, seed=10)]
    inputs[3][1, 1] = -torch.eye(16, dtype=torch.float64)  # chunk 1 of sequence 1: not positive definite
    info = covariance_scan(*inputs)[4]
    with native.disabled():
        expected = covariance_scan(*inputs)[4]
    assert info.dtype == expected.dtype and torch.equal(info != 0, expected != 0)
    assert info[1, 1] == 1 and (info[0] == 0).all() and info[1, 0] == 0


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
    compiled = torch.compile(lambda *a: covariance_scan(*a)[3], fullgraph=True, backend="eager")
    assert_close(compiled(*inputs).double(), covariance_scan(*inputs)[3].double(), 1e-5)


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


def test_the_build_is_cached(tmp_path):
    path = native.build()
    assert path.exists() and path.parent.parent == native._cache_dir()
    assert native.build() == path  # a second call finds it
