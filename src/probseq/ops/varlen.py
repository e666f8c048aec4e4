"""Variable-length packing (``cu_seqlens``, FlashAttention convention): the one packing helper of the project.

Packed ``[1, T, ...]`` inputs holding sequences ``[cu[i], cu[i+1])`` are laid out as a padded batch
``[S, T_max, ...]`` and back (:class:`Packing`); padding goes *after* each sequence. The filters
(:mod:`probseq.ops.run`) pad with values chosen to leave the state unchanged (``k = 0``, ``α = γ = 1``), so each
row's final state is its sequence's final state; the layers use the same maps for the short convolution and
attention's positions and sequence masks.
"""

from __future__ import annotations

import torch
from torch import Tensor


class Packing:
    """Index maps between packed ``[1, T]`` and padded ``[S, T_max]`` token positions.

    Attributes:
        num_sequences: ``S``.
        lengths: ``[S]`` tokens of each sequence (long).
        nonempty: ``[S]`` sequences with at least one token.
        last_index: ``[S]`` packed index of each sequence's last token (0 for an empty one).
        max_length: ``T_max``.
        valid: ``[S, T_max]`` padded positions that hold a token.
        source: ``[S, T_max]`` packed index of each padded position (0 where not ``valid``).
    """

    def __init__(self, cu_seqlens: Tensor, device: torch.device):
        cu = cu_seqlens.to(device=device, dtype=torch.long)
        lengths = cu[1:] - cu[:-1]
        self.lengths = lengths
        self.num_sequences = lengths.numel()
        self.nonempty = lengths > 0  # [S]
        self.last_index = (cu[1:] - 1).clamp_min(0)  # packed index of each sequence's last token [S]
        # the one host synchronisation of packing: the padded length is a shape
        self.max_length = int(lengths.max()) if self.num_sequences else 0
        offsets = torch.arange(self.max_length, device=device)
        self.valid = offsets[None, :] < lengths[:, None]  # [S, T_max]
        self.source = (cu[:-1, None] + offsets[None, :]).masked_fill(~self.valid, 0)  # packed index

    def pad(self, x: Tensor | None, pad_value: float = 0.0) -> Tensor | None:
        """``[1, T, ...]`` → ``[S, T_max, ...]``."""
        if x is None:
            return None
        padded = x[0, self.source]
        mask = self.valid.reshape(*self.valid.shape, *([1] * (padded.dim() - 2)))
        return torch.where(mask, padded, torch.full((), pad_value, dtype=x.dtype, device=x.device))

    def unpad(self, y: Tensor | None) -> Tensor | None:
        """``[S, T_max, ...]`` → ``[1, T, ...]`` (sequences are contiguous and in order)."""
        return None if y is None else y[self.valid][None]

    @property
    def sequence(self) -> Tensor:
        """``[T]``: the sequence of every packed token."""
        rows = torch.arange(self.num_sequences, device=self.valid.device)
        return rows[:, None].expand_as(self.valid)[self.valid]

    @property
    def offset(self) -> Tensor:
        """``[T]``: the position of every packed token within its sequence."""
        return torch.arange(self.max_length, device=self.valid.device).expand_as(self.valid)[self.valid]
