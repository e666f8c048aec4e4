"""Interoperability with other projects (docs/architecture.md, floor 4: may import models and layers; nothing in
the library imports it).

- :mod:`probseq.interop.fla`: flash-linear-attention ``GatedDeltaNetForCausalLM`` checkpoints ↔
  :class:`~probseq.models.ProbSeqForCausalLM` (``convert_fla``, ``export_fla``; docs/interop.md).
- :mod:`probseq.interop.zoology`: probseq's mixers as Zoology sequence mixers; :mod:`probseq.zoology` re-exports
  them under the dotted paths Zoology's configs name (``probseq.zoology.BayesianMixer``). The MQAR model that
  follows Zoology's architecture is a different thing, :class:`probseq.models.ZoologyModel`.

Each submodule is imported on its own (``from probseq.interop.fla import convert_fla``), so neither pulls in
the other.
"""
