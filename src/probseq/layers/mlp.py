"""SwiGLU feed-forward block: ``y = down_proj(SiLU(gate_proj(x)) ⊙ up_proj(x))``.

Parameter names follow flash-linear-attention's ``GatedMLP`` (and Llama's MLP).
"""

from __future__ import annotations

import math
import numbers

import torch.nn.functional as F
from torch import Tensor, nn


def _check_positive_int(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value <= 0:
        raise ValueError(f"{name} must be a positive int, got {value!r}")


def swiglu_size(hidden_size: int, hidden_ratio: float | None = 4, intermediate_size: int | None = None) -> int:
    """fla's default width: ``2/3 · hidden_ratio · hidden_size`` rounded up to a multiple of 256."""
    _check_positive_int("hidden_size", hidden_size)
    if intermediate_size is not None:
        _check_positive_int("intermediate_size", intermediate_size)
        return intermediate_size
    ratio = 4 if hidden_ratio is None else hidden_ratio
    if isinstance(ratio, bool) or not isinstance(ratio, numbers.Real) or not (math.isfinite(ratio) and ratio > 0):
        raise ValueError(f"hidden_ratio must be a finite float > 0 (MLP width / hidden_size), got {hidden_ratio!r}")
    size = int(hidden_size * ratio * 2 / 3)
    return 256 * ((size + 255) // 256)


class SwiGLU(nn.Module):
    """SwiGLU MLP ``[B, T, D] → [B, T, D]`` with ``intermediate_size`` hidden units."""

    def __init__(self, hidden_size: int, intermediate_size: int):
        super().__init__()
        _check_positive_int("hidden_size", hidden_size)
        _check_positive_int("intermediate_size", intermediate_size)
        self.gate_proj = nn.Linear(hidden_size, intermediate_size, bias=False)
        self.up_proj = nn.Linear(hidden_size, intermediate_size, bias=False)
        self.down_proj = nn.Linear(intermediate_size, hidden_size, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))
