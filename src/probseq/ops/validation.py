"""Input validation at the public boundary (docs/numerics.md, "Validation").

Every public entry point (``bayes_filter``, ``bayes_step``, ``superposition_filter``,
``superposition_step``, ``run_filter`` and the presets) returns a correct result or raises a
``ValueError`` naming the argument and the expected shape or range — never a silent broadcast.

Two kinds of check:

- **Structure** (types, ranks, shapes, dtypes, Python scalars): free, always done.
- **Values** (finiteness, gate ranges, the covariance range of a given ``P_0``, ``cu_seqlens``
  ordering, and a numerical breakdown of the result): each is a reduction on the device. They are
  collected in :class:`ValueChecks` and resolved with **one** host synchronisation per call, and the
  whole set is skipped with ``validate=False`` (for trusted training loops, GPUs and
  ``torch.compile``: no synchronisation at all then).
"""

from __future__ import annotations

import math
import numbers
from typing import Callable

import torch
from torch import Tensor

from probseq.types import BayesState

# Tolerance for a given initial covariance to count as within [0, I] (states our own float32
# filters return are within 1e-5; see tests/ops/test_robustness.py).
COV_TOLERANCE = 1e-4


def _shape(x: Tensor) -> list[int]:
    return list(x.shape)


class ValueChecks:
    """Value checks collected as device booleans and resolved with one host synchronisation.

    ``require(ok, message)`` registers a 0-d bool tensor and a function that builds the error message
    (called only on failure, so it may inspect the data); :meth:`resolve` raises the first failure in
    registration order.
    """

    def __init__(self) -> None:
        self._flags: list[Tensor] = []
        self._messages: list[Callable[[], str]] = []

    def require(self, ok: Tensor, message: Callable[[], str]) -> None:
        self._flags.append(ok.reshape(()).to(torch.bool))
        self._messages.append(message)

    def finite(self, name: str, x: Tensor | None, dims: tuple[str, ...] = ()) -> None:
        """``x`` has no NaN or Inf; with ``dims`` (names of the leading dims, e.g. ``("batch", "time")``)
        the message also gives the index of the first bad value along them."""
        if x is None or x.numel() == 0:
            return
        x = x.detach()
        self.require(
            torch.isfinite(x).all(),
            lambda: f"{name} contains NaN or Inf ({_count_nonfinite(x)}{_first_nonfinite(x, dims)})",
        )

    def in_range(
        self,
        name: str,
        x: Tensor | None,
        *,
        low: float | None = None,
        high: float | None = None,
        low_open: bool = False,
    ) -> None:
        """``x`` in ``[low, high]`` (``(low, high]`` with ``low_open``); NaN is outside every range,
        ``±inf`` inside an unbounded side."""
        if x is None or x.numel() == 0:
            return
        x = x.detach()
        inside = ~torch.isnan(x)
        if low is not None:
            inside &= (x > low) if low_open else (x >= low)
        if high is not None:
            inside &= x <= high

        def message() -> str:
            interval = (
                f"{'(' if low_open or low is None else '['}{'-inf' if low is None else f'{low:g}'}, "
                f"{'inf' if high is None else f'{high:g}'}]"
            )
            bad = x[~inside]
            return f"{name} must lie in {interval}; found {bad.numel()} value(s) outside, e.g. {bad[0].item():g}"

        self.require(inside.all(), message)

    def resolve(self) -> None:
        if not self._flags:
            return
        flags = torch.stack(self._flags).tolist()  # the one host synchronisation
        for ok, message in zip(flags, self._messages):
            if not ok:
                raise ValueError(message())


def _count_nonfinite(x: Tensor) -> str:
    nan, inf = int(torch.isnan(x).sum()), int(torch.isinf(x).sum())
    return f"{nan} NaN, {inf} Inf of {x.numel()} values"


def _first_nonfinite(x: Tensor, dims: tuple[str, ...]) -> str:
    """``"; first at batch 1, time 5"``: the leading indices of the first non-finite value (row-major)."""
    if not dims:
        return ""
    index = (~torch.isfinite(x)).nonzero()[0].tolist()
    return "; first at " + ", ".join(f"{dim} {i}" for dim, i in zip(dims, index))


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


def check_gate(
    name: str,
    x: Tensor | None,
    shape: tuple[int, ...],
    layout: str,
    checks: ValueChecks | None,
    *,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    allow_channel: int | None = None,
    device: torch.device | None = None,
) -> None:
    """Check a per-token gate: a floating tensor of shape ``shape`` (or ``shape + (allow_channel,)``) on
    ``device``; its values in ``[low, high]`` are registered with ``checks`` (skipped when ``None``)."""
    if x is None:
        return
    check_floating(name, x)
    shapes = [tuple(shape)] + ([tuple(shape) + (allow_channel,)] if allow_channel is not None else [])
    if tuple(x.shape) not in shapes:
        expected = " or ".join(
            f"{layout if i == 0 else layout[:-1] + ', K]'} = {list(s)}" for i, s in enumerate(shapes)
        )
        raise ValueError(f"{name} must have shape {expected}, got {_shape(x)}")
    if device is not None and x.device != device:
        raise ValueError(f"{name} must be on the device of q, k, v ({device}), got {x.device}")
    if checks is not None:
        checks.in_range(name, x, low=low, high=high, low_open=low_open)


def check_positive_number(name: str, value, *, allow_zero: bool = False, hint: str = "") -> float:
    """A finite real number ``> 0`` (``≥ 0`` with ``allow_zero``): Python and NumPy scalars alike."""
    # -inf < value < inf rather than math.isfinite: false for NaN alike, and torch.compile traces comparisons
    if (
        isinstance(value, bool)
        or not isinstance(value, numbers.Real)
        or not -math.inf < value < math.inf
        or not (value >= 0 if allow_zero else value > 0)
    ):
        raise ValueError(f"{name} must be a finite float {'>= 0' if allow_zero else '> 0'}{hint}, got {value!r}")
    return float(value)


