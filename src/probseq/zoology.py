"""Zoology sequence mixers, importable by the dotted paths Zoology's configs use
(``ModuleConfig(name="probseq.zoology.BayesianMixer", ...)``); see :mod:`probseq.interop.zoology`."""

from probseq.interop.zoology import (AttentionMixer, BayesianMixer, DeltaNetMixer, GatedDeltaNetMixer,
                                     LinearAttentionMixer, Mamba2Mixer, ZoologyMixer)

__all__ = ["AttentionMixer", "BayesianMixer", "DeltaNetMixer", "GatedDeltaNetMixer", "LinearAttentionMixer",
           "Mamba2Mixer", "ZoologyMixer"]
