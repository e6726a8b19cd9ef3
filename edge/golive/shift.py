"""Distribution shift between a reference sample and a current one: the population stability index (additively
smoothed) with its noise floor simulated at the sample sizes, the two-sample Kolmogorov-Smirnov test, and the
smallest location shift the two together detect (``min_detectable_shift``).
Tested by tests/edge/golive/test_statistics.py (against scipy)."""
from __future__ import annotations

import functools
import math

import numpy as np

from medge.edge.errors import UsageError
from medge.edge.golive.distributions import kolmogorov_sf
from medge.edge.numeric import as_values

PSI_PSEUDOCOUNT = 1.0  # Laplace's: one case added to every bin of each sample, so that an empty bin gives no log(0)
NULL_DRAWS = 20_000  # simulated PSIs of one distribution behind each noise floor (seeded: the same floor every run)
# min_detectable_shift simulates at most this many scores per sample: its arrays are draws x size, and a year of
# records would otherwise take gigabytes. Fewer cases see less, so above it the answer is an upper bound.
MAX_SIMULATED_SIZE = 5_000


def psi(reference, current, bins: int = 10, pseudocount: float = PSI_PSEUDOCOUNT) -> dict:
    """Population stability index of a score (or any 1-D statistic) between a reference and a current sample.

    Bin edges at the reference's quantiles (deciles by default; duplicate edges, from ties, collapsed;
    the outer edges -inf and inf), bin i = [low, high). Each sample's counts are smoothed additively
    (Laplace): share = (count + pseudocount) / (n + k * pseudocount), k bins after collapsing, so that an empty bin weighs
    what one case more would (a fixed floor such as 1e-4 would make an empty bin add ~0.69 at any
    sample size). psi = sum((c - r) * ln(c / r)) over the smoothed shares. The usual reading:
    < 0.1 stable, 0.1 to 0.25 a moderate shift, > 0.25 a major shift; whether a PSI is more than
    chance at these sample sizes is ``psi_noise_floor``'s question.

    Args:
        reference: the reference sample (e.g. the bundle's validation scores).
        current: the current sample (e.g. this month's scores).
        bins: the number of quantile bins before collapsing.
        pseudocount: added to every bin's count of each sample (0: no smoothing; an empty bin then gives inf).

    Returns:
        {"psi", "pseudocount", "bins": [{"low", "high", "reference", "current"}, ...]}: reference and current
        are the raw proportions of each sample in the bin (before smoothing).
    """
    if isinstance(bins, (bool, np.bool_)) or not isinstance(bins, (int, np.integer)) or bins < 1:
        raise UsageError(f"bins must be a positive integer, got {bins!r}")
    if not (isinstance(pseudocount, (int, float)) and math.isfinite(pseudocount) and pseudocount >= 0):
        raise UsageError(f"pseudocount must be a finite number >= 0, got {pseudocount!r}")
    r, c = as_values(reference, "reference"), as_values(current, "current")
    if not r.size or not c.size:
        raise UsageError("psi needs a non-empty reference and current sample")
    inner = np.unique(np.quantile(r, np.linspace(0, 1, int(bins) + 1)[1:-1]))
    k = inner.size + 1
    r_count = np.bincount(np.searchsorted(inner, r, side="right"), minlength=k)
    c_count = np.bincount(np.searchsorted(inner, c, side="right"), minlength=k)
    edges = np.r_[-np.inf, inner, np.inf]
    rows = [{"low": float(edges[i]), "high": float(edges[i + 1]), "reference": float(r_count[i] / r.size),
             "current": float(c_count[i] / c.size)} for i in range(k)]
    with np.errstate(divide="ignore", invalid="ignore"):
        value = float(_smoothed_psi(r_count, c_count, pseudocount))
    return {"psi": value, "pseudocount": float(pseudocount), "bins": rows}


def _smoothed_psi(r_count: np.ndarray, c_count: np.ndarray, pseudocount: float) -> np.ndarray:
    """PSI of counts (..., k), each sample's counts smoothed additively; 0 where both shares agree exactly."""
    k = r_count.shape[-1]
    rs = (r_count + pseudocount) / (r_count.sum(-1, keepdims=True) + k * pseudocount)
    cs = (c_count + pseudocount) / (c_count.sum(-1, keepdims=True) + k * pseudocount)
    terms = np.where(rs == cs, 0.0, (cs - rs) * np.log(cs / rs))
    return terms.sum(-1)


