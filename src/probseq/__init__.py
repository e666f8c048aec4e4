"""probseq — probabilistic sequence layers.

Sequence maps derived as the exact Bayesian filter of an explicit *design model* of memory
(prior, dynamics, write model, readout), followed by a readout. See ``docs/`` (design model, chunked algorithm, numerics, theory).

Shape notation used in every docstring and einsum string of this package:

=====  ==========================================================
``B``  batch
``T``  time (sequence length)
``H``  heads
``K``  key / query dimension
``V``  value dimension
``C``  chunk length (chunk-parallel algorithm)
``N``  number of chunks, ``ceil(T / C)``
=====  ==========================================================

Layouts follow the PyTorch linear-attention ecosystem: ``q, k`` are ``[B, T, H, K]``, ``v`` is
``[B, T, H, V]``, scalar gates are ``[B, T, H]``, log-space decay ``g <= 0`` with ``alpha = exp(g)``.
The memory state is stored value-first: mean ``[B, H, V, K]``, covariance ``[B, H, K, K]``.
"""

from probseq import design, ops, presets, theory
from probseq import models  # noqa: F401  (registers ProbSeqConfig / ProbSeqForCausalLM with the Auto classes)
from probseq.ops import BayesState, FilterOutput, bayes_filter, bayes_step, superposition_filter

__version__ = "0.1.0"

__all__ = [
    "BayesState",
    "FilterOutput",
    "bayes_filter",
    "bayes_step",
    "design",
    "ops",
    "presets",
    "superposition_filter",
    "theory",
]
