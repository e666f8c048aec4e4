"""probseq.cpu: subnormals flushed to zero and freed memory kept for reuse change no result."""

from __future__ import annotations

import sys

import pytest
import torch

from probseq import cpu
from probseq.ops import bayes_filter
from tests.helpers import assert_close

SUBNORMAL = 1e-40  # below float32's smallest normal number, 1.18e-38


def _is_flushed() -> bool:
    return (torch.tensor([SUBNORMAL], dtype=torch.float32) * 1.0).item() == 0.0


def test_flush_subnormals_is_on_inside_the_block_and_off_after():
    assert not _is_flushed()
    with cpu.flush_subnormals() as supported:
        if not supported:
            pytest.skip("this processor cannot flush subnormals")
        assert _is_flushed()
    assert not _is_flushed()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_keep_freed_memory_takes_effect_on_glibc():
    assert cpu.keep_freed_memory() is True
    x = torch.randn(4096, 8192)  # a 134 MB block, freed and made again: still correct
    del x
    assert torch.ones(4096, 8192).sum().item() == 4096 * 8192


def test_flushing_subnormals_changes_no_result_of_the_covariance_path_at_zero_retention():
    """The learned retention starts at γ ≡ 0, where the chunked covariance path fills its chunk matrices with
    subnormals (G_t = γ^t after the floor). Flushed or not, outputs, states and every gradient — the exact
    ∂L/∂γ at γ = 0 included — agree with the float64 reference to float32 rounding."""
    gen = torch.Generator().manual_seed(0)
    batch, length, heads, key_dim, value_dim = 2, 96, 2, 16, 16
    q = torch.nn.functional.normalize(torch.randn(batch, length, heads, key_dim, generator=gen), dim=-1)
    k = torch.nn.functional.normalize(torch.randn(batch, length, heads, key_dim, generator=gen), dim=-1)
    v = torch.randn(batch, length, heads, value_dim, generator=gen)
    g = -0.1 * torch.rand(batch, length, heads, generator=gen)
    beta = torch.rand(batch, length, heads, generator=gen)
    weights = torch.randn(batch, length, heads, value_dim, generator=gen)

    def run(dtype, impl):
        inputs = [t.to(dtype).clone().requires_grad_() for t in (q, k, v, g, beta)]
        gamma = torch.zeros(batch, length, heads, dtype=dtype, requires_grad=True)
        out = bayes_filter(*inputs, gamma, impl=impl, chunk_size=32, output_final_state=True, validate=False)
        (out.output * weights.to(dtype)).sum().backward()
        return [out.output, out.state.mean, out.state.cov] + [t.grad for t in (*inputs, gamma)]

    reference = run(torch.float64, "reference")
    plain = run(torch.float32, "chunked")
    with cpu.flush_subnormals():
        flushed = run(torch.float32, "chunked")
    names = ["output", "mean", "cov", "dq", "dk", "dv", "dg", "dbeta", "dgamma"]
    assert flushed[-1].abs().min() > 0  # the gradient at γ = 0 survives the flush
    for name, ref, a, b in zip(names, reference, plain, flushed):
        assert_close(a, ref, 1e-4, f"{name} (not flushed)")
        assert_close(b, ref, 1e-4, f"{name} (flushed)")
        assert_close(b, a, 1e-6, f"{name}: flushed vs not")


def test_a_command_runs_with_subnormals_flushed_and_leaves_the_mode_as_it_was(monkeypatch):
    import argparse

    from probseq import cli

    seen = []
    monkeypatch.setattr(cli, "command_function", lambda target: lambda args: seen.append(_is_flushed()) or 0)
    assert cli.run(argparse.Namespace(run="any:thing", command="mqar")) == 0
    assert seen == [True] and not _is_flushed()


def test_flush_blocks_nest():
    """A Trainer run (one block) inside a ``probseq`` command (another) leaves the command's mode on."""
    with cpu.flush_subnormals() as supported:
        if not supported:
            pytest.skip("this processor cannot flush subnormals")
        with cpu.flush_subnormals():
            pass
        assert _is_flushed()
    assert not _is_flushed()
