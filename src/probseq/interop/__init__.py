"""Interoperability with other projects (ARCHITECTURE, floor 4: may import models and layers).

- :mod:`probseq.interop.fla`: flash-linear-attention ``GatedDeltaNetForCausalLM`` checkpoints ↔
  :class:`~probseq.models.ProbSeqForCausalLM` (``convert_fla``, ``export_fla``; docs/interop.md).
- :mod:`probseq.interop.zoology`: probseq's mixers as Zoology sequence mixers.

Each submodule is imported on its own (``from probseq.interop.fla import convert_fla``), so neither pulls in
the other.
"""
