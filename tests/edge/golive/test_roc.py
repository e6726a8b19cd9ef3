"""medge.edge.golive.roc's AUC interval by seeded simulation: its coverage under a binormal model whose true AUC is
known exactly (scipy's normal quantile as the oracle for the separation), how often ``--require auc>=A`` passes a
model whose true AUC is A, and perfectly separated samples (an interval below 1). Its arithmetic against
scikit-learn, a brute-force DeLong and scipy's root finder is in test_statistics.py.

Binomial noise of a share p over R draws is sqrt(p (1 - p) / R): at p = 0.95 and R = 2000, 0.005, so the bands
[0.93, 0.97] are about 4 standard errors wide on each side; at p = 0.05, 0.005 too.
"""
import math

import numpy as np
import pytest

from medge.edge.golive import auc_ci
from medge.edge.golive import validation as val

DRAWS = 2000


def _binormal(auc: float, n: int, seed: int):
    """(y, draw): half of n positive, N(d, 1) against N(0, 1) with d = sqrt(2) Phi^-1(auc), so the true AUC is ``auc``."""
    norm = pytest.importorskip("scipy.stats").norm
    d = math.sqrt(2) * norm.ppf(auc)
    assert norm.cdf(d / math.sqrt(2)) == pytest.approx(auc, abs=1e-12)
    rng, m = np.random.default_rng(seed), n // 2
    y = np.r_[np.ones(m, bool), np.zeros(n - m, bool)]
    scores = np.concatenate([rng.normal(d, 1, (DRAWS, m)), rng.normal(0, 1, (DRAWS, n - m))], axis=1)
    return y, scores


def _coverage(auc: float, n: int, seed: int = 31) -> tuple[float, float, float]:
    """(covered, true AUC below the lower bound, no interval), each a share of DRAWS."""
    y, scores = _binormal(auc, n, seed)
    cis = [auc_ci(y, s) for s in scores]
    low, high = np.array([c["low"] for c in cis]), np.array([c["high"] for c in cis])
    return float(np.mean((low <= auc) & (auc <= high))), float(np.mean(low > auc)), float(np.mean(np.isnan(low)))


@pytest.mark.parametrize("auc, n", [(0.90, 30), (0.90, 100), (0.90, 1000)])
def test_the_95_percent_interval_covers_the_true_auc(auc, n):
    # Measured 0.963, 0.969, 0.961 (seed 31); DeLong's logit interval 0.955, 0.956, 0.949.
    covered, below, no_interval = _coverage(auc, n)
    assert 0.93 <= covered <= 0.97 and no_interval == 0
    assert below <= 0.05  # the side --require judges


@pytest.mark.parametrize("auc, n", [(0.99, 30), (0.99, 100), (0.99, 1000)])
def test_near_auc_1_every_sample_has_an_interval_and_it_covers(auc, n):
    # Measured 0.976, 0.983, 0.995 (seed 31), no miss below the lower bound. The logit interval covered 0.551,
    # 0.922 and 0.941: 42.7% and 1.35% of the samples were perfectly separated and had none, and 3.8% (n = 100)
    # lay wholly above the true AUC. The score interval is conservative here, never short.
    covered, below, no_interval = _coverage(auc, n)
    assert covered >= 0.93 and below <= 0.01 and no_interval == 0


def test_a_perfectly_separated_sample_has_an_interval_below_1():
    y, scores = _binormal(0.99, 30, seed=31)
    cis = [c for c in (auc_ci(y, s) for s in scores) if c["auc"] == 1.0]
    assert len(cis) > 0.3 * DRAWS  # at 15 + 15, 43% perfectly separated
    assert all(c["high"] == 1.0 and 0.8 < c["low"] < 0.99 and c["note"] is None for c in cis)
    assert len({c["low"] for c in cis}) == 1  # the same class sizes, the same interval


