"""RMS normalisation, plain and gated, computed in float32 and returned in the input dtype.

- :class:`RMSNorm`: ``y = x / sqrt(mean(x²) + ε) · w``.
- :class:`GatedRMSNorm` with ``norm_before_gate=True`` (flash-linear-attention's ``FusedRMSNormGated``,
  the output norm of Gated DeltaNet / DeltaNet): ``y = RMSNorm(x) · act(z)``, ``act`` = SiLU or sigmoid.
- :class:`GatedRMSNorm` with ``norm_before_gate=False`` (Mamba-2's ``RMSNormGated``):
  ``y = RMSNorm(x · SiLU(z))``, optionally over groups of ``group_size`` channels.

Parameter names (``weight``) match those modules, so their checkpoints load.
"""

from __future__ import annotations

import math
import numbers

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from probseq.layers.utils import upcast

GATE_ACTIVATIONS = ("swish", "silu", "sigmoid")


def _check_size_and_eps(norm: str, hidden_size: int, eps: float) -> None:
    """``hidden_size`` a positive int; ``ε`` a finite float ``≥ 0`` (a negative one makes ``mean(x²) + ε``
    negative for small ``x``: NaN outputs)."""
    if isinstance(hidden_size, bool) or not isinstance(hidden_size, numbers.Integral) or hidden_size <= 0:
        raise ValueError(f"{norm} hidden_size must be a positive int, got {hidden_size!r}")
    if isinstance(eps, bool) or not isinstance(eps, numbers.Real) or not (math.isfinite(eps) and eps >= 0):
        raise ValueError(f"{norm} eps (the layer's norm_eps) must be a finite float >= 0, got {eps!r}")


def _rms(x: Tensor, eps: float, group_size: int | None = None) -> Tensor:
    if group_size is not None and group_size != x.shape[-1]:
        grouped = x.unflatten(-1, (-1, group_size))
        return (grouped * torch.rsqrt(grouped.square().mean(-1, keepdim=True) + eps)).flatten(-2)
    return x * torch.rsqrt(x.square().mean(-1, keepdim=True) + eps)


class RMSNorm(nn.Module):
    """RMS norm over the last dim ``hidden_size``."""

    def __init__(self, hidden_size: int, eps: float = 1e-5, elementwise_affine: bool = True):
        super().__init__()
        _check_size_and_eps("RMSNorm", hidden_size, eps)
        self.hidden_size, self.eps = hidden_size, eps
        self.weight = nn.Parameter(torch.ones(hidden_size)) if elementwise_affine else None

    def forward(self, x: Tensor) -> Tensor:
        y = _rms(upcast(x), self.eps)
        if self.weight is not None:
            y = y * upcast(self.weight)
        return y.to(x.dtype)

    def extra_repr(self) -> str:
        return f"{self.hidden_size}, eps={self.eps}"


class GatedRMSNorm(nn.Module):
    """RMS norm with a multiplicative gate ``z`` (same shape as ``x``).

    Args:
        hidden_size: size of the last dim.
        eps: ε.
        activation: gate activation, ``"swish"``/``"silu"`` or ``"sigmoid"`` (only SiLU with
            ``norm_before_gate=False``, as in Mamba-2).
        norm_before_gate: ``True``: ``RMSNorm(x)·act(z)``; ``False``: ``RMSNorm(x·SiLU(z))``.
        group_size: normalise groups of this many channels (``None``: the whole last dim).
    """

    def __init__(
        self,
        hidden_size: int,
        eps: float = 1e-5,
        activation: str = "swish",
        norm_before_gate: bool = True,
        group_size: int | None = None,
    ):
        super().__init__()
        _check_size_and_eps("GatedRMSNorm", hidden_size, eps)
        if activation not in GATE_ACTIVATIONS:
            raise ValueError(f"gate activation must be one of {GATE_ACTIVATIONS}, got {activation!r}")
        if not norm_before_gate and activation == "sigmoid":
            raise ValueError("norm_before_gate=False (Mamba-2's gated norm) gates with SiLU only")
        if group_size is not None and (group_size <= 0 or hidden_size % group_size):
            raise ValueError(f"group_size {group_size} must divide hidden_size {hidden_size}")
        self.hidden_size, self.eps, self.activation = hidden_size, eps, activation
        self.norm_before_gate, self.group_size = norm_before_gate, group_size
        self.weight = nn.Parameter(torch.ones(hidden_size))

    def forward(self, x: Tensor, z: Tensor) -> Tensor:
        xf, zf = upcast(x), upcast(z)
        gate = torch.sigmoid(zf) if self.activation == "sigmoid" else F.silu(zf)
        if self.norm_before_gate:
            y = _rms(xf, self.eps, self.group_size) * upcast(self.weight) * gate
        else:
            y = _rms(xf * gate, self.eps, self.group_size) * upcast(self.weight)
        return y.to(x.dtype)

    def extra_repr(self) -> str:
        return (
            f"{self.hidden_size}, eps={self.eps}, activation={self.activation}, "
            f"norm_before_gate={self.norm_before_gate}, group_size={self.group_size}"
        )