@functools.lru_cache(maxsize=32)
def _psi_null(bins: int, n_reference: int, n_current: int, pseudocount: float, draws: int) -> np.ndarray:
    """Sorted PSIs of ``draws`` pairs of samples of these sizes from one continuous distribution (seeded).

    PSI with quantile bins depends on the data only through ranks, so uniform samples stand for any
    continuous score. The reference's counts per bin follow from n_reference alone (the edges are its own
    interpolated order statistics); the bins' true masses are differences of uniform order statistics,
    drawn from exponential spacings (an order statistic of n uniforms is a Gamma(j) over a Gamma(n + 1)),
    and the current sample's counts are multinomial on those masses. Exact for continuous scores, up to
    the Monte Carlo error of the quantile taken from it.
    """
    q = np.linspace(0, 1, bins + 1)[1:-1]
    h = np.unique((n_reference - 1) * q)  # np.quantile's positions (method "linear"), 0-based
    lo = np.floor(h).astype(int)
    frac = h - lo
    r_count = np.bincount(np.searchsorted(h, np.arange(n_reference), side="right"), minlength=h.size + 1)
    need = np.unique(np.r_[lo + 1, np.minimum(lo + 2, n_reference), n_reference + 1])  # 1-based order statistics
    rng = np.random.default_rng(20261205)
    sums = np.cumsum(rng.standard_gamma(np.diff(np.r_[0, need]).astype(float), size=(draws, need.size)), axis=1)
    u = sums[:, :-1] / sums[:, -1:]  # the order statistics needed, as uniforms
    below, above = np.searchsorted(need, lo + 1), np.searchsorted(need, np.minimum(lo + 2, n_reference))
    edges = u[:, below] + frac * (u[:, above] - u[:, below])
    masses = np.clip(np.diff(np.concatenate([np.zeros((draws, 1)), edges, np.ones((draws, 1))], axis=1), axis=1), 0, 1)
    c_count = rng.multinomial(n_current, masses / masses.sum(1, keepdims=True))
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.sort(_smoothed_psi(np.broadcast_to(r_count, c_count.shape), c_count, pseudocount))


def psi_noise_floor(bins: int, n_reference: int, n_current: int, p: float = 0.995,
                    pseudocount: float = PSI_PSEUDOCOUNT) -> float:
    """The PSI that two samples of these sizes from one continuous distribution exceed with probability 1 - p.

    From the PSI's own distribution at these counts, simulated (``NULL_DRAWS`` seeded draws, cached; a
    multinomial reference, not a chi-square approximation: with a few dozen cases a bin holds a handful
    and the chi-square's tail is off). A PSI above it is a shift with a false-alarm rate of 1 - p. Ties
    in the scores (collapsed bins) make it approximate.

    Args:
        bins: the number of quantile bins (as given to ``psi``).
        n_reference: the reference sample's size. n_current: the current sample's size.
        p: 1 - the false-alarm rate.
        pseudocount: as given to ``psi``.

    Returns:
        The (p)-quantile of the PSI under no shift (0 with a single bin).
    """
    for name, v in (("bins", bins), ("n_reference", n_reference), ("n_current", n_current)):
        if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, np.integer)) or v < 1:
            raise UsageError(f"{name} must be a positive integer, got {v!r}")
    if not 0 < p < 1:
        raise UsageError(f"p must be in (0, 1), got {p!r}")
    null = _psi_null(int(bins), int(n_reference), int(n_current), float(pseudocount), NULL_DRAWS)
    return float(np.quantile(null, p, method="higher"))


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


def ks_critical(n_reference: int, n_current: int, alpha: float) -> float:
    """The smallest KS statistic D whose ``ks_2samp`` p-value is below ``alpha`` at these sample sizes (bisection)."""
    big, small = sorted([float(n_reference), float(n_current)], reverse=True)
    n = round(big * small / (big + small))
    if n < 1:
        return math.inf
    low, high = 0.0, 1.0
    for _ in range(50):
        mid = (low + high) / 2
        low, high = (low, mid) if kolmogorov_sf(n, mid) < alpha else (mid, high)
    return high