def check_scale(scale: float | None, key_dim: int) -> float:
    if scale is None:
        return key_dim**-0.5
    return check_positive_number("scale", scale, hint=" (default K**-0.5)")


def check_r_min(r_min: float) -> float:
    return check_positive_number("r_min", r_min, allow_zero=True, hint=" (the floor on the write noise r)")


def check_chunk_size(chunk_size: int, name: str = "chunk_size") -> int:
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, numbers.Integral) or chunk_size < 1:
        raise ValueError(f"{name} must be a positive int (16, 32, 64 or 128 are typical), got {chunk_size!r}")
    return int(chunk_size)


def check_covariance_dtype(dtype: torch.dtype | None) -> torch.dtype | None:
    if dtype not in (None, torch.float32, torch.float64):
        raise ValueError(f"covariance_dtype must be None, torch.float32 or torch.float64, got {dtype!r}")
    return dtype


def as_state(name: str, state: BayesState | Tensor | tuple | None) -> BayesState | None:
    """Accept a :class:`BayesState`, a ``(mean, cov)`` tuple or a bare mean tensor."""
    if state is None or isinstance(state, BayesState):
        return state
    if isinstance(state, Tensor):
        return BayesState(state, None)
    if isinstance(state, tuple) and len(state) == 2:
        return BayesState(*state)
    raise ValueError(
        f"{name} must be a BayesState(mean, cov), a (mean, cov) tuple or a mean tensor [B, H, V, K], "
        f"got {type(state).__name__}"
    )


def check_state(
    name: str,
    state: BayesState | Tensor | tuple | None,
    batch: int,
    heads: int,
    key_dim: int,
    value_dim: int,
    checks: ValueChecks | None,
    *,
    with_cov: bool,
    check_range: bool = True,
) -> BayesState | None:
    """Check an initial state; return it as a :class:`BayesState` with a symmetrised covariance.

    ``mean`` must be ``[B, H, V, K]`` and ``cov`` ``[B, H, K, K]``. With ``checks``, both must be finite
    and (when ``check_range``) ``cov`` must have eigenvalues in ``[0, 1]`` up to :data:`COV_TOLERANCE`
    (``O(K³)`` per head: the per-token decoding step skips it).
    """
    state = as_state(name, state)
    if state is None:
        return None
    mean, cov = state
    check_floating(f"{name}.mean", mean)
    expected = [batch, heads, value_dim, key_dim]
    if _shape(mean) != expected:
        raise ValueError(f"{name}.mean must have shape [B, H, V, K] = {expected} (value-first), got {_shape(mean)}")
    if checks is not None:
        checks.finite(f"{name}.mean", mean)
    if cov is None:
        return BayesState(mean, None)
    if not with_cov:
        raise ValueError(f"{name}.cov must be None: this design tracks no covariance")
    check_floating(f"{name}.cov", cov)
    expected = [batch, heads, key_dim, key_dim]
    if _shape(cov) != expected:
        raise ValueError(f"{name}.cov must have shape [B, H, K, K] = {expected}, got {_shape(cov)}")
    cov = 0.5 * (cov + cov.transpose(-1, -2))
    if checks is not None and cov.numel():
        checks.finite(f"{name}.cov", cov)
        if check_range:
            _check_cov_range(name, cov, checks)
    return BayesState(mean, cov)


def _check_cov_range(name: str, cov: Tensor, checks: ValueChecks) -> None:
    cov = cov.detach().double()
    finite = torch.isfinite(cov).all(dim=(-1, -2), keepdim=True)
    eig = torch.linalg.eigvalsh(torch.where(finite, cov, torch.zeros((), dtype=cov.dtype, device=cov.device)))
    ok = ((eig >= -COV_TOLERANCE) & (eig <= 1 + COV_TOLERANCE)).all()
    checks.require(
        ok,
        lambda: (
            f"{name}.cov must be a covariance within [0, I] (eigenvalues in [0, 1] up to "
            f"{COV_TOLERANCE:g}); found eigenvalues in "
            f"[{eig.min().item():.3g}, {eig.max().item():.3g}]"
        ),
    )


def check_cu_seqlens(cu_seqlens: Tensor | None, batch: int, length: int, checks: ValueChecks | None) -> Tensor | None:
    """``cu_seqlens`` (FlashAttention convention): 1-d integer tensor ``[0, t_1, ..., T]``, nondecreasing,
    with ``B == 1``. Its values are checked through ``checks``."""
    if cu_seqlens is None:
        return None
    if (
        not isinstance(cu_seqlens, Tensor)
        or cu_seqlens.dim() != 1
        or cu_seqlens.is_floating_point()
        or cu_seqlens.dtype == torch.bool
        or cu_seqlens.numel() < 2
    ):
        raise ValueError("cu_seqlens must be a 1-d integer tensor [0, t_1, ..., T] (FlashAttention convention)")
    if batch != 1:
        raise ValueError(f"cu_seqlens requires packed inputs with B == 1, got B = {batch}")
    if checks is not None:
        checks.require(
            (cu_seqlens[0] == 0) & (cu_seqlens[-1] == length),
            lambda: f"cu_seqlens must start at 0 and end at T = {length}, got {cu_seqlens.tolist()}",
        )
        checks.require(
            (cu_seqlens[1:] >= cu_seqlens[:-1]).all(),
            lambda: f"cu_seqlens must be nondecreasing, got {cu_seqlens.tolist()}",
        )
    return cu_seqlens
