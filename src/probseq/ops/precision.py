"""The filters compute in float32 (float64 for float64 inputs) whatever autocast says."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch


@contextlib.contextmanager
def full_precision(device_type: str) -> Iterator[None]:
    """Run a filter outside autocast: it computes in its own dtype (its factorisations and state never run in
    half precision), and autocast would otherwise cast its matmuls down. A device type without autocast
    (``meta``) needs nothing."""
    if not torch.amp.is_autocast_available(device_type):
        yield
        return
    with torch.autocast(device_type=device_type, enabled=False):
        yield
