"""Functional core: filters as functions on tensors (SPEC §1–§2).

Entry points: :func:`bayes_filter` (the Bayesian Layer), :func:`superposition_filter` (linear
attention family), their decoding steps :func:`bayes_step` / :func:`superposition_step`, the generic
:func:`run_filter` for any :class:`probseq.design.DesignModel`, and the dense-conditioning oracle
:func:`dense_conditioning`.
"""

from probseq.ops.dense import dense_conditioning
from probseq.ops.filters import (R_MIN, bayes_filter, bayes_step, regression_design, run_filter,
                                 superposition_design, superposition_filter, superposition_step)
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
