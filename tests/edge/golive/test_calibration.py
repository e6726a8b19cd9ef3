"""The bounded temperature of edge.golive.calibration (issue 31): where the fit stops and says so, agreement with a
scalar minimiser of scikit-learn's log-loss elsewhere, float64's saturation of the softmax, and, over simulated
sites, that calibration never changes the ranking. The Brier score, reliability and the rest of the module are
tested against scikit-learn in test_statistics.py."""
from __future__ import annotations

import math
from statistics import NormalDist

import numpy as np
import pytest

from medge.edge.golive import calibration
from medge.edge.golive.calibration import MAX_CALIBRATED_SPREAD, TEMPERATURE_MAX, fit_temperature, fit_temperature_bounded
from medge.edge.numeric import nll, roc_auc, softmax


def binormal_logits(rng, auc: float, n_pos: int, n_neg: int, sites: int) -> tuple[np.ndarray, np.ndarray]:
    """(logits (sites, n, 2), labels (n,)): the second logit minus the first is the true log-likelihood ratio of an
    equal-variance binormal model of this AUC, so the true temperature is 1; positives first."""
    delta = math.sqrt(2) * NormalDist().inv_cdf(auc)  # AUC = Phi(delta / sqrt 2)
    d = np.concatenate([rng.normal(delta**2 / 2, delta, (sites, n_pos)), rng.normal(-delta**2 / 2, delta, (sites, n_neg))],
                       axis=1)
    return np.stack([np.zeros_like(d), d], axis=-1), np.r_[np.ones(n_pos, int), np.zeros(n_neg, int)]


def test_separable_classes_stop_at_the_floor_and_the_fit_says_so():
    rng = np.random.default_rng(310)
    d = np.r_[rng.uniform(0.5, 9.0, 10), -rng.uniform(0.2, 6.0, 10)]  # every case on its side: NLL -> 0 as T -> 0
    logits, labels = np.stack([np.zeros(20), d], 1), np.r_[np.ones(10, int), np.zeros(10, int)]
    fit = fit_temperature_bounded(logits, labels)
    assert fit.at_bound == "low" and fit.temperature == fit.low == np.max(np.abs(d)) / MAX_CALIBRATED_SPREAD
    assert fit.high == TEMPERATURE_MAX and fit.nll == nll(logits, labels, fit.temperature)
    assert nll(logits, labels, fit.temperature * 0.99) < fit.nll  # a bound, not a minimum: the NLL still falls
    assert fit.note == f"validation classes separable or nearly: T capped at {fit.temperature:.3g}"
    p = softmax(logits, fit.temperature)
    assert p.min() > 0 and p.max() < 1  # no validation probability saturates at the floor
    # three classes, each case's own logit the largest: the same floor, from the widest row
    z3 = rng.normal(0, 1, (30, 3))
    y3 = np.argmax(z3, axis=1)
    fit3 = fit_temperature_bounded(z3, y3)
    assert fit3.at_bound == "low" and fit3.temperature == np.max(np.ptp(z3, axis=1)) / MAX_CALIBRATED_SPREAD
    # the labels reversed: the logits are worse than chance and T stops at the top
    worse = fit_temperature_bounded(logits, 1 - labels)
    assert (worse.at_bound, worse.temperature) == ("high", TEMPERATURE_MAX)
    assert worse.note == "validation logits near chance or far overconfident: T capped at 20"
    assert fit_temperature(logits, labels) == fit.temperature


def test_logits_too_wide_for_the_range_take_the_floor_their_size_sets():
    logits = np.array([[0.0, 900.0], [900.0, 0.0], [0.0, 10.0]])
    right = fit_temperature_bounded(logits, np.array([1, 0, 1]))
    assert right.temperature == right.low == right.high == 900 / MAX_CALIBRATED_SPREAD and right.at_bound == "low"
    wrong = fit_temperature_bounded(logits, np.array([1, 0, 0]))  # one case wrong by 10: the NLL wants T larger
    assert wrong.temperature == 900 / MAX_CALIBRATED_SPREAD and wrong.at_bound == "high"


