"""Property-based checks over random shapes, chunk sizes and gate regimes (hypothesis): every form of
the Bayesian filter is the same function, and the covariance stays a covariance."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from probseq.ops import bayes_filter
from tests.helpers import FIELDS, assert_close, bayes_inputs


@settings(max_examples=25, deadline=None)
@given(
    batch=st.integers(1, 2),
    length=st.integers(1, 40),
    heads=st.integers(1, 3),
    key_dim=st.integers(1, 6),
    value_dim=st.integers(1, 5),
    chunk_size=st.integers(1, 48),
    regime=st.sampled_from(["random", "retain", "reset", "mixed"]),
    unit_keys=st.booleans(),
    with_state=st.booleans(),
    seed=st.integers(0, 10_000),
)
def test_chunked_equals_reference(
    batch, length, heads, key_dim, value_dim, chunk_size, regime, unit_keys, with_state, seed
):
    x = bayes_inputs(
        batch, length, heads, key_dim, value_dim, regime=regime, unit_keys=unit_keys, with_state=with_state, seed=seed
    )
    kwargs = dict(initial_state=x["initial_state"], output_final_state=True, output_variance=True)
    ref = bayes_filter(**{n: x[n] for n in FIELDS}, impl="reference", **kwargs)
    out = bayes_filter(**{n: x[n] for n in FIELDS}, impl="chunked", chunk_size=chunk_size, **kwargs)
    assert_close(out.output, ref.output, 1e-9, "output")
    assert_close(out.variance, ref.variance, 1e-9, "variance")
    assert_close(out.state.mean, ref.state.mean, 1e-9, "mean")
    assert_close(out.state.cov, ref.state.cov, 1e-9, "cov")
    eig = torch.linalg.eigvalsh(out.state.cov)
    assert eig.min() >= -1e-9 and eig.max() <= 1 + 1e-9
    assert (out.variance >= -1e-12).all()
