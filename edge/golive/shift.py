"""Distribution shift between a reference sample and a current one: the population stability index with its
noise floor, and the two-sample Kolmogorov-Smirnov test.
Tested by tests/edge/golive/test_statistics.py (against scipy)."""
from __future__ import annotations

import math

import numpy as np

from medge.edge.errors import UsageError
from medge.edge.golive.distributions import chi2_quantile, kolmogorov_sf
from medge.edge.numeric import as_values

PSI_FLOOR = 1e-4  # proportions below this count as this in the PSI sum, so that an empty bin gives no log(0)


def psi(reference, current, bins: int = 10) -> dict:
    """Population stability index of a score (or any 1-D statistic) between a reference and a current sample.

    Bin edges at the reference's quantiles (deciles by default; duplicate edges, from ties, collapsed;
    the outer edges -inf and inf), bin i = [low, high); proportions below 1e-4 count as 1e-4 in the
    sum, so that an empty bin gives no log(0): psi = sum((c - r) * ln(c / r)). The usual reading:
    < 0.1 stable, 0.1 to 0.25 a moderate shift (look into it), > 0.25 a major shift (act).

    Args:
        reference: the reference sample (e.g. the bundle's validation scores).
        current: the current sample (e.g. this month's scores).
        bins: the number of quantile bins before collapsing.

    Returns:
        {"psi", "bins": [{"low", "high", "reference", "current"}, ...]}: reference and current are the
        proportions of each sample in the bin (before the floor).
    """
    if isinstance(bins, (bool, np.bool_)) or not isinstance(bins, (int, np.integer)) or bins < 1:
        raise UsageError(f"bins must be a positive integer, got {bins!r}")
    r, c = as_values(reference, "reference"), as_values(current, "current")
    if not r.size or not c.size:
        raise UsageError("psi needs a non-empty reference and current sample")
    inner = np.unique(np.quantile(r, np.linspace(0, 1, int(bins) + 1)[1:-1]))
    k = inner.size + 1
    r_share = np.bincount(np.searchsorted(inner, r, side="right"), minlength=k) / r.size
    c_share = np.bincount(np.searchsorted(inner, c, side="right"), minlength=k) / c.size
    rf, cf = np.maximum(r_share, PSI_FLOOR), np.maximum(c_share, PSI_FLOOR)
    edges = np.r_[-np.inf, inner, np.inf]
    rows = [{"low": float(edges[i]), "high": float(edges[i + 1]), "reference": float(r_share[i]),
             "current": float(c_share[i])} for i in range(k)]
    return {"psi": float(np.sum((cf - rf) * np.log(cf / rf))), "bins": rows}


def psi_noise_floor(bins: int, n_reference: int, n_current: int, p: float = 0.999) -> float:
    """The PSI that two samples of these sizes from one distribution exceed with probability 1 - p.

    PSI is the Jeffreys divergence of the binned proportions; with no shift, PSI / (1/n_r + 1/n_c) is
    about chi-square with bins - 1 degrees of freedom (the two-sample homogeneity statistic). So with
    48 validation cases and 80 records, 10 bins give a PSI near 0.3 by chance alone: above the usual
    0.25 'major shift'. A PSI is read as a shift only above both.
    """
    return chi2_quantile(p, bins - 1) * (1 / n_reference + 1 / n_current)


def ks_2samp(a, b) -> dict:
    """Two-sample Kolmogorov-Smirnov test, two-sided, with scipy's asymptotic p-value.

    The statistic is the largest gap between the two empirical CDFs (``scipy.stats.ks_2samp``). The
    p-value is that of ``scipy.stats.ks_2samp(a, b, method="asymp")``: P(D_n >= statistic) under the
    exact one-sample distribution of D_n (``scipy.stats.kstwo``) for n = round(m k / (m + k)), m and
    k the sample sizes; NaN when that n is 0 (two samples of one value each), as scipy. It agrees
    with scipy to about 1e-8 relative (the Birnbaum-Tingey sum is taken in float64 logs here, in
    double-double arithmetic in scipy).

    Args:
        a: one sample (e.g. the bundle's validation scores).
        b: the other (e.g. this month's scores).

    Returns:
        {"statistic", "pvalue", "method": "asymptotic"}.
    """
    x, y = np.sort(as_values(a, "a")), np.sort(as_values(b, "b"))
    if not x.size or not y.size:
        raise UsageError("ks_2samp needs two non-empty samples")
    both = np.concatenate([x, y])
    gaps = np.searchsorted(x, both, side="right") / x.size - np.searchsorted(y, both, side="right") / y.size
    statistic = float(max(np.max(gaps), min(max(-np.min(gaps), 0.0), 1.0)))
    big, small = sorted([float(x.size), float(y.size)], reverse=True)
    n = round(big * small / (big + small))
    pvalue = kolmogorov_sf(n, statistic) if n >= 1 else math.nan
    return {"statistic": statistic, "pvalue": pvalue, "method": "asymptotic"}
