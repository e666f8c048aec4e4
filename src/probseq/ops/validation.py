"""Input validation at the public boundary (SPEC §7): a clear ``ValueError`` naming the argument and
the expected shape or range — never a silent broadcast."""

from __future__ import annotations

import torch
from torch import Tensor

from probseq.types import BayesState

# Tolerance for a given initial covariance to count as within [0, I] (states our own float32
# filters return are within 1e-5; see tests/test_robustness.py).
COV_TOLERANCE = 1e-4


def _shape(x: Tensor) -> list[int]:
    return list(x.shape)


def check_floating(name: str, x: Tensor) -> None:
    if not isinstance(x, Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise ValueError(f"{name} must have a floating dtype (float32, float64, bfloat16, float16), got {x.dtype}")


def check_qkv(q: Tensor, k: Tensor, v: Tensor, *, step: bool = False) -> tuple[int, int, int, int, int]:
    """Check ``q, k [B, T, H, K]`` and ``v [B, T, H, V]`` (``[B, H, ·]`` when ``step``).

    Returns:
        ``(B, T, H, K, V)``; ``T = 1`` for a step.
    """
    for name, x in (("q", q), ("k", k), ("v", v)):
        check_floating(name, x)
    rank, layout = (3, "[B, H, K]") if step else (4, "[B, T, H, K]")
    if k.dim() != rank:
        raise ValueError(f"k must have shape {layout}, got a {k.dim()}-d tensor of shape {_shape(k)}")
    if q.shape != k.shape:
        raise ValueError(f"q must have the shape of k {layout} = {_shape(k)}, got {_shape(q)}")
    v_layout = layout.replace("K]", "V]")
    if v.dim() != rank or v.shape[:-1] != k.shape[:-1]:
        raise ValueError(f"v must have shape {v_layout} = {_shape(k)[:-1] + ['V']}, got {_shape(v)}")
    devices = {x.device for x in (q, k, v)}
    if len(devices) > 1:
        raise ValueError(f"q, k and v must be on one device, got {sorted(map(str, devices))}")
    if step:
        batch, heads, key_dim = k.shape
        length = 1
    else:
        batch, length, heads, key_dim = k.shape
    if key_dim == 0 or v.shape[-1] == 0:
        raise ValueError(f"key and value dimensions must be positive, got K={key_dim}, V={v.shape[-1]}")
    return batch, length, heads, key_dim, v.shape[-1]


def check_gate(name: str, x: Tensor | None, shape: tuple[int, ...], layout: str, *,
               low: float | None = None, high: float | None = None, low_open: bool = False,
               allow_channel: int | None = None) -> None:
    """Check a per-token gate: its shape is ``shape`` (or ``shape + (allow_channel,)``) and its values
    lie in ``[low, high]`` (``(low, high]`` with ``low_open``). NaN is out of every range."""
    if x is None:
        return
    check_floating(name, x)
    shapes = [tuple(shape)] + ([tuple(shape) + (allow_channel,)] if allow_channel is not None else [])
    if tuple(x.shape) not in shapes:
        expected = " or ".join(f"{layout if i == 0 else layout[:-1] + ', K]'} = {list(s)}" for i, s in enumerate(shapes))
        raise ValueError(f"{name} must have shape {expected}, got {_shape(x)}")
    if x.numel() == 0:
        return
    x = x.detach()
    inside = torch.ones_like(x, dtype=torch.bool)
    if low is not None:
        inside &= (x > low) if low_open else (x >= low)
    if high is not None:
        inside &= x <= high
    if not bool(inside.all()):
        interval = (f"{'(' if low_open or low is None else '['}{'-inf' if low is None else f'{low:g}'}, "
                    f"{'inf' if high is None else f'{high:g}'}]")
        bad = x[~inside]
        raise ValueError(f"{name} must lie in {interval}; found {bad.numel()} value(s) outside, "
                         f"e.g. {bad[0].item():g}")


def check_scale(scale: float | None, key_dim: int) -> float:
    if scale is None:
        return key_dim ** -0.5
    if isinstance(scale, Tensor) or not isinstance(scale, (int, float)) or not scale > 0 or scale != scale:
        raise ValueError(f"scale must be a positive float (default K**-0.5), got {scale!r}")
    return float(scale)


def check_chunk_size(chunk_size: int) -> int:
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive int (16, 32, 64 or 128 are typical), got {chunk_size!r}")
    return chunk_size


def as_state(name: str, state: BayesState | Tensor | tuple | None) -> BayesState | None:
    """Accept a :class:`BayesState`, a ``(mean, cov)`` tuple or a bare mean tensor."""
    if state is None or isinstance(state, BayesState):
        return state
    if isinstance(state, Tensor):
        return BayesState(state, None)
    if isinstance(state, tuple) and len(state) == 2:
        return BayesState(*state)
    raise ValueError(f"{name} must be a BayesState(mean, cov), a (mean, cov) tuple or a mean tensor [B, H, V, K], "
                     f"got {type(state).__name__}")


def check_state(name: str, state: BayesState | None, batch: int, heads: int, key_dim: int,
                value_dim: int, *, with_cov: bool, check_range: bool = True) -> BayesState | None:
    """Check an initial state and return it with a symmetrised covariance.

    ``mean`` must be ``[B, H, V, K]`` and ``cov`` ``[B, H, K, K]`` with eigenvalues in ``[0, 1]`` up to
    :data:`COV_TOLERANCE` (checked when ``check_range``: it costs ``O(K³)`` per head, so the per-token
    decoding step skips it).
    """
    if state is None:
        return None
    mean, cov = state
    check_floating(f"{name}.mean", mean)
    expected = [batch, heads, value_dim, key_dim]
    if _shape(mean) != expected:
        raise ValueError(f"{name}.mean must have shape [B, H, V, K] = {expected} (value-first), got {_shape(mean)}")
    if cov is None:
        return BayesState(mean, None)
    if not with_cov:
        raise ValueError(f"{name}.cov must be None: this design tracks no covariance")
    check_floating(f"{name}.cov", cov)
    expected = [batch, heads, key_dim, key_dim]
    if _shape(cov) != expected:
        raise ValueError(f"{name}.cov must have shape [B, H, K, K] = {expected}, got {_shape(cov)}")
    cov = 0.5 * (cov + cov.transpose(-1, -2))
    if check_range and cov.numel():
        eig = torch.linalg.eigvalsh(cov.detach().double())
        if not bool(((eig >= -COV_TOLERANCE) & (eig <= 1 + COV_TOLERANCE)).all()):
            raise ValueError(f"{name}.cov must be a covariance within [0, I] (eigenvalues in [0, 1] up to "
                             f"{COV_TOLERANCE:g}); found eigenvalues in [{eig.min().item():.3g}, {eig.max().item():.3g}]")
    return BayesState(mean, cov)


def check_cu_seqlens(cu_seqlens: Tensor | None, batch: int, length: int) -> Tensor | None:
    """``cu_seqlens`` (FlashAttention convention): 1-d integer tensor ``[0, t_1, ..., T]``, nondecreasing,
    with ``B == 1``."""
    if cu_seqlens is None:
        return None
    if not isinstance(cu_seqlens, Tensor) or cu_seqlens.dim() != 1 or cu_seqlens.is_floating_point() \
            or cu_seqlens.dtype == torch.bool:
        raise ValueError("cu_seqlens must be a 1-d integer tensor [0, t_1, ..., T] (FlashAttention convention)")
    if batch != 1:
        raise ValueError(f"cu_seqlens requires packed inputs with B == 1, got B = {batch}")
    values = cu_seqlens.tolist()
    if len(values) < 2 or values[0] != 0 or values[-1] != length:
        raise ValueError(f"cu_seqlens must start at 0 and end at T = {length}, got {values}")
    if any(b < a for a, b in zip(values, values[1:])):
        raise ValueError(f"cu_seqlens must be nondecreasing, got {values}")
    return cu_seqlens
