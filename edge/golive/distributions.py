"""Quantiles and tails of the distributions the go-live statistics need, written from the papers (the edge box has
no scipy): the normal quantile (Acklam, one Halley step), the chi-square quantile (Wilson-Hilferty) and the
one-sample Kolmogorov-Smirnov tail (Simard & L'Ecuyer's choice of methods).
Tested by tests/edge/golive/test_statistics.py
(against scipy)."""
from __future__ import annotations

import math

import numpy as np

from medge.edge.errors import UsageError

_ACKLAM_A = (-3.969683028665376e01, 2.209460984245205e02, -2.759285104469687e02, 1.383577518672690e02,
             -3.066479806614716e01, 2.506628277459239e00)

_ACKLAM_B = (-5.447609879822406e01, 1.615858368580409e02, -1.556989798598866e02, 6.680131188771972e01,
             -1.328068155288572e01, 1.0)

_ACKLAM_C = (-7.784894002430293e-03, -3.223964580411365e-01, -2.400758277161838e00, -2.549732539343734e00,
             4.374664141464968e00, 2.938163982698783e00)

_ACKLAM_D = (7.784695709041462e-03, 3.224671290700398e-01, 2.445134137142996e00, 3.754408661907416e00, 1.0)

_ACKLAM_P_LOW = 0.02425


def _horner(coefficients, x: float) -> float:
    """Polynomial with coefficients from the highest power down."""
    acc = 0.0
    for c in coefficients:
        acc = acc * x + c
    return acc


def _lower_quantile(p: float) -> float:
    """Normal quantile for 0 < p <= 0.5: Acklam's approximation and one Halley step."""
    if p < _ACKLAM_P_LOW:
        q = math.sqrt(-2 * math.log(p))
        x = _horner(_ACKLAM_C, q) / _horner(_ACKLAM_D, q)
    else:
        q = p - 0.5
        r = q * q
        x = _horner(_ACKLAM_A, r) * q / _horner(_ACKLAM_B, r)
    if x * x / 2 < 700:  # beyond, exp overflows: p is subnormal and the approximation is all we have
        e = 0.5 * math.erfc(-x / math.sqrt(2)) - p
        u = e * math.sqrt(2 * math.pi) * math.exp(x * x / 2)
        x -= u / (1 + x * u / 2)
    return x


def normal_quantile(p: float) -> float:
    """Inverse of the standard normal CDF (as ``scipy.special.ndtri``), to about 1e-15 relative.

    Acklam's algorithm refined with one Halley step on ``math.erfc``. Above 0.5 the quantile is
    computed as ``-normal_quantile(1 - p)``: ``1 - p`` is exact there, and the lower tail is accurate.

    Args:
        p: a probability in [0, 1].

    Returns:
        x with P(Z <= x) = p; -inf for 0, inf for 1.
    """
    p = float(p)
    if not 0 <= p <= 1:
        raise UsageError(f"normal_quantile: p must be in [0, 1], got {p!r}")
    if p == 0:
        return -math.inf
    if p == 1:
        return math.inf
    return _lower_quantile(p) if p <= 0.5 else -_lower_quantile(1 - p)


def critical_value(alpha: float) -> float:
    """z such that P(|Z| > z) = alpha."""
    if not (isinstance(alpha, (int, float)) and 0 < alpha < 1):
        raise UsageError(f"alpha must be in (0, 1), got {alpha!r}")
    return -normal_quantile(alpha / 2)


def chi2_quantile(p: float, df: int) -> float:
    """The p-quantile of a chi-square distribution with ``df`` degrees of freedom, by the Wilson-Hilferty cube
    (for p in [0.9, 0.9999]: within 4 % of the exact value for df >= 3, within 1.3 % for df >= 9; slightly
    above it in the upper tail, so a floor built on it errs towards fewer alarms); 0 for df < 1."""
    if df < 1:
        return 0.0
    z = normal_quantile(p)
    return df * (1 - 2 / (9 * df) + z * math.sqrt(2 / (9 * df))) ** 3


