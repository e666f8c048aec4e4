"""probseq — probabilistic sequence layers.

Sequence maps derived as the exact Bayesian filter of an explicit *design model* of memory
(prior, dynamics, write model, readout), followed by a readout. See ``docs/`` (design model, chunked algorithm,
numerics, theory).

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

``import probseq`` (and ``probseq.ops``, ``probseq.layers``) needs torch and einops only. The Hugging Face
models live in :mod:`probseq.models` (the ``hf`` extra); importing that package registers them with
transformers' ``AutoConfig``, ``AutoModel`` and ``AutoModelForCausalLM``.
"""

from probseq import design, ops, presets, theory
from probseq.ops import BayesState, FilterOutput, bayes_filter, bayes_step, superposition_filter

__version__ = "0.1.0"

#: Subpackages loaded on first attribute access (PEP 562), so that ``import probseq`` needs torch and einops only:
#: ``probseq.models`` imports transformers, and importing it registers ``ProbSeqConfig`` / ``ProbSeqForCausalLM``
#: with the Auto classes.
_LAZY_SUBMODULES = ("layers", "models")


def __getattr__(name: str):
    if name in _LAZY_SUBMODULES:
        import importlib

        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY_SUBMODULES))


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