@pytest.mark.parametrize("target", [0.85, 0.90, 0.95, 0.99])
@pytest.mark.parametrize("n", [30, 100])
def test_an_auc_requirement_passes_a_model_at_the_target_at_most_5_percent(target, n):
    # Judged as medge validate judges it: the report's figures, then the parsed requirement. The clipped interval
    # passed these models 6% (0.85, n = 100) to 44% (0.99, n = 30) of the time, the logit one 0 to 3.4%, this one
    # 0 to 1.6% (0.85, n = 100).
    y, scores = _binormal(target, n, seed=7)
    requirement = val.parse_requirements(f"auc>={target}")[0]
    passed = [requirement.judge(val.figures(y, 1 / (1 + np.exp(-s)), 0.5))["passed"] for s in scores]
    assert np.mean(passed) <= 0.05


def test_a_clearly_better_model_passes():
    # The other side: the requirement is not simply impossible. True AUC 0.95 against auc>=0.85 at n = 100: passed
    # 86% of the time.
    y, scores = _binormal(0.95, 100, seed=5)
    requirement = val.parse_requirements("auc>=0.85")[0]
    passed = [requirement.judge(val.figures(y, 1 / (1 + np.exp(-s)), 0.5))["passed"] for s in scores[:400]]
    assert np.mean(passed) > 0.8


def test_two_and_two_perfectly_separated_cases_fail_with_too_few_cases():
    y, score = np.array([1, 1, 0, 0], bool), np.array([0.9, 0.8, 0.2, 0.1])
    figures = val.figures(y, score, 0.5)
    assert figures["auc"]["auc"] == 1.0 and figures["auc"]["low"] == pytest.approx(0.386, abs=1e-3)
    verdict = val.parse_requirements("auc>=0.35")[0].judge(figures)
    assert not verdict["passed"] and verdict["reason"].startswith("too few cases (2 positive, 2 negative")
    assert val.ci_text(figures["auc"]) == "1.000 (0.386 to 1.000)"


def test_a_separated_sample_large_enough_is_judged_on_its_lower_bound():
    y = np.r_[np.ones(15, bool), np.zeros(15, bool)]
    figures = val.figures(y, np.r_[np.linspace(0.6, 0.9, 15), np.linspace(0.1, 0.4, 15)], 0.5)
    assert figures["auc"]["auc"] == 1.0 and figures["auc"]["low"] == pytest.approx(0.865, abs=1e-3)
    assert val.parse_requirements("auc>=0.85")[0].judge(figures)["passed"]
    verdict = val.parse_requirements("auc>=0.9")[0].judge(figures)
    assert not verdict["passed"] and verdict["reason"] == "lower 95% CI bound 0.865 < 0.9"


def test_the_score_interval_by_hand():
    # (auc - theta)^2 = z^2 V(theta) at both bounds, V Hanley & McNeil's with m - 1 = n - 1 = (3 + 3) / 2 - 1 = 2
    ci, z = auc_ci([0, 0, 1, 0, 1, 1], [0.1, 0.3, 0.35, 0.4, 0.8, 0.9]), 1.959963984540054  # AUC 8/9
    assert ci["auc"] == pytest.approx(8 / 9) and ci["method"] == "Newcombe score (2006, method 5)"
    for theta in (ci["low"], ci["high"]):
        variance = theta * (1 - theta) * (1 + 2 * ((1 - theta) / (2 - theta) + theta / (1 + theta))) / 9
        assert (ci["auc"] - theta) ** 2 == pytest.approx(z * z * variance, abs=1e-12)
    assert 0 < ci["low"] < ci["auc"] < ci["high"] < 1 and ci["note"] is None
    assert (ci["low"], ci["high"]) == pytest.approx((0.401, 0.988), abs=1e-3)
    reversed_ = auc_ci([1, 1, 0, 0], [0.1, 0.2, 0.8, 0.9])  # AUC 0: the mirror of AUC 1 on 2 + 2
    assert reversed_["low"] == 0 and reversed_["high"] == pytest.approx(1 - 0.38563570449716633, abs=1e-12)
    assert auc_ci([0, 1], [0.2, 0.8])["note"] is None  # one case of each: an interval (DeLong's se NaN)
    assert auc_ci([1, 1], [0.2, 0.8])["note"] == "a class is absent: no AUC"