@pytest.mark.parametrize(("seed", "classes", "true_t", "scale"), [(1, 2, 1.0, 1.5), (2, 2, 2.5, 3.0), (3, 4, 0.6, 1.0),
                                                                  (4, 6, 1.7, 2.5)])
def test_non_separable_fits_equal_a_scalar_minimiser_of_sklearns_log_loss(seed, classes, true_t, scale):
    optimize = pytest.importorskip("scipy.optimize")
    metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, scale, (400, classes))
    true_p = softmax(logits, true_t)
    labels = (rng.random((400, 1)) > np.cumsum(true_p, axis=1)).sum(axis=1)
    fit = fit_temperature_bounded(logits, labels)
    assert fit.at_bound is None and fit.low < fit.temperature < fit.high

    def log_loss(log_t):
        return metrics.log_loss(labels, softmax(logits, math.exp(log_t)), labels=list(range(classes)))

    found = optimize.minimize_scalar(log_loss, bounds=(math.log(fit.low), math.log(fit.high)), method="bounded",
                                     options={"xatol": 1e-10})
    assert fit.temperature == pytest.approx(math.exp(found.x), rel=1e-6)
    assert fit.nll == pytest.approx(log_loss(math.log(fit.temperature)), rel=1e-12)
    assert fit.temperature == pytest.approx(true_t, rel=0.3)  # and near the temperature that drew the labels


def test_float64_saturation_where_the_bound_comment_says():
    def positive(d):
        return softmax(np.stack([np.zeros_like(d), d], axis=-1))[..., 1]

    # the larger class is exactly 1 from a scaled difference of 36.74, the smaller exactly 0 only from 745.2
    assert positive(np.array(36.73)) < 1 and positive(np.array(36.74)) == 1
    assert positive(np.array(-745.1)) > 0 and positive(np.array(-745.2)) == 0
    assert positive(np.array(1.9 / 0.05)) == 1  # so a fixed floor of T = 0.05 saturates a logit difference of 1.9
    # up to the spread the floor allows (20), differences of 2e-7 still give distinct probabilities
    d = np.linspace(MAX_CALIBRATED_SPREAD - 0.1, MAX_CALIBRATED_SPREAD, 500_001)
    assert np.all(np.diff(positive(d)) > 0)


def _sites_with_changed_auc(sites: int = 500) -> tuple[int, float, float]:
    """(sites whose calibrated AUC differs from their logits' AUC, share of capped fits, share of site
    probabilities exactly 0 or 1): true AUC 0.99, each site's T fitted on its own 10 + 10 validation cases and
    applied to its 100 + 100 cases."""
    rng = np.random.default_rng(3103)
    val, y_val = binormal_logits(rng, 0.99, 10, 10, sites)
    site, y_site = binormal_logits(rng, 0.99, 100, 100, sites)
    changed, capped, saturated = 0, 0, 0
    for s in range(sites):
        fit = fit_temperature_bounded(val[s], y_val)
        p = softmax(site[s], fit.temperature)[:, 1]
        changed += roc_auc(y_site, p) != roc_auc(y_site, site[s, :, 1])
        capped += fit.at_bound == "low"
        saturated += np.count_nonzero((p == 0) | (p == 1))
    return changed, capped / sites, saturated / (sites * y_site.size)


def test_calibration_keeps_the_ranking_of_every_simulated_site():
    changed, capped, saturated = _sites_with_changed_auc()
    # a site case whose logits spread 1.8 times the validation's widest (36.7 / 20) still rounds to exactly 1
    # (1 case in 1e5 here, a positive tied with positives): it does not change the ranking of the two classes
    assert changed == 0 and saturated < 1e-4
    assert 0.35 <= capped <= 0.6  # measured 0.48: the separable 20-case splits (0.36) and some nearly so


def test_the_site_check_sees_saturation_with_the_old_floor(monkeypatch):
    # the floor of 1e-3 of before, for these logits: the check must fail without the bound
    monkeypatch.setattr(calibration, "MAX_CALIBRATED_SPREAD", 1e4)
    changed, capped, saturated = _sites_with_changed_auc(200)
    assert changed > 20 and saturated > 0.1 and capped > 0.3
