"""Functional core: filters as functions on tensors (docs/design-model.md, docs/chunked-algorithm.md).

One folder per design, each with its forms side by side (``recurrent.py``, ``chunked.py``; the
reference token loop is :func:`probseq.design.reference_filter`) and its public entry points
(``filter.py``):

- :func:`bayes_filter` / :func:`bayes_step` — the Bayesian Layer (regression design);
- :func:`superposition_filter` / :func:`superposition_step` — the linear-attention family;
- :func:`run_filter` — any hand-built :class:`probseq.design.DesignModel` (:mod:`.run` dispatches every form);
- :func:`dense_conditioning` — the oracle that conditions the joint Gaussian densely.

Every entry point validates its inputs once (:mod:`.validation`; ``validate=False`` skips the value
checks and their one host synchronisation).
"""

from probseq.design import R_MIN, regression_design, superposition_design
from probseq.ops.bayes.filter import bayes_filter, bayes_step
from probseq.ops.dense import dense_conditioning
from probseq.ops.run import run_filter
from probseq.ops.superposition.filter import superposition_filter, superposition_step
from probseq.types import IMPLS, BayesState, FilterOutput, Impl

__all__ = [
    "IMPLS",
    "R_MIN",
    "BayesState",
    "FilterOutput",
    "Impl",
    "bayes_filter",
    "bayes_step",
    "dense_conditioning",
    "regression_design",
    "run_filter",
    "superposition_design",
    "superposition_filter",
    "superposition_step",
]
