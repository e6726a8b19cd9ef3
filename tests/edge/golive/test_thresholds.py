"""The operating point's guarantee (medge.edge.golive.thresholds, issue 31): the binomial tail and the
Clopper-Pearson bound against scipy.stats, the 59, and seeded simulations of the share of exports whose true
sensitivity (specificity) falls short of the target, from a binormal model whose truth scipy.stats.norm gives
exactly. No timings."""
from __future__ import annotations

import numpy as np
import pytest

from medge.edge import golive as ev
from medge.edge.errors import UsageError
from medge.edge.golive.thresholds import binomial_cdf, guaranteed_rank

SIMULATIONS = 2000
SEPARATION = 1.5  # positives ~ N(1.5, 1), negatives ~ N(0, 1)


@pytest.mark.parametrize("n", [1, 2, 7, 30, 59, 100, 500, 2000])
@pytest.mark.parametrize("confidence", [0.8, 0.95, 0.99])
def test_clopper_pearson_lower_equals_the_beta_quantile(n, confidence):
    stats = pytest.importorskip("scipy.stats")
    for x in sorted({0, 1, n // 3, n // 2, n - 2, n - 1, n} & set(range(n + 1))):
        oracle = 0.0 if x == 0 else stats.beta.ppf(1 - confidence, x, n - x + 1)
        assert ev.clopper_pearson_lower(x, n, confidence) == pytest.approx(oracle, abs=1e-9), (x, n)


def test_binomial_cdf_equals_scipy():
    stats = pytest.importorskip("scipy.stats")
    for n, p in [(1, 0.5), (59, 0.05), (100, 0.05), (500, 0.05), (500, 0.95), (37, 0.3), (2000, 0.01)]:
        for k in [-1, 0, 1, n // 20, n // 2, n - 1, n]:
            assert binomial_cdf(k, n, p) == pytest.approx(stats.binom.cdf(k, n, p), rel=1e-9, abs=1e-13), (k, n, p)


def test_59_positives_for_095_at_95_percent():
    assert 0.95**59 <= 0.05 < 0.95**58  # 0.0485 and 0.0510
    assert ev.cases_needed(0.95) == 59 and ev.cases_needed(0.95, 0.95) == 59
    assert (guaranteed_rank(58, 0.95), guaranteed_rank(59, 0.95)) == (0, 1)
    assert ev.cases_needed(0.9) == 29 and ev.cases_needed(0.99) == 299 and ev.cases_needed(1.0) is None
    for target in [0.5, 0.7, 0.8, 0.9, 0.95, 0.975, 0.99]:
        for confidence in [0.8, 0.9, 0.95, 0.99]:
            n = ev.cases_needed(target, confidence)
            assert target**n <= 1 - confidence < target ** (n - 1)
            assert ev.max_supported_target(n, confidence) >= target > ev.max_supported_target(n - 1, confidence)


@pytest.mark.parametrize("n", [59, 60, 75, 100, 250, 500])
@pytest.mark.parametrize("target", [0.8, 0.9, 0.95])
def test_the_rank_is_the_clopper_pearson_statement(n, target):
    """Rank k holds <=> the Clopper-Pearson lower bound of (n - k + 1) / n is >= the target; k + 1 does not."""
    stats = pytest.importorskip("scipy.stats")
    k = guaranteed_rank(n, target)
    assert k >= 1
    assert stats.binom.cdf(k - 1, n, 1 - target) <= 0.05 < stats.binom.cdf(k, n, 1 - target)
    assert ev.clopper_pearson_lower(n - k + 1, n) >= target > ev.clopper_pearson_lower(n - k, n)


def _point_rank(n: int, target: float) -> int:
    """Today's rule before issue 31: the largest k whose (n - k + 1) / n >= target (no ties in a binormal sample)."""
    ks = np.arange(1, n + 1)
    return int(ks[(n - ks + 1) / n >= target].max())


@pytest.mark.parametrize("n, exact_rate", [(59, 0.0485), (100, 0.0371), (500, 0.0343)])
def test_share_of_exports_short_of_the_target_is_at_most_5_percent(n, exact_rate):
    """2,000 validation sets of n positives (and 200 negatives), the threshold from choose_threshold, the true
    sensitivity from the binormal model: short of 0.95 in <= 5% of exports (the exact rate, a binomial tail,
    within 4 standard errors), where the point-estimate rule falls short in about half."""
    stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(31 + n)
    y = np.r_[np.ones(n, bool), np.zeros(200, bool)]
    true_after, true_before = np.empty(SIMULATIONS), np.empty(SIMULATIONS)
    for r in range(SIMULATIONS):
        score = np.r_[rng.normal(SEPARATION, 1, n), rng.normal(0, 1, 200)]
        out = ev.choose_threshold(y, score, "sensitivity=0.95")
        assert out["guarantee"]["supported"] and out["guarantee"]["bound"] >= 0.95 and out["guarantee"]["n"] == n
        true_after[r] = stats.norm.sf(out["threshold"] - SEPARATION)
        true_before[r] = stats.norm.sf(np.sort(score[:n])[_point_rank(n, 0.95) - 1] - SEPARATION)
    short = float(np.mean(true_after < 0.95))
    k = guaranteed_rank(n, 0.95)
    assert stats.binom.cdf(k - 1, n, 0.05) == pytest.approx(exact_rate, abs=5e-5)
    assert short <= 0.05 + 0.01
    assert abs(short - exact_rate) <= 4 * np.sqrt(exact_rate * (1 - exact_rate) / SIMULATIONS)
    assert np.mean(true_before < 0.95) > 0.4  # what issue 31 measured: about 0.55 to 0.64


def test_specificity_guarantee_by_simulation():
    """The mirror: 2,000 sets of 100 negatives, specificity=0.9: short in <= 5% of exports."""
    stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(3100)
    y = np.r_[np.ones(50, bool), np.zeros(100, bool)]
    true_spec = np.empty(SIMULATIONS)
    for r in range(SIMULATIONS):
        score = np.r_[rng.normal(SEPARATION, 1, 50), rng.normal(0, 1, 100)]
        out = ev.choose_threshold(y, score, "specificity=0.9")
        true_spec[r] = stats.norm.cdf(out["threshold"])
    exact = stats.binom.cdf(guaranteed_rank(100, 0.9) - 1, 100, 0.1)
    short = float(np.mean(true_spec < 0.9))
    assert short <= 0.05 + 0.01 and abs(short - exact) <= 4 * np.sqrt(exact * (1 - exact) / SIMULATIONS)


def test_too_few_positives_names_the_number_needed_and_the_alternatives():
    rng = np.random.default_rng(0)
    y = np.r_[np.ones(58, bool), np.zeros(100, bool)]
    score = np.r_[rng.normal(SEPARATION, 1, 58), rng.normal(0, 1, 100)]
    with pytest.raises(ev.TooFewCasesError, match=r"sensitivity=0.95 at 95% confidence needs at least 59 positives; "
                                                  r"the validation split has 58: lower the target \(at most 0.950") as e:
        ev.choose_threshold(y, score, "sensitivity=0.95")
    assert (e.value.needed, e.value.n, e.value.exit_status) == (59, 58, 2)
    out = ev.choose_threshold(y, score, "sensitivity=0.95", unsupported=True)
    g = out["guarantee"]
    assert not g["supported"] and g["n"] == 58 and g["needed"] == 59 and g["estimate"] >= 0.95 > g["bound"]
    assert ev.choose_threshold(y, score, "sensitivity=0.95", confidence=0.9)["guarantee"]["supported"]
    with pytest.raises(ev.TooFewCasesError, match="needs more positives than any sample has"):
        ev.choose_threshold(y, score, "sensitivity=1")
    with pytest.raises(ev.TooFewCasesError, match="needs at least 29 negatives"):
        ev.choose_threshold(np.r_[np.ones(50), np.zeros(20)], rng.random(70), "specificity=0.9")
    for bad in [0, 1, 1.5, "0.95", True]:
        with pytest.raises(UsageError, match="confidence"):
            ev.choose_threshold(y, score, "sensitivity=0.9", confidence=bad)
