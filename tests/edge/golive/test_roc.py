"""medge.edge.golive.roc's AUC interval by seeded simulation: its coverage under a binormal model whose true AUC is
known exactly (scipy's normal quantile as the oracle for the separation), how often ``--require auc>=A`` passes a
model whose true AUC is A, and the cases with no interval. Its arithmetic against scikit-learn and a brute-force
DeLong is in test_statistics.py.

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


@pytest.mark.parametrize("auc, n", [
    (0.90, 30), (0.90, 100), (0.90, 1000), (0.99, 1000),
    pytest.param(0.99, 100, marks=pytest.mark.xfail(strict=True, reason=(
        "issue 31's target not met: the logit DeLong interval covers 0.922 at AUC 0.99 and n = 100 (seed 31): "
        "1.35% of the draws are perfectly separated (no interval) and 3.8% lie wholly above the true AUC; the "
        "requirement side holds (test_an_auc_requirement_passes_a_model_at_the_target_at_most_5_percent)"))),
])
def test_the_95_percent_interval_covers_the_true_auc(auc, n):
    covered, below, _ = _coverage(auc, n)
    assert 0.93 <= covered <= 0.97
    assert below <= 0.05  # the side --require judges


def test_near_auc_1_the_misses_are_separated_samples_and_few_below():
    # What the logit interval does where its coverage falls short: the untransformed one covered 0.81 here, 0.19
    # below its lower bound. Measured 0.922 covered, 0.038 with the true AUC below the bound, 0.0135 none.
    covered, below, no_interval = _coverage(0.99, 100)
    assert 0.89 <= covered <= 0.95 and below <= 0.05 and 0.005 <= no_interval <= 0.04
    covered_30, _, no_interval_30 = _coverage(0.99, 30)
    assert no_interval_30 > 0.3 and covered_30 + no_interval_30 >= 0.93  # at 15 + 15, 43% perfectly separated


@pytest.mark.parametrize("target", [0.85, 0.90, 0.95, 0.99])
@pytest.mark.parametrize("n", [30, 100])
def test_an_auc_requirement_passes_a_model_at_the_target_at_most_5_percent(target, n):
    # Judged as medge validate judges it: the report's figures, then the parsed requirement. The clipped interval
    # passed these models 6% (0.85, n = 100) to 44% (0.99, n = 30) of the time; this one 0 to 3.4%.
    y, scores = _binormal(target, n, seed=7)
    requirement = val.parse_requirements(f"auc>={target}")[0]
    passed = [requirement.judge(val.figures(y, 1 / (1 + np.exp(-s)), 0.5))["passed"] for s in scores]
    assert np.mean(passed) <= 0.05


def test_a_clearly_better_model_passes():
    # The other side: the requirement is not simply impossible. True AUC 0.95 against auc>=0.85 at n = 100.
    y, scores = _binormal(0.95, 100, seed=5)
    requirement = val.parse_requirements("auc>=0.85")[0]
    passed = [requirement.judge(val.figures(y, 1 / (1 + np.exp(-s)), 0.5))["passed"] for s in scores[:400]]
    assert np.mean(passed) > 0.8


def test_two_and_two_perfectly_separated_cases_fail_with_too_few_cases():
    y, score = np.array([1, 1, 0, 0], bool), np.array([0.9, 0.8, 0.2, 0.1])
    figures = val.figures(y, score, 0.5)
    assert figures["auc"]["auc"] == 1.0 and math.isnan(figures["auc"]["low"])
    verdict = val.parse_requirements("auc>=0.85")[0].judge(figures)
    assert not verdict["passed"] and verdict["reason"].startswith("too few cases (2 positive, 2 negative")
    assert val.ci_text(figures["auc"]) == "1.000 (classes perfectly separated: no interval)"


def test_a_separated_sample_large_enough_still_has_no_bound_to_pass():
    y = np.r_[np.ones(15, bool), np.zeros(15, bool)]
    figures = val.figures(y, np.r_[np.linspace(0.6, 0.9, 15), np.linspace(0.1, 0.4, 15)], 0.5)
    verdict = val.parse_requirements("auc>=0.5")[0].judge(figures)
    assert not verdict["passed"] and verdict["reason"] == "no lower bound (classes perfectly separated: no interval)"


def test_the_logit_interval_by_hand_and_its_notes():
    ci = auc_ci([0, 0, 1, 0, 1, 1], [0.1, 0.3, 0.35, 0.4, 0.8, 0.9])  # AUC 8/9
    half = 1.959963984540054 * ci["se"] / (ci["auc"] * (1 - ci["auc"]))
    logit = math.log(ci["auc"] / (1 - ci["auc"]))
    assert ci["auc"] == pytest.approx(8 / 9)
    assert (ci["low"], ci["high"]) == pytest.approx((1 / (1 + math.exp(half - logit)), 1 / (1 + math.exp(-logit - half))))
    assert ci["low"] < ci["auc"] < ci["high"] < 1 and ci["method"] == "DeLong, logit" and ci["note"] is None
    assert auc_ci([1, 1, 0, 0], [0.1, 0.2, 0.8, 0.9])["note"] == "classes perfectly separated: no interval"  # AUC 0
    assert auc_ci([0, 1], [0.2, 0.8])["note"] == "fewer than two cases in a class: no interval"
    assert auc_ci([1, 1], [0.2, 0.8])["note"] == "a class is absent: no AUC"
