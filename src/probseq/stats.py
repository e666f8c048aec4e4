"""Student's t quantile for the project's 95 % intervals (no SciPy dependency).

``t_975(df)`` is the 0.975 quantile of Student's t with ``df`` degrees of freedom: exact to the 4 decimals of the
table for ``df ≤ 30``; beyond, the Cornish–Fisher expansion in ``1/df`` around the normal quantile ``z``
(Abramowitz & Stegun 26.7.5), accurate to better than 1e-4 there:

    t ≈ z + (z³ + z)/(4ν) + (5z⁵ + 16z³ + 3z)/(96ν²) + (3z⁷ + 19z⁵ + 17z³ − 15z)/(384ν³)
"""

from __future__ import annotations

import math

Z_975 = 1.959963984540054  # the normal's 0.975 quantile

# df → t_0.975(df), df = 1 … 30 (every df: a table with gaps would have to round df down, widening the interval)
_TABLE = (
    12.7062, 4.3027, 3.1824, 2.7764, 2.5706, 2.4469, 2.3646, 2.3060, 2.2622, 2.2281,
    2.2010, 2.1788, 2.1604, 2.1448, 2.1314, 2.1199, 2.1098, 2.1009, 2.0930, 2.0860,
    2.0796, 2.0739, 2.0687, 2.0639, 2.0595, 2.0555, 2.0518, 2.0484, 2.0452, 2.0423,
)  # fmt: skip


def t_975(df: int) -> float:
    """The 0.975 quantile of Student's t with ``df ≥ 1`` degrees of freedom (two-sided 95 % intervals)."""
    if df < 1 or df != int(df):
        raise ValueError(f"degrees of freedom must be an integer >= 1, got {df!r}")
    if df <= len(_TABLE):
        return _TABLE[int(df) - 1]
    z, nu = Z_975, float(df)
    return (
        z
        + (z**3 + z) / (4 * nu)
        + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * nu**2)
        + (3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / (384 * nu**3)
    )


def t_interval_95(values: list[float]) -> tuple[float, float]:
    """Mean and 95 % Student-t half-width of ``values`` (``nan`` for none, half-width 0 for one value)."""
    n = len(values)
    if n == 0:
        return math.nan, math.nan
    mean = sum(values) / n
    if n == 1:
        return mean, 0.0
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    return mean, t_975(n - 1) * std / math.sqrt(n)