# -- the one-sample Kolmogorov-Smirnov tail ------------------------------------------------------------------
#
# scipy.stats.ks_2samp(method="asymp") takes, for the two-sided alternative, the p-value
# kstwo.sf(D, round(m n / (m + n))): the exact distribution of the one-sample two-sided statistic
# D_n, for an "effective" sample size. scipy evaluates it (scipy.stats._ksstats) by choosing between
# methods as Simard & L'Ecuyer (2011, J. Stat. Softw. 39(11)) propose; the functions below make the
# same choice (same regions), each method written from its paper:
# - Ruben & Gambino's closed forms at the ends of the support;
# - the Durbin matrix as computed by Marsaglia, Tsang & Wang (2003, J. Stat. Softw. 8(18)), exact;
#   scipy uses Pomeranz's (exact) recursion for n <= 140 and 0.754693 < n x^2 <= 4: the Durbin
#   matrix gives the same value there;
# - the Pelz & Good (1976) asymptotic series for large n and small x;
# - twice the one-sided Smirnov tail (Birnbaum & Tingey 1951) where the two tails cannot overlap
#   (x >= 0.5) or their overlap is negligible (large n x^2).

_LOG_MIN = -708.0  # exp() of less underflows


def _log_factorial_over_power(n: int) -> float:
    """log(n! / n^n)."""
    if n < 50:
        return float(np.sum(np.log(np.arange(1, n + 1) / n)))
    # Stirling's series; the first omitted term is below 1e-18 for n >= 50.
    return 0.5 * math.log(2 * math.pi * n) - n + 1 / (12 * n) - 1 / (360 * n**3) + 1 / (1260 * n**5) - 1 / (1680 * n**7)


def _rescaled(a: np.ndarray) -> tuple[np.ndarray, int]:
    """(a / 2^e, e) with the largest |entry| in [0.5, 1): exact, keeps matrix powers in range."""
    e = math.frexp(float(np.max(np.abs(a))))[1]
    return np.ldexp(a, -e), e


def _durbin_cdf(n: int, x: float) -> float:
    """P(D_n < x) by the Durbin matrix, x = (k - h) / n (Marsaglia, Tsang & Wang 2003)."""
    k = math.ceil(n * x)
    h = k - n * x
    m = 2 * k - 1
    inv_factorial = np.exp(-np.array([math.lgamma(j + 1) for j in range(m + 1)]))
    i = np.arange(m)
    lag = i[:, None] - i[None, :] + 1
    h_matrix = np.where(lag >= 0, inv_factorial[np.clip(lag, 0, m)], 0.0)
    h_powers = h ** np.arange(1, m + 1) * inv_factorial[1:]  # h^j / j!, j = 1..m
    h_matrix[:, 0] -= h_powers
    h_matrix[m - 1, :] -= h_powers[::-1]
    if 2 * h - 1 > 0:
        h_matrix[m - 1, 0] += (2 * h - 1) ** m * inv_factorial[m]
    power, exponent = np.eye(m), 0  # h_matrix^n = power * 2^exponent, by repeated squaring
    base, base_exponent = h_matrix, 0
    n_left = n
    while n_left:
        if n_left & 1:
            power, e = _rescaled(power @ base)
            exponent += base_exponent + e
        n_left >>= 1
        if n_left:
            base, e = _rescaled(base @ base)
            base_exponent = 2 * base_exponent + e
    value = power[k - 1, k - 1]
    if value <= 0:
        return 0.0
    return min(math.exp(math.log(value) + exponent * math.log(2) + _log_factorial_over_power(n)), 1.0)


