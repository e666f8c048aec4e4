"""Chunk layout shared by the chunked forms: ``[B, T, H, ...]`` ↔ ``[N, B·H, C, ...]``."""

from __future__ import annotations

import torch.nn.functional as F
from einops import rearrange
from torch import Tensor


def to_chunks(x: Tensor, chunk_size: int, pad_value: float = 0.0) -> Tensor:
    """``[B, T, H, ...]`` → ``[N, B·H, C, ...]``, padding ``T`` up to a multiple of ``C`` with ``pad_value``.

    The chunk axis leads so that ``unbind(0)`` yields contiguous 3-d per-chunk tensors (no copies and
    ``baddbmm`` in the sequential loops).
    """
    pad = (-x.shape[1]) % chunk_size
    if pad:
        x = F.pad(x.movedim(1, -1), (0, pad), value=pad_value).movedim(-1, 1)
    return rearrange(x, "b (n c) h ... -> n (b h) c ...", c=chunk_size).contiguous()


def from_chunks(x: Tensor, length: int, batch: int) -> Tensor:
    """``[N, B·H, C, ...]`` → ``[B, T, H, ...]``, dropping the padding."""
    return rearrange(x, "n (b h) c ... -> b (n c) h ...", b=batch)[:, :length]