def _ks_statistics(ref: np.ndarray, cur: np.ndarray) -> np.ndarray:
    """Two-sample KS statistics of rows of sorted samples with no ties (rows offset so one searchsorted serves all)."""
    draws, m = ref.shape
    n = cur.shape[1]
    offset = 64.0 * np.arange(draws)[:, None]  # the rows' values stay within +-16: rows never interleave
    r, c = ref + offset, cur + offset
    c_at_r = (np.searchsorted(c.ravel(), r.ravel(), side="right").reshape(draws, m) - n * np.arange(draws)[:, None]) / n
    r_at_c = (np.searchsorted(r.ravel(), c.ravel(), side="right").reshape(draws, n) - m * np.arange(draws)[:, None]) / m
    at_r = np.abs(np.arange(1, m + 1) / m - c_at_r).max(1)
    at_c = np.abs(r_at_c - np.arange(1, n + 1) / n).max(1)
    return np.maximum(at_r, at_c)


@functools.lru_cache(maxsize=32)
def min_detectable_shift(n_reference: int, n_current: int, psi_alpha: float, ks_alpha: float, bins: int = 10,
                         power: float = 0.8, draws: int = 400) -> float:
    """The smallest location shift, in SDs, that the score check (PSI above its noise floor at ``psi_alpha``, or
    KS p < ``ks_alpha``) detects with probability ``power`` at these sample sizes; inf beyond 4 SD.

    By seeded simulation (``draws`` pairs, common random numbers across shifts, bisection to 0.01 SD):
    normal reference scores and current scores shifted by d SD. Both tests depend on ranks only, so d is in
    SDs of whatever monotone transform of the scores makes the reference normal (the logit of a
    logit-normal probability, say). Cached: a monitor calls it once per pair of sizes. A sample larger than
    ``MAX_SIMULATED_SIZE`` is simulated at that size (memory and time stay bounded), so the shift returned is
    then an upper bound: the check at the real sizes sees at least that.
    """
    n_reference, n_current = min(n_reference, MAX_SIMULATED_SIZE), min(n_current, MAX_SIMULATED_SIZE)
    rng = np.random.default_rng(31)
    ref = np.sort(np.clip(rng.standard_normal((draws, n_reference)), -8, 8), axis=1)
    cur0 = np.sort(np.clip(rng.standard_normal((draws, n_current)), -8, 8), axis=1)
    psi_floor = psi_noise_floor(bins, n_reference, n_current, 1 - psi_alpha)
    d_crit = ks_critical(n_reference, n_current, ks_alpha)
    inner = np.unique(np.quantile(ref, np.linspace(0, 1, bins + 1)[1:-1], axis=1).T, axis=1) if n_reference > 1 else None
    h = np.unique((n_reference - 1) * np.linspace(0, 1, bins + 1)[1:-1])
    r_count = np.bincount(np.searchsorted(h, np.arange(n_reference), side="right"), minlength=h.size + 1)

    def detected(shift: float) -> float:
        cur = cur0 + shift
        fires = _ks_statistics(ref, cur) >= d_crit
        if inner is not None and inner.shape[1] == h.size:
            offset = 64.0 * np.arange(draws)[:, None]
            below = np.searchsorted((cur + offset).ravel(), (inner + offset).ravel(), side="left").reshape(draws, -1)
            below -= n_current * np.arange(draws)[:, None]
            c_count = np.diff(np.concatenate([np.zeros((draws, 1), int), below, np.full((draws, 1), n_current)], 1), axis=1)
            fires |= _smoothed_psi(np.broadcast_to(r_count, c_count.shape), c_count, PSI_PSEUDOCOUNT) > psi_floor
        return float(fires.mean())

    low, high = 0.0, 4.0
    if detected(high) < power:
        return math.inf
    while high - low > 0.01:
        mid = (low + high) / 2
        low, high = (low, mid) if detected(mid) >= power else (mid, high)
    return round(high, 2)