def _pelz_good_cdf(n: int, x: float) -> float:
    """P(D_n <= x) by the Pelz & Good (1976) series, for large n and small x."""
    z = x * math.sqrt(n)
    z2 = z * z
    if -math.pi**2 / (8 * z2) < _LOG_MIN:
        return 0.0
    k = np.arange(1, math.ceil(16 * z / math.pi) + 1, dtype=np.float64)
    m2 = (2 * k - 1) ** 2
    w = np.exp(-math.pi**2 * m2 / (8 * z2))
    u = np.exp(-math.pi**2 * k * k / (2 * z2))
    pi2, root = math.pi**2, math.sqrt(2 * math.pi)
    z4, z6 = z2 * z2, z2 * z2 * z2
    k0 = root / z * np.sum(w)
    k1 = root / (6 * z4) * np.sum((pi2 * m2 / 4 - z2) * w)
    k2 = (root / (72 * z**7) * np.sum((6 * z6 + 2 * z4 + pi2 * (2 * z4 - 5 * z2) * m2 / 4
                                       + pi2**2 * (1 - 2 * z2) * m2**2 / 16) * w)
          - root * pi2 / (36 * z**3) * np.sum(k * k * u))
    k3 = (root / (6480 * z**10) * np.sum((pi2**3 * (5 - 30 * z2) * m2**3 / 64 + pi2**2 * (212 * z4 - 60 * z2) * m2**2 / 16
                                          + pi2 * (135 * z4 - 96 * z6) * m2 / 4 - 30 * z6 - 90 * z4 * z4) * w)
          + root * pi2 / (216 * z6) * np.sum((3 * z2 - pi2 * k * k) * k * k * u))
    return float(k0 + k1 / math.sqrt(n) + k2 / n + k3 / n**1.5)


def _smirnov_sf(n: int, x: float) -> float:
    """P(D_n^+ >= x), the one-sided tail, by Birnbaum & Tingey's (1951) sum of positive terms, in logs."""
    if x <= 0:
        return 1.0
    if x >= 1 or -2 * n * x * x < _LOG_MIN:
        return 0.0
    if n > 1_000_000:  # as scipy: the sum would be too long; p ~ exp(-(6 n x + 1)^2 / (18 n))
        return math.exp(-((6 * n * x + 1) ** 2) / (18 * n))
    v = np.arange(0, math.floor(n * (1 - x)) + 1, dtype=np.float64)
    below = (n - v) / n - x  # 1 - x - v/n
    v, below = v[below > 0], below[below > 0]
    log_binomial = np.r_[0.0, np.cumsum(np.log((n - v[:-1]) / (v[:-1] + 1)))]
    log_terms = log_binomial + (n - v) * np.log(below) + (v - 1) * np.log(x + v / n)
    top = np.max(log_terms)
    return min(x * math.exp(top) * float(np.sum(np.exp(log_terms - top))), 1.0)


def kolmogorov_sf(n: int, x: float) -> float:
    """P(D_n >= x) for the one-sample two-sided Kolmogorov-Smirnov statistic (as scipy.stats.kstwo.sf)."""
    if x >= 1:
        return 0.0
    t = n * x
    if t <= 0.5:
        return 1.0
    if t <= 1:  # Ruben & Gambino: P(D_n < x) = n!/n^n (2t - 1)^n
        return 1 - math.exp(_log_factorial_over_power(n) + n * math.log(2 * t - 1))
    if t >= n - 1:  # Ruben & Gambino
        return min(2 * (1 - x) ** n, 1.0)
    if x >= 0.5:  # the two one-sided tails are disjoint
        return min(2 * _smirnov_sf(n, x), 1.0)
    nx2 = t * x
    if n <= 140:
        return min(2 * _smirnov_sf(n, x), 1.0) if nx2 > 4 else max(1 - _durbin_cdf(n, x), 0.0)
    if nx2 >= 370:
        return 0.0
    if nx2 >= 2.2:
        return min(2 * _smirnov_sf(n, x), 1.0)
    cdf = _durbin_cdf(n, x) if n <= 100_000 and n * x**1.5 <= 1.4 else _pelz_good_cdf(n, x)
    return min(max(1 - cdf, 0.0), 1.0)
