"""SwiGLU feed-forward block: ``y = down_proj(SiLU(gate_proj(x)) ⊙ up_proj(x))``.

Parameter names follow flash-linear-attention's ``GatedMLP`` (and Llama's MLP).
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn


def swiglu_size(hidden_size: int, hidden_ratio: float | None = 4, intermediate_size: int | None = None) -> int:
    """fla's default width: ``2/3 · hidden_ratio · hidden_size`` rounded up to a multiple of 256."""
    if intermediate_size is not None:
        return intermediate_size
    ratio = 4 if hidden_ratio is None else hidden_ratio
    size = int(hidden_size * ratio * 2 / 3)
    return 256 * ((size + 255) // 256)


class SwiGLU(nn.Module):
    """SwiGLU MLP ``[B, T, D] → [B, T, D]`` with ``intermediate_size`` hidden units."""

    def __init__(self, hidden_size: int, intermediate_size: int):
        super().__init__()
        if intermediate_size <= 0:
            raise ValueError(f"intermediate_size must be positive, got {intermediate_size}")
        self.gate_proj = nn.Linear(hidden_size, intermediate_size, bias=False)
        self.up_proj = nn.Linear(hidden_size, intermediate_size, bias=False)
        self.down_proj = nn.Linear(intermediate_size, hidden_size, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))
