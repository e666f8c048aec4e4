"""Zoology sequence mixers, importable by the dotted paths Zoology's configs use
(``ModuleConfig(name="probseq.zoology.BayesianMixer", ...)``): the classes of :mod:`probseq.interop.zoology`,
re-exported under the short name those configs carry. (Zoology's MQAR model rebuilt in probseq is another thing:
:class:`probseq.models.ZoologyModel`.)"""

from probseq.interop.zoology import (
    AttentionMixer,
    BayesianMixer,
    DeltaNetMixer,
    GatedDeltaNetMixer,
    LinearAttentionMixer,
    Mamba2Mixer,
    ZoologyMixer,
)

__all__ = [
    "AttentionMixer",
    "BayesianMixer",
    "DeltaNetMixer",
    "GatedDeltaNetMixer",
    "LinearAttentionMixer",
    "Mamba2Mixer",
    "ZoologyMixer",
]
