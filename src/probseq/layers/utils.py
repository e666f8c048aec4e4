"""Small helpers shared by the mixers: input checks, padding, packing, head layout.

Padding (fla's 2-D ``attention_mask``, 0 = padding) is handled without moving tokens: a padded token is
made *state-preserving* — its key is zeroed (it writes nothing), its decay is 1 (``g = 0``) and its
retention is 1 (``γ = 1``, the covariance is kept) — and its short-convolution input is zeroed, which is
exactly the zero history a sequence run alone starts from. Each sequence of a left-padded batch therefore
gets the state and outputs it would get alone; outputs at padded positions are zero, as fla's re-padding
leaves them.
"""

from __future__ import annotations

import contextlib
import math

import torch
from einops import rearrange
from torch import Tensor, nn


def padding_mask(hidden_states: Tensor, attention_mask: Tensor | None, cu_seqlens: Tensor | None) -> Tensor | None:
    """Check a mixer's inputs and return the boolean mask ``[B, T]`` of real tokens (``None``: no padding).

    Args:
        hidden_states: ``[B, T, D]``.
        attention_mask: fla's 0/1 padding mask ``[B, T_all]`` (0 = padding), ``T_all ≥ T``: while decoding
            it covers the cached tokens too, and its last ``T`` columns are the current tokens.
        cu_seqlens: ``[S + 1]`` boundaries of packed sequences (``B == 1``).
    """
    if hidden_states.dim() != 3:
        raise ValueError(f"hidden_states must have shape [B, T, D], got {list(hidden_states.shape)}")
    batch, length, _ = hidden_states.shape
    if cu_seqlens is not None:
        if attention_mask is not None:
            raise ValueError("pass either attention_mask (padded batch) or cu_seqlens (packed sequences), not both")
        if batch != 1:
            raise ValueError(f"packed sequences (cu_seqlens) need batch size 1, got hidden_states of batch {batch}")
        return None
    if attention_mask is None:
        return None
    if attention_mask.dim() != 2 or attention_mask.shape[0] != batch or attention_mask.shape[1] < length:
        raise ValueError("attention_mask must be a 0/1 padding mask [B, T] (0 = padding) covering the current "
                         f"tokens, got shape {list(attention_mask.shape)} for hidden_states "
                         f"{list(hidden_states.shape)}; "
                         "arbitrary [B, T, T] masks are not supported")
    mask = attention_mask[:, attention_mask.shape[1] - length:].bool()
    return None if bool(mask.all()) else mask


def hold_padding(mask: Tensor | None, k: Tensor, g: Tensor | None, beta: Tensor | None = None,
                 gamma: Tensor | None = None) -> tuple[Tensor, Tensor | None, Tensor | None, Tensor | None]:
    """Make padded tokens state-preserving: ``k = 0``, ``g = 0``, ``γ = 1`` and ``β = 1/2`` (any ``β``
    in ``(0, 1)`` keeps the noise ``r > 0``, so the innovation variance of a zero key stays positive).

    Args:
        mask: ``[B, T]`` real tokens, or ``None`` (returns the inputs unchanged).
        k: ``[B, T, H, K]``; g: ``[B, T, H]`` or ``[B, T, H, K]``; beta, gamma: ``[B, T, H]``.
    """
    if mask is None:
        return k, g, beta, gamma
    m = mask[:, :, None]
    k = k * m[..., None].to(k.dtype)
    if g is not None:
        g = torch.where(m[..., None] if g.dim() == 4 else m, g, 0.0)
    if beta is not None:
        beta = torch.where(m, beta, 0.5)
    if gamma is not None:
        gamma = torch.where(m, gamma, 1.0)
    return k, g, beta, gamma


def guard_zero_keys(k: Tensor, beta: Tensor) -> Tensor:
    """``β = 1/2`` wherever a key is exactly zero. Such a token writes nothing whatever ``β`` is, but with
    ``β = 1`` and no noise floor its innovation variance ``‖k‖² + r`` would be ``0/0``."""
    return torch.where((k == 0).all(-1), 0.5, beta)


def zero_padding(x: Tensor | None, mask: Tensor | None) -> Tensor | None:
    """Zero ``x [B, T, ...]`` at padded positions."""
    if x is None or mask is None:
        return x
    return x * mask.reshape(*mask.shape, *([1] * (x.dim() - 2))).to(x.dtype)


