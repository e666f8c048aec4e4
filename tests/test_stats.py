"""probseq.stats: the t quantile against the t distribution itself (its density integrated numerically)."""

from __future__ import annotations

import math

import pytest

from probseq.stats import t_975, t_interval_95


def _t_cdf(x: float, df: int, steps: int = 4000) -> float:
    """P(T ≤ x) for x > 0: ½ + ∫₀ˣ of the t density (Simpson's rule)."""
    log_norm = math.lgamma((df + 1) / 2) - math.lgamma(df / 2) - 0.5 * math.log(df * math.pi)

    def density(t: float) -> float:
        return math.exp(log_norm - (df + 1) / 2 * math.log1p(t * t / df))

    h = x / steps
    total = density(0.0) + density(x)
    total += sum((4 if i % 2 else 2) * density(i * h) for i in range(1, steps))
    return 0.5 + total * h / 3


@pytest.mark.parametrize("df", [1, 2, 5, 9, 14, 19, 29, 30, 31, 40, 60, 120, 1000])
def test_t_975_is_the_0975_quantile(df):
    assert _t_cdf(t_975(df), df) == pytest.approx(0.975, abs=2e-5)


def test_t_975_decreases_to_the_normal_quantile_and_refuses_a_bad_df():
    values = [t_975(df) for df in range(1, 200)]
    assert all(a > b for a, b in zip(values, values[1:]))
    assert t_975(10**6) == pytest.approx(1.959964, abs=1e-5)
    for bad in (0, -1, 2.5):
        with pytest.raises(ValueError, match="degrees of freedom"):
            t_975(bad)


def test_t_interval_95_by_hand():
    values = [0.1, 0.3, 0.2, 0.6]
    mean, half = t_interval_95(values)
    sd = math.sqrt(sum((v - 0.3) ** 2 for v in values) / 3)
    assert mean == pytest.approx(0.3) and half == pytest.approx(3.1824 * sd / 2)
    assert t_interval_95([0.4]) == (0.4, 0.0) and all(math.isnan(x) for x in t_interval_95([]))
