"""Closed-form retrieval dynamics (SPEC §4)."""