def l2_normalize(x: Tensor, eps: float = 1e-6) -> Tensor:
    """``x / max(‖x‖, eps)`` along the last dim, in float32 (float64 stays float64).

    The keys are then unit-norm to float rounding, which makes the covariance-reset write key
    ``k/(‖k‖² + r)`` equal to the delta rule's ``β k`` (docs/design-model.md §6). fla's kernels divide by
    ``sqrt(‖x‖² + 1e-6)`` instead; the two differ by ``O(1e-6/‖x‖²)``.
    """
    x = x if x.dtype == torch.float64 else x.float()
    return torch.nn.functional.normalize(x, dim=-1, eps=eps)


def repeat_heads(x: Tensor, groups: int) -> Tensor:
    """``[B, T, H, ·] → [B, T, H·groups, ·]``: head ``h`` serves heads ``h·groups … h·groups + groups − 1``
    (fla's grouped-value / grouped-query layout)."""
    return x if groups == 1 else x.repeat_interleave(groups, dim=2)


@contextlib.contextmanager
def full_precision(device_type: str):
    """Run the filter outside autocast: it computes in float32 itself (its factorisations and state
    never run in half precision), and autocast would otherwise cast its matmuls down."""
    with torch.autocast(device_type=device_type, enabled=False):
        yield


def sequence_lengths(cu_seqlens: Tensor) -> Tensor:
    return (cu_seqlens[1:] - cu_seqlens[:-1]).long()


def pack_index(cu_seqlens: Tensor) -> tuple[Tensor, Tensor, int]:
    """``(sequence, offset, max_length)`` of every packed token."""
    cu = cu_seqlens.long()
    lengths = sequence_lengths(cu)
    sequence = torch.repeat_interleave(torch.arange(lengths.numel(), device=cu.device), lengths)
    offset = torch.arange(int(cu[-1]), device=cu.device) - cu[:-1][sequence]
    return sequence, offset, int(lengths.max()) if lengths.numel() else 0


def packed_to_padded(x: Tensor, cu_seqlens: Tensor) -> Tensor:
    """``[1, T, ...]`` packed → ``[S, T_max, ...]`` right-padded with zeros."""
    sequence, offset, max_length = pack_index(cu_seqlens.to(x.device))
    padded = x.new_zeros(cu_seqlens.numel() - 1, max_length, *x.shape[2:])
    return padded.index_put((sequence, offset), x[0])


def padded_to_packed(x: Tensor, cu_seqlens: Tensor) -> Tensor:
    """``[S, T_max, ...]`` → ``[1, T, ...]`` (inverse of :func:`packed_to_padded`)."""
    sequence, offset, _ = pack_index(cu_seqlens.to(x.device))
    return x[sequence, offset][None]


def check_positive(**values: object) -> None:
    """Raise a ``ValueError`` naming the first argument that is not a positive int."""
    for name, value in values.items():
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise ValueError(f"{name} must be a positive int, got {value!r}")


def check_no_extra(layer: str, kwargs: dict) -> None:
    """Refuse constructor arguments a layer does not know (fla layers swallow them silently)."""
    if kwargs:
        raise ValueError(f"{layer} got unsupported argument(s) {sorted(kwargs)}")


def log_uniform_decay_rate(num_heads: int, low: float, high: float) -> Tensor:
    """``A_log = log(A)``, ``A ~ U(low, high)`` per head (Mamba-2 / Gated DeltaNet initialisation)."""
    return torch.empty(num_heads, dtype=torch.float32).uniform_(low, high).log()


def inverse_softplus_step(num_heads: int, dt_min: float = 1e-3, dt_max: float = 0.1, floor: float = 1e-4) -> Tensor:
    """``dt_bias = softplus⁻¹(Δ)`` with ``Δ`` log-uniform in ``[dt_min, dt_max]`` (floored), per head."""
    log_dt = torch.rand(num_heads) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min)
    dt = log_dt.exp().clamp(min=floor)
    return dt + torch.log(-torch.expm1(-dt))


def gated_output(layer: nn.Module, o: Tensor, x: Tensor) -> Tensor:
    """The delta-rule layers' output: per-head RMSNorm of the filter output ``o [B, T, H, V]``, gated by
    ``SiLU(g_proj x)`` when ``layer.use_gate`` (fla's ``o_norm``), then ``o_proj`` → ``[B, T, D]``."""
    if layer.use_gate:
        o = layer.o_norm(o, rearrange(layer.g_proj(x), "b t (h d) -> b t h d", d=layer.head_v_dim))
    else:
        o = layer.o_norm(o)
    return layer.o_proj(rearrange(o, "b t h d -> b t (h d)"))
