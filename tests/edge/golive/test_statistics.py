"""The go-live statistics (medge.edge.golive: roc, proportions, calibration, thresholds, shift, distributions) and
the numeric core's softmax, NLL and AUC against their oracles (scikit-learn, statsmodels, scipy: each test imports the one it
needs with importorskip, as CI environments without them run the numpy-only tests), and against
brute force, hand-worked values and seeded simulations."""
from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pytest

from medge.edge import golive as ev
from medge.edge.errors import UsageError


def _datasets():
    """(name, y, score) sets: continuous, tied (rounded), small, imbalanced, separated, all-equal scores."""
    rng = np.random.default_rng(20240611)
    sets = []
    for i, (n, prevalence, d) in enumerate([(200, 0.3, 1.0), (57, 0.5, 0.5), (1000, 0.05, 1.5), (400, 0.6, 0.0)]):
        y = rng.random(n) < prevalence
        y[:2] = [True, False]  # both classes present
        score = 1 / (1 + np.exp(-(rng.standard_normal(n) + d * y - 0.5)))
        sets.append((f"continuous{i}", y, score))
        sets.append((f"tied{i}", y, np.round(score, 1)))
    sets.append(("small", np.array([1, 0, 0, 1, 0]), np.array([0.9, 0.2, 0.6, 0.6, 0.1])))
    sets.append(("two_cases", np.array([0, 1]), np.array([0.3, 0.7])))
    sets.append(("reversed", np.array([1, 1, 0, 0]), np.array([0.1, 0.2, 0.8, 0.9])))
    separated = np.r_[rng.uniform(0, 0.4, 30), rng.uniform(0.6, 1, 20)]
    sets.append(("separated", np.r_[np.zeros(30, int), np.ones(20, int)], separated))
    sets.append(("all_equal", rng.random(40) < 0.5, np.full(40, 0.5)))
    on_edges = np.array([0, 0.1, 0.1, 0.2, 0.3, 0.5, 0.7, 0.9, 0.9, 1, 1.0])  # scores on the calibration bins' edges
    sets.append(("edges", np.array([0, 1, 0, 1, 1, 0, 1, 0, 1, 1, 0]), on_edges))
    for name, y, _ in sets:
        assert np.any(y) and not np.all(y), name
    return sets


DATASETS = _datasets()
IDS = [name for name, _, _ in DATASETS]


def _rates(y, score, threshold):
    """(sensitivity, specificity) of score >= threshold, by brute force."""
    y = np.asarray(y, bool)
    predicted = np.asarray(score) >= threshold
    return np.sum(predicted & y) / np.sum(y), np.sum(~predicted & ~y) / np.sum(~y)


def _delong_brute_force(y, score):
    """DeLong's AUC and variance from the O(m n) kernel matrix, as written in the 1988 paper."""
    y = np.asarray(y, bool)
    pos, neg = score[y], score[~y]
    kernel = (pos[:, None] > neg[None, :]) + 0.5 * (pos[:, None] == neg[None, :])
    v10, v01 = kernel.mean(axis=1), kernel.mean(axis=0)
    return kernel.mean(), v10.var(ddof=1) / pos.size + v01.var(ddof=1) / neg.size


# -- ROC and AUC -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name, y, score", DATASETS, ids=IDS)
def test_roc_curve_and_auc_equal_sklearn(name, y, score):
    metrics = pytest.importorskip("sklearn.metrics")
    fpr, tpr, thresholds = ev.roc_curve(y, score)
    ref_fpr, ref_tpr, ref_thresholds = metrics.roc_curve(y, score, drop_intermediate=False)
    assert thresholds[0] == np.inf
    np.testing.assert_array_equal(thresholds, ref_thresholds)
    np.testing.assert_allclose(fpr, ref_fpr, rtol=0, atol=1e-12)
    np.testing.assert_allclose(tpr, ref_tpr, rtol=0, atol=1e-12)
    assert ev.roc_auc(y, score) == pytest.approx(metrics.roc_auc_score(y, score), abs=1e-9)


def test_roc_curve_by_hand():
    fpr, tpr, thresholds = ev.roc_curve([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8])
    np.testing.assert_array_equal(thresholds, [np.inf, 0.8, 0.4, 0.35, 0.1])
    np.testing.assert_array_equal(fpr, [0, 0, 0.5, 0.5, 1])
    np.testing.assert_array_equal(tpr, [0, 0.5, 0.5, 1, 1])
    assert ev.roc_auc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) == 0.75
    assert ev.roc_auc([True, False, True], [0.5, 0.5, 0.5]) == 0.5  # ties count half
    assert ev.roc_auc([0, 1, 1], [0.2, 0.2, 0.9]) == 0.75


def test_roc_with_a_class_absent_is_nan():
    fpr, tpr, thresholds = ev.roc_curve([1, 1, 1], [0.2, 0.5, 0.5])
    assert np.all(np.isnan(fpr)) and np.array_equal(tpr, [0, 2 / 3, 1]) and np.array_equal(thresholds, [np.inf, 0.5, 0.2])
    assert math.isnan(ev.roc_auc([0, 0], [0.1, 0.2]))
    assert math.isnan(ev.roc_auc([], []))
    ci = ev.auc_ci([1, 1, 1], [0.1, 0.2, 0.3])
    assert all(math.isnan(ci[k]) for k in ("auc", "se", "low", "high")) and (ci["n_positive"], ci["n_negative"]) == (3, 0)


def _newcombe_oracle(auc, m, n, z):
    """Newcombe's (2006) method 5 by scipy's brentq, the variance written as Hanley & McNeil's (1982) with m - 1 and
    n - 1 replaced by N* - 1, N* = (m + n) / 2."""
    brentq = pytest.importorskip("scipy.optimize").brentq
    n_star = (m + n) / 2

    def variance(t):
        q1, q2 = t / (2 - t), 2 * t * t / (1 + t)
        return (t * (1 - t) + (n_star - 1) * (q1 - t * t) + (n_star - 1) * (q2 - t * t)) / (m * n)

    def gap(t):
        return (auc - t) ** 2 - z * z * variance(t)

    # the bracket stops short of auc: at auc = 1 (0) both sides of the equation are 0 there too
    low = 0.0 if auc == 0 else brentq(gap, 0.0, auc - 1e-12, xtol=1e-14)
    high = 1.0 if auc == 1 else brentq(gap, auc + 1e-12, 1.0, xtol=1e-14)
    return low, high


@pytest.mark.parametrize("name, y, score", DATASETS, ids=IDS)
def test_auc_ci_equals_brute_force_delong_and_newcombe(name, y, score):
    ci = ev.auc_ci(y, score, alpha=0.05)
    yb = np.asarray(y, bool)
    m, n = int(yb.sum()), int((~yb).sum())
    assert (ci["n_positive"], ci["n_negative"], ci["method"]) == (m, n, "Newcombe score (2006, method 5)")
    assert ci["auc"] == pytest.approx(ev.roc_auc(y, score), abs=1e-12) and ci["note"] is None
    # The interval (Newcombe 2006, method 5), every set with both classes has one, separated ones included
    low, high = _newcombe_oracle(ci["auc"], m, n, 1.959963984540054)
    assert (ci["low"], ci["high"]) == pytest.approx((low, high), abs=1e-9)
    assert 0 <= ci["low"] <= ci["auc"] <= ci["high"] <= 1 and ci["low"] < ci["high"]
    narrow = ev.auc_ci(y, score, alpha=0.5)
    assert ci["low"] <= narrow["low"] <= narrow["high"] <= ci["high"]
    if m < 2 or n < 2:  # DeLong's variance needs two cases of each class
        assert math.isnan(ci["se"])
        return
    auc, var = _delong_brute_force(y, score)
    assert ci["auc"] == pytest.approx(auc, abs=1e-12)
    assert ci["se"] == pytest.approx(math.sqrt(var), rel=1e-9, abs=1e-15)


def test_auc_ci_degenerate_cases():
    # Separated classes: a real interval with a lower bound below 1 (the logit interval had none, the clipped one
    # said "1.000 to 1.000"); DeLong's se is 0 there, and NaN with a single case of a class, neither used.
    separated = ev.auc_ci([0, 0, 0, 1, 1], [0.1, 0.2, 0.3, 0.8, 0.9])
    assert (separated["auc"], separated["se"], separated["high"], separated["note"]) == (1.0, 0.0, 1.0, None)
    assert 0.3 < separated["low"] < 0.6
    reversed_ = ev.auc_ci([1, 1, 0, 0], [0.1, 0.2, 0.8, 0.9])
    assert (reversed_["auc"], reversed_["low"]) == (0.0, 0.0) and 0.4 < reversed_["high"] < 1
    equal = ev.auc_ci([0, 1, 0, 1], [0.4] * 4)
    assert (equal["auc"], equal["se"]) == (0.5, 0.0) and equal["low"] == pytest.approx(1 - equal["high"])
    one_negative = ev.auc_ci([0, 1, 1], [0.6, 0.5, 0.9])
    assert one_negative["auc"] == 0.5 and math.isnan(one_negative["se"])  # a variance needs two of each class
    assert 0 < one_negative["low"] < 0.5 < one_negative["high"] < 1 and one_negative["note"] is None
    absent = ev.auc_ci([1, 1], [0.2, 0.8])
    assert math.isnan(absent["low"]) and math.isnan(absent["high"]) and absent["note"] == "a class is absent: no AUC"


def test_auc_interval_covers_the_true_auc_about_95_percent_of_the_time():
    # Binormal scores: positives N(d, 1), negatives N(0, 1); the true AUC is Phi(d / sqrt(2)).
    rng = np.random.default_rng(7)
    d, draws, n_pos, n_neg = 1.2, 400, 60, 90
    true_auc = 0.5 * (1 + math.erf(d / math.sqrt(2) / math.sqrt(2)))
    y = np.r_[np.ones(n_pos, bool), np.zeros(n_neg, bool)]
    covered = 0
    for _ in range(draws):
        score = np.r_[rng.normal(d, 1, n_pos), rng.normal(0, 1, n_neg)]
        ci = ev.auc_ci(y, score)
        covered += ci["low"] <= true_auc <= ci["high"]
    # 400 draws: the binomial SE of a 95% coverage is sqrt(0.95 * 0.05 / 400) ~ 0.011, so [0.92, 0.98] is
    # about +-3 SE: a correct interval fails this ~1 time in 400, one that covers 90% or 99% fails it.
    assert 0.92 <= covered / draws <= 0.98


def test_auc_difference_of_independent_sets():
    rng = np.random.default_rng(3)
    y1, y2 = rng.random(300) < 0.4, rng.random(200) < 0.5
    s1, s2 = rng.normal(1.2 * y1, 1), rng.normal(0.6 * y2, 1)
    out = ev.auc_difference(y1, s1, y2, s2, alpha=0.1)
    a, b = ev.auc_ci(y1, s1), ev.auc_ci(y2, s2)
    assert out["method"] == "DeLong (independent samples)"
    assert (out["auc_1"], out["auc_2"]) == (a["auc"], b["auc"])
    assert out["difference"] == pytest.approx(a["auc"] - b["auc"], abs=1e-15)
    assert out["se"] == pytest.approx(math.hypot(a["se"], b["se"]), rel=1e-12)
    z = -ev.normal_quantile(0.05)
    assert (out["low"], out["high"]) == pytest.approx((out["difference"] - z * out["se"], out["difference"] + z * out["se"]))
    assert out["low"] > 0  # d = 1.2 vs 0.6 on these sizes: a clear difference
    same = ev.auc_difference(y1, s1, y1, s1)
    assert same["difference"] == 0 and same["low"] < 0 < same["high"]
    assert same["note"] is None
    missing = ev.auc_difference(y1, s1, np.ones(5, bool), np.arange(5.0))
    assert math.isnan(missing["difference"]) and math.isnan(missing["se"]) and math.isnan(missing["low"])
    assert "no interval" in missing["note"]
    separated = ev.auc_difference([0, 0, 1, 1], [0.1, 0.2, 0.8, 0.9], [0, 0, 1, 1], [0.3, 0.4, 0.6, 0.7])
    assert separated["difference"] == 0 and separated["se"] == 0 and math.isnan(separated["low"])
    assert separated["note"] == "standard error 0: no interval"


# -- normal quantile and Wilson interval -------------------------------------------------------------------

QUANTILE_PS = [1e-300, 1e-100, 1e-20, 1e-10, 1e-5, 0.001, 0.02, 0.02425, 0.025, 0.1, 0.3, 0.4999, 0.5, 0.6, 0.9,
               0.975, 0.97575, 0.99, 1 - 1e-10, 1 - 2**-52]


def test_normal_quantile_equals_scipy():
    special = pytest.importorskip("scipy.special")
    ps = QUANTILE_PS + list(np.random.default_rng(5).random(500))
    for p in ps:
        ref = float(special.ndtri(p))
        assert abs(ev.normal_quantile(p) - ref) <= 1e-12 * max(1.0, abs(ref)), p


def test_normal_quantile_inverts_the_normal_cdf():
    for p in QUANTILE_PS:
        x = ev.normal_quantile(p)
        if p <= 0.5:
            assert 0.5 * math.erfc(-x / math.sqrt(2)) == pytest.approx(p, rel=1e-13), p
        else:
            assert 0.5 * math.erfc(x / math.sqrt(2)) == pytest.approx(1 - p, rel=1e-13), p
        if p > 0.5:  # 1 - p is exact there: the quantile is exactly antisymmetric
            assert x == -ev.normal_quantile(1 - p)
    assert ev.normal_quantile(0.975) == pytest.approx(1.959963984540054, abs=1e-15)
    assert ev.normal_quantile(0.5) == 0.0
    assert (ev.normal_quantile(0), ev.normal_quantile(1)) == (-math.inf, math.inf)
    for bad in (-0.1, 1.5, math.nan):
        with pytest.raises(UsageError, match="p must be in"):
            ev.normal_quantile(bad)


def test_wilson_interval_equals_statsmodels():
    proportion = pytest.importorskip("statsmodels.stats.proportion")
    for n in (1, 2, 7, 30, 100, 1001):
        for k in sorted({0, 1, n // 3, n // 2, n - 1, n}):
            for alpha in (0.05, 0.01, 0.2):
                ref = proportion.proportion_confint(k, n, alpha, method="wilson")
                np.testing.assert_allclose(ev.wilson_interval(k, n, alpha), ref, rtol=0, atol=1e-12)


def test_wilson_interval_by_hand_and_errors():
    z = 1.959963984540054
    low, high = ev.wilson_interval(0, 10)
    assert low == 0 and high == pytest.approx(z * z / (10 + z * z), rel=1e-14)
    low, high = ev.wilson_interval(10, 10)
    assert high == 1 and low == pytest.approx(10 / (10 + z * z), rel=1e-14)
    assert all(math.isnan(v) for v in ev.wilson_interval(0, 0))
    with pytest.raises(UsageError, match="exceed"):
        ev.wilson_interval(5, 4)
    with pytest.raises(UsageError, match="non-negative integer"):
        ev.wilson_interval(-1, 4)
    with pytest.raises(UsageError, match="non-negative integer"):
        ev.wilson_interval(1.5, 4)
    with pytest.raises(UsageError, match="alpha"):
        ev.wilson_interval(1, 4, alpha=1.0)


# -- figures at a threshold --------------------------------------------------------------------------------


@pytest.mark.parametrize("name, y, score", DATASETS, ids=IDS)
def test_binary_figures_equal_sklearn(name, y, score):
    metrics = pytest.importorskip("sklearn.metrics")
    threshold = float(np.median(score))
    out = ev.binary_figures(y, score, threshold)
    predicted = (score >= threshold).astype(int)
    matrix = metrics.confusion_matrix(np.asarray(y, int), predicted, labels=[0, 1])
    assert out["matrix"] == matrix.tolist()
    (tn, fp), (fn, tp) = matrix
    assert out["confusion"] == {"tp": tp, "fp": fp, "tn": tn, "fn": fn}
    assert (out["threshold"], out["n"]) == (threshold, len(y))
    assert out["sensitivity"]["value"] == pytest.approx(metrics.recall_score(y, predicted), abs=1e-15)
    assert out["specificity"]["value"] == pytest.approx(metrics.recall_score(y, predicted, pos_label=0), abs=1e-15)
    assert out["accuracy"]["value"] == pytest.approx(metrics.accuracy_score(y, predicted), abs=1e-15)
    if tp + fp:
        assert out["ppv"]["value"] == pytest.approx(metrics.precision_score(y, predicted), abs=1e-15)
    if tn + fn:
        assert out["npv"]["value"] == pytest.approx(metrics.precision_score(y, predicted, pos_label=0), abs=1e-15)


def test_binary_figures_by_hand():
    y = [1, 1, 1, 0, 0, 0, 0]
    score = [0.9, 0.5, 0.2, 0.5, 0.4, 0.1, 0.0]
    out = ev.binary_figures(y, score, 0.5)  # 0.5 itself is called positive
    assert out["confusion"] == {"tp": 2, "fp": 1, "tn": 3, "fn": 1}
    assert out["matrix"] == [[3, 1], [1, 2]]
    assert out["sensitivity"]["value"] == 2 / 3 and (out["sensitivity"]["successes"], out["sensitivity"]["n"]) == (2, 3)
    assert out["specificity"]["value"] == 3 / 4 and out["ppv"]["value"] == 2 / 3 and out["npv"]["value"] == 3 / 4
    assert out["accuracy"]["value"] == 5 / 7 and out["accuracy"]["n"] == 7
    assert (out["sensitivity"]["low"], out["sensitivity"]["high"]) == ev.wilson_interval(2, 3)
    none_positive = ev.binary_figures([0, 0, 0], [0.1, 0.2, 0.3], 0.25)
    assert math.isnan(none_positive["sensitivity"]["value"]) and none_positive["sensitivity"]["n"] == 0
    assert math.isnan(none_positive["sensitivity"]["low"]) and none_positive["specificity"]["value"] == 2 / 3
    assert ev.confusion([True, False, True], [1, 1, 0]) == {"tp": 1, "fp": 1, "tn": 0, "fn": 1}


# -- calibration -------------------------------------------------------------------------------------------

PROBABILITY_SETS = [d for d in DATASETS if d[2].min() >= 0 and d[2].max() <= 1]


@pytest.mark.parametrize("name, y, score", PROBABILITY_SETS, ids=[d[0] for d in PROBABILITY_SETS])
def test_brier_and_calibration_curve_equal_sklearn(name, y, score):
    metrics = pytest.importorskip("sklearn.metrics")
    calibration = pytest.importorskip("sklearn.calibration")
    assert ev.brier_score(y, score) == pytest.approx(metrics.brier_score_loss(y, score), abs=1e-12)
    for bins in (1, 5, 10, 13):
        prob_true, prob_pred = ev.calibration_curve(y, score, bins)
        ref_true, ref_pred = calibration.calibration_curve(y, score, n_bins=bins)
        np.testing.assert_allclose(prob_true, ref_true, rtol=0, atol=1e-12)
        np.testing.assert_allclose(prob_pred, ref_pred, rtol=0, atol=1e-12)
        out = ev.reliability(y, score, bins)
        full = [b for b in out["bins"] if b["count"]]
        np.testing.assert_allclose([b["fraction_positive"] for b in full], ref_true, rtol=0, atol=1e-12)
        np.testing.assert_allclose([b["mean_score"] for b in full], ref_pred, rtol=0, atol=1e-12)


def test_reliability_by_hand():
    y = [0, 1, 0, 1, 1]
    score = [0.0, 0.1, 0.15, 0.8, 0.95]  # 0.1 sits on an edge: sklearn's rule puts it in the first bin
    out = ev.reliability(y, score, bins=10)
    assert len(out["bins"]) == 10 and sum(b["count"] for b in out["bins"]) == 5
    first, second = out["bins"][0], out["bins"][1]
    assert (first["low"], first["high"], first["count"]) == (0.0, 0.1, 2)
    assert first["mean_score"] == pytest.approx(0.05) and first["fraction_positive"] == 0.5
    assert second["count"] == 1 and second["fraction_positive"] == 0.0
    edges = np.linspace(0, 1, 11)
    assert out["bins"][5] == {"low": edges[5], "high": edges[6], "count": 0, "mean_score": None, "fraction_positive": None}
    gaps = [(2, 0.45), (1, 0.15), (1, 0.2), (1, 0.05)]
    assert out["ece"] == pytest.approx(sum(c / 5 * g for c, g in gaps))
    assert out["mce"] == pytest.approx(0.45)
    perfect = ev.reliability([0, 0, 1, 1], [0.0, 0.0, 1.0, 1.0], bins=4)
    assert perfect["ece"] == 0 and perfect["mce"] == 0
    assert ev.brier_score([1, 0], [0.75, 0.5]) == pytest.approx((0.0625 + 0.25) / 2)
    with pytest.raises(UsageError, match=r"probability in \[0, 1\]"):
        ev.reliability([0, 1], [0.2, 1.2])
    with pytest.raises(UsageError, match=r"probability in \[0, 1\]"):
        ev.brier_score([0, 1], [-0.1, 0.5])
    with pytest.raises(UsageError, match="bins must be a positive integer"):
        ev.calibration_curve([0, 1], [0.2, 0.8], bins=0)


# -- temperature scaling -----------------------------------------------------------------------------------


def _sampled_labels(rng, logits):
    """Labels drawn from softmax(logits), row by row."""
    p = ev.softmax(logits)
    return (np.cumsum(p, axis=1) > rng.random((logits.shape[0], 1))).argmax(axis=1)


def test_softmax_and_nll_equal_scipy():
    special = pytest.importorskip("scipy.special")
    rng = np.random.default_rng(11)
    logits = rng.normal(0, 3, (50, 4))
    labels = rng.integers(0, 4, 50)
    for t in (0.5, 1.0, 2.5):
        np.testing.assert_allclose(ev.softmax(logits, t), special.softmax(logits / t, axis=1), rtol=1e-12, atol=1e-15)
        ref = np.mean(special.logsumexp(logits / t, axis=1) - logits[np.arange(50), labels] / t)
        assert ev.nll(logits, labels, t) == pytest.approx(ref, rel=1e-12)


def test_softmax_is_stable_and_keeps_the_argmax():
    big = np.array([[1000.0, 999.0, -1000.0], [-5e4, -5e4, -5e4]])
    p = ev.softmax(big)
    assert p.dtype == np.float64 and np.all(np.isfinite(p))
    np.testing.assert_allclose(p.sum(axis=1), 1, rtol=1e-15)
    np.testing.assert_allclose(p[0, :2], [1 / (1 + math.exp(-1)), 1 / (1 + math.e)], rtol=1e-12)
    np.testing.assert_allclose(p[1], [1 / 3] * 3, rtol=1e-15)
    assert ev.softmax([1.0, 2.0]).shape == (2,)
    assert ev.nll(big[:1], [0]) == pytest.approx(math.log1p(math.exp(-1)), rel=1e-12)
    rng = np.random.default_rng(2)
    logits = rng.normal(0, 2, (30, 5))
    for t in (0.01, 0.3, 7.0, 500.0):
        np.testing.assert_array_equal(ev.softmax(logits, t).argmax(axis=1), logits.argmax(axis=1))


def test_fit_temperature_undoes_overconfidence():
    rng = np.random.default_rng(4)
    true_logits = rng.normal(0, 1.5, (20000, 4))
    labels = _sampled_labels(rng, true_logits)
    overconfident = 3 * true_logits
    t = ev.fit_temperature(overconfident, labels)
    assert isinstance(t, float) and t > 1
    assert t == pytest.approx(3, rel=0.15)
    assert ev.nll(overconfident, labels, t) < ev.nll(overconfident, labels, 1.0)
    np.testing.assert_array_equal(ev.softmax(overconfident, t).argmax(axis=1), overconfident.argmax(axis=1))
    assert ev.fit_temperature(overconfident, labels) == t  # deterministic


def test_fit_temperature_is_the_minimum():
    rng = np.random.default_rng(8)
    logits = rng.normal(0, 2, (300, 3))
    labels = _sampled_labels(rng, logits / 0.6)  # under-confident logits: T < 1
    t = ev.fit_temperature(logits, labels)
    assert t < 1
    best = ev.nll(logits, labels, t)
    for factor in (1 - 1e-3, 1 + 1e-3, 0.9, 1.1):
        assert ev.nll(logits, labels, t * factor) > best
    # at the minimum the slope in b = 1/T vanishes: mean(E_p[z] - z_label) = 0
    p = ev.softmax(logits, t)
    assert abs(np.mean(np.sum(p * logits, axis=1) - logits[np.arange(300), labels])) < 1e-9


def test_fit_temperature_equals_a_scalar_minimiser():
    optimize = pytest.importorskip("scipy.optimize")
    rng = np.random.default_rng(9)
    logits = rng.normal(0, 2.5, (500, 6))
    labels = _sampled_labels(rng, logits / 1.7)
    found = optimize.minimize_scalar(lambda log_t: ev.nll(logits, labels, math.exp(log_t)), bounds=(-5, 5),
                                     method="bounded", options={"xatol": 1e-11})
    assert ev.fit_temperature(logits, labels) == pytest.approx(math.exp(found.x), rel=1e-6)


def test_fit_temperature_edges_and_errors():
    right = np.array([[5.0, 0.0], [0.0, 5.0]])
    # always right: sharpen to the floor, the largest spread (5) over MAX_CALIBRATED_SPREAD (20);
    # always wrong: flatten to TEMPERATURE_MAX (tests/edge/golive/test_calibration.py has the rest)
    assert ev.fit_temperature(right, [0, 1]) == 5 / 20
    assert ev.fit_temperature(right, [1, 0]) == 20.0
    assert ev.fit_temperature(np.ones((4, 3)), [0, 1, 2, 0]) == 1.0  # nll does not depend on T
    with pytest.raises(UsageError, match="at least 2 cases"):
        ev.fit_temperature([[1.0, 2.0]], [0])
    with pytest.raises(UsageError, match="NaN or infinite"):
        ev.fit_temperature([[1.0, np.nan], [0.0, 1.0]], [0, 1])
    with pytest.raises(UsageError, match="NaN or infinite"):
        ev.fit_temperature([[1.0, np.inf], [0.0, 1.0]], [0, 1])
    with pytest.raises(UsageError, match=r"labels must be in \[0, 2\)"):
        ev.fit_temperature([[1.0, 2.0], [0.0, 1.0]], [0, 2])
    with pytest.raises(UsageError, match="labels must be integers"):
        ev.nll([[1.0, 2.0], [0.0, 1.0]], [0.0, 1.0])
    with pytest.raises(UsageError, match="one label per row"):
        ev.nll([[1.0, 2.0], [0.0, 1.0]], [0])
    with pytest.raises(UsageError, match="temperature must be finite and > 0"):
        ev.softmax([[1.0, 2.0]], 0.0)


# -- operating point ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("text, expected", [
    ("sensitivity=0.95", ("sensitivity", 0.95)),
    ("  Specificity = 0.9 ", ("specificity", 0.9)),
    ("SENSITIVITY=1", ("sensitivity", 1.0)),
    ("youden", ("youden", None)),
    (" YouDen ", ("youden", None)),
])
def test_parse_criterion(text, expected):
    assert ev.parse_criterion(text) == expected


@pytest.mark.parametrize("text", ["sensitivity=0", "sensitivity=1.5", "specificity=-0.1", "sensitivity=abc",
                                  "sensitivity=nan", "sensitivity", "ppv=0.9", "youden=0.5", "", "sens=0.9"])
def test_parse_criterion_rejects_other_text(text):
    with pytest.raises(UsageError, match="'sensitivity=<target>', 'specificity=<target>' .* or 'youden'"):
        ev.parse_criterion(text)


@pytest.mark.parametrize("name, y, score", DATASETS, ids=IDS)
@pytest.mark.parametrize("target", [0.95, 0.8, 0.5, 1.0])
def test_choose_threshold_by_sensitivity_is_the_highest_that_holds(name, y, score, target):
    """Where the positives support the target: the highest threshold whose Clopper-Pearson lower bound holds;
    else (unsupported=True) the highest whose sensitivity on these cases holds."""
    out = ev.choose_threshold(y, score, ("sensitivity", target), unsupported=True)
    distinct = np.unique(score)
    assert out["threshold"] in distinct and out["criterion"] == f"sensitivity={target!r}"
    sensitivity, specificity = _rates(y, score, out["threshold"])
    assert (out["sensitivity"], out["specificity"]) == (sensitivity, specificity)
    n = int(np.sum(y))
    g = out["guarantee"]
    assert (g["n"], g["target"], g["estimate"]) == (n, target, sensitivity)
    holds = (lambda s: ev.clopper_pearson_lower(round(s * n), n) >= target) if g["supported"] else (lambda s: s >= target)
    assert holds(sensitivity)
    higher = distinct[distinct > out["threshold"]]
    if higher.size:
        assert not holds(_rates(y, score, higher.min())[0])


@pytest.mark.parametrize("name, y, score", DATASETS, ids=IDS)
@pytest.mark.parametrize("target", [0.95, 0.7, 1.0])
def test_choose_threshold_by_specificity_equals_brute_force(name, y, score, target):
    out = ev.choose_threshold(y, score, ev.parse_criterion(f"specificity={target}"), unsupported=True)
    m = int(np.sum(~np.asarray(y, bool)))
    g = out["guarantee"]
    holds = (lambda s: ev.clopper_pearson_lower(round(s * m), m) >= target) if g["supported"] else (lambda s: s >= target)
    meeting = [t for t in np.unique(score) if holds(_rates(y, score, t)[1])]
    if meeting:
        assert out["threshold"] == min(meeting)
    else:  # negatives among the top scores: only "never positive" gets there
        assert out["threshold"] > score.max() and holds(1.0)
        assert out["threshold"] == np.nextafter(np.max(np.asarray(score)[~np.asarray(y, bool)]), np.inf) or not g["supported"]
    assert (out["sensitivity"], out["specificity"]) == _rates(y, score, out["threshold"])
    assert holds(out["specificity"]) and g["estimate"] == out["specificity"] and g["n"] == m


@pytest.mark.parametrize("name, y, score", DATASETS, ids=IDS)
def test_choose_threshold_by_youden_equals_brute_force(name, y, score):
    out = ev.choose_threshold(y, score, ("youden", None))
    j = {t: sum(_rates(y, score, t)) - 1 for t in np.unique(score)}
    best = max(j.values())
    assert out["threshold"] == max(t for t, v in j.items() if v == best)  # ties: the higher threshold
    assert out["sensitivity"] + out["specificity"] - 1 == pytest.approx(best, abs=1e-15)
    assert out["criterion"] == "youden" and out["guarantee"] is None


def test_choose_threshold_by_hand_and_errors():
    y = [0, 0, 0, 0, 1, 0, 1, 1, 1, 1]
    score = [0.1, 0.2, 0.3, 0.4, 0.45, 0.5, 0.6, 0.7, 0.8, 0.9]
    point = {"unsupported": True}  # 5 cases of each class support no target: the point estimate, marked
    assert ev.choose_threshold(y, score, "sensitivity=0.8", **point)["threshold"] == 0.6
    assert ev.choose_threshold(y, score, "sensitivity=1", **point)["threshold"] == 0.45
    assert ev.choose_threshold(y, score, "specificity=1", **point)["threshold"] == 0.6
    assert ev.choose_threshold(y, score, "specificity=0.8", **point)["threshold"] == 0.45
    top_negative = ev.choose_threshold([1, 0], [0.2, 0.9], "specificity=1", **point)
    assert top_negative == {"threshold": np.nextafter(0.9, 1), "criterion": "specificity=1.0", "sensitivity": 0.0,
                            "specificity": 1.0,
                            "guarantee": {"statistic": "specificity", "target": 1.0, "confidence": 0.95, "estimate": 1.0,
                                          "bound": pytest.approx(0.05), "n": 1, "needed": None, "supported": False}}
    with pytest.raises(ev.TooFewCasesError, match="sensitivity=0.8 at 95% confidence needs at least 14 positives; "
                                                  "the validation split has 5"):
        ev.choose_threshold(y, score, "sensitivity=0.8")
    with pytest.raises(UsageError, match="both classes"):
        ev.choose_threshold([1, 1, 1], [0.1, 0.2, 0.3], ("youden", None))
    with pytest.raises(UsageError, match="or 'youden'"):
        ev.choose_threshold([0, 1], [0.1, 0.2], ("ppv", 0.9))
    with pytest.raises(UsageError, match="or 'youden'"):
        ev.choose_threshold([0, 1], [0.1, 0.2], ("sensitivity", 1.5))


# -- drift -------------------------------------------------------------------------------------------------


def test_psi_same_and_shifted_distributions():
    rng = np.random.default_rng(12)
    reference = rng.normal(0, 1, 50000)
    same = ev.psi(reference, rng.normal(0, 1, 50000))
    assert 0 <= same["psi"] < 0.01
    assert len(same["bins"]) == 10 and all(b["reference"] == pytest.approx(0.1, abs=1e-4) for b in same["bins"])
    assert ev.psi(reference, reference)["psi"] == 0
    assert ev.psi(reference, rng.normal(1, 1, 50000))["psi"] > 0.25
    moderate = ev.psi(reference, rng.normal(0.3, 1, 50000))["psi"]
    assert 0.05 < moderate < 0.25


def test_psi_by_hand():
    reference = np.arange(100.0)
    current = np.r_[np.zeros(90), np.full(10, 99.0)]
    out = ev.psi(reference, current, bins=4)
    edges = np.quantile(reference, [0.25, 0.5, 0.75])
    assert [(b["low"], b["high"]) for b in out["bins"]] == list(zip(np.r_[-np.inf, edges], np.r_[edges, np.inf], strict=True))
    assert [b["reference"] for b in out["bins"]] == [0.25] * 4
    assert [b["current"] for b in out["bins"]] == [0.9, 0, 0, 0.1]
    r, c = 26 / 104, np.array([91, 1, 1, 11]) / 104  # Laplace: one case added to each bin of each sample
    assert out["psi"] == pytest.approx(float(np.sum((c - r) * np.log(c / r))), rel=1e-12)
    assert out["pseudocount"] == 1.0
    assert ev.psi(reference, current, bins=4, pseudocount=0)["psi"] == math.inf  # unsmoothed: an empty bin
    # an empty bin's weight shrinks with the sample, unlike the old fixed 1e-4 floor (~0.69 whatever the size)
    small = ev.psi(np.arange(10.0), np.r_[np.zeros(9), 9.0])["psi"]
    large = ev.psi(np.arange(1000.0), np.r_[np.zeros(900), np.full(100, 999.0)])["psi"]
    assert small < large
    tied = ev.psi(np.r_[np.zeros(600), np.arange(400.0)], np.arange(10.0))  # six deciles are 0: edges collapse
    assert len(tied["bins"]) < 10 and sum(b["reference"] for b in tied["bins"]) == pytest.approx(1)
    assert tied["bins"][0] == {"low": -np.inf, "high": 0.0, "reference": 0.0, "current": 0.0}
    with pytest.raises(UsageError, match="non-empty"):
        ev.psi([], [1.0])
    with pytest.raises(UsageError, match="NaN"):
        ev.psi([1.0, np.nan], [1.0])


NEWCOMBE_CASES = [(5, 48, 200, 500), (0, 48, 3, 500), (48, 48, 10, 20), (0, 10, 0, 10), (7, 7, 0, 30), (1, 1, 1, 2)]


@pytest.mark.parametrize("counts", NEWCOMBE_CASES, ids=[str(c) for c in NEWCOMBE_CASES])
def test_newcombe_difference_agrees_with_statsmodels(counts):
    smp = pytest.importorskip("statsmodels.stats.proportion")
    for alpha in (0.05, 0.01):
        d, low, high = ev.newcombe_difference(*counts, alpha=alpha)
        expected = smp.confint_proportions_2indep(*counts, method="newcomb", compare="diff", alpha=alpha)
        assert d == pytest.approx(counts[0] / counts[1] - counts[2] / counts[3], abs=1e-15)
        assert (low, high) == pytest.approx(tuple(map(float, expected)), abs=1e-12)
    assert all(math.isnan(v) for v in ev.newcombe_difference(0, 0, 1, 2))


def test_detectable_difference_and_share_against_statsmodels_power():
    """The change a two-sided two-sample test at alpha sees with 80% power: the larger of the rise and the fall (a
    share of 5% cannot fall by 13 points), each powered as statsmodels' ``power_proportions_2indep`` says."""
    smp = pytest.importorskip("statsmodels.stats.proportion")
    for p, m, n in ((0.4, 48, 500), (0.2, 1000, 1000), (0.05, 100, 400)):  # reference share, its n, the records' n
        d = ev.detectable_difference(p, m, n, 0.01)
        powers = [smp.power_proportions_2indep(s * d, p, n, ratio=m / n, alpha=0.01).power
                  for s in (1, -1) if 0 < p + s * d < 1]
        assert min(powers) == pytest.approx(0.8, abs=1e-6) and max(powers) >= 0.8 - 1e-6
    assert ev.detectable_difference(0.5, 2, 2, 0.01) == math.inf
    share = ev.detectable_share(0.1, 500, 0.01)  # one-sided: the Wilson lower bound (98% two-sided) above 10%
    rng = np.random.default_rng(4)
    seen = [ev.wilson_interval(int(k), 500, 0.02)[0] > 0.1 for k in rng.binomial(500, share, 4000)]
    assert 0.74 <= np.mean(seen) <= 0.86
    at_tolerance = [ev.wilson_interval(int(k), 500, 0.02)[0] > 0.1 for k in rng.binomial(500, 0.1, 4000)]
    assert np.mean(at_tolerance) <= 0.01 + 0.005


KS_SIZES = [(1, 2), (3, 5), (7, 7), (20, 31), (100, 100), (150, 700), (300, 400), (1000, 1500), (5000, 4000)]


@pytest.mark.parametrize("sizes", KS_SIZES, ids=[f"{m}x{n}" for m, n in KS_SIZES])
@pytest.mark.parametrize("shift", [0.0, 0.2, 1.0])
def test_ks_2samp_equals_scipy(sizes, shift):
    stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(sizes[0] * 1000 + sizes[1])
    a, b = rng.normal(0, 1, sizes[0]), rng.normal(shift, 1.2, sizes[1])
    for x, y in ((a, b), (np.round(a, 1), np.round(b, 1)), (b, a)):
        out = ev.ks_2samp(x, y)
        ref = stats.ks_2samp(x, y, method="asymp")
        assert out["method"] == "asymptotic"
        assert out["statistic"] == pytest.approx(float(stats.ks_2samp(x, y).statistic), abs=1e-12)
        assert out["pvalue"] == pytest.approx(float(ref.pvalue), abs=1e-6, rel=1e-6)


def test_ks_2samp_on_large_samples_equals_scipy():
    stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(13)
    for n, shift in ((200000, 0.0), (300000, 0.0), (300000, 0.005), (2_500_000, 0.0)):
        a, b = rng.normal(0, 1, n), rng.normal(shift, 1, n)
        out, ref = ev.ks_2samp(a, b), stats.ks_2samp(a, b, method="asymp")
        assert out["statistic"] == pytest.approx(float(ref.statistic), abs=1e-12)
        assert out["pvalue"] == pytest.approx(float(ref.pvalue), abs=1e-6, rel=1e-6)


def test_kolmogorov_distribution_equals_scipy_kstwo_in_every_region():
    stats = pytest.importorskip("scipy.stats")
    # n x^2 around scipy's switch points (0.754693, 2.2, 4, 18, 370) and x at the ends of the support
    for n in (1, 2, 5, 30, 140, 141, 1000, 100000, 150000, 2_000_000):
        xs = [0.3 / n, 0.5 / n, 0.8 / n, 1 / n, 1.7 / n, (n - 1) / n, 0.5, 0.7, 0.99, 1.0]
        xs += [math.sqrt(c / n) for c in (0.05, 0.5, 0.75, 0.76, 1.5, 2.1, 2.3, 3.9, 4.1, 17, 19, 369, 371)]
        for x in xs:
            if 0 < x <= 1:
                assert ev.kolmogorov_sf(n, x) == pytest.approx(float(stats.kstwo.sf(x, n)), abs=1e-9, rel=1e-7), (n, x)


def test_ks_2samp_by_hand_and_errors():
    apart = ev.ks_2samp([1.0, 2.0, 3.0], [10.0, 11.0, 12.0, 13.0])
    assert (apart["statistic"], apart["pvalue"]) == (1.0, 0.0)  # P(D_n >= 1) = 0 for any n, as scipy gives
    half = ev.ks_2samp(np.arange(40.0), np.arange(20.0, 60.0))
    assert half["statistic"] == 0.5 and 0 < half["pvalue"] < 1e-3
    same = ev.ks_2samp([1.0, 2.0, 2.0, 3.0], [3.0, 2.0, 1.0, 2.0])
    assert (same["statistic"], same["pvalue"]) == (0.0, 1.0)
    assert ev.ks_2samp([0.0, 1.0, 2.0, 3.0], [1.5, 2.5, 3.5, 4.5])["statistic"] == 0.5
    assert math.isnan(ev.ks_2samp([1.0], [2.0])["pvalue"])  # effective n rounds to 0, as scipy
    with pytest.raises(UsageError, match="non-empty"):
        ev.ks_2samp([], [1.0])
    with pytest.raises(UsageError, match="NaN"):
        ev.ks_2samp([np.nan, 1.0], [1.0])


# -- arguments ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("call, match", [
    (lambda: ev.roc_auc([0, 1, 1], [0.1, 0.2]), "differ in length"),
    (lambda: ev.roc_curve([0, 1], [0.1, np.nan]), "NaN or infinite"),
    (lambda: ev.auc_ci([0, 1], [0.1, np.inf]), "NaN or infinite"),
    (lambda: ev.roc_auc([0, 2], [0.1, 0.2]), "boolean or 0/1"),
    (lambda: ev.roc_auc([0, np.nan], [0.1, 0.2]), "boolean or 0/1"),
    (lambda: ev.roc_auc([[0, 1]], [[0.1, 0.2]]), "must be 1-D"),
    (lambda: ev.roc_auc([0, 1], ["a", "b"]), "must be numbers"),
    (lambda: ev.auc_ci([0, 1], [0.1, 0.2], alpha=0), "alpha must be in"),
    (lambda: ev.binary_figures([0, 1], [0.1, 0.2], np.nan), "threshold must be a number"),
    (lambda: ev.confusion([0, 1], [1]), "differ in length"),
    (lambda: ev.auc_difference([0, 1], [0.1, 0.2], [0, 1], [0.1]), "differ in length"),
    (lambda: ev.psi([1.0, 2.0], [1.0], bins=0), "bins must be a positive integer"),
    (lambda: ev.psi([1.0, 2.0], [1.0], pseudocount=-1), "pseudocount must be"),
])
def test_bad_arguments_raise_usage_error(call, match):
    with pytest.raises(UsageError, match=match):
        call()


def test_golive_imports_neither_scipy_nor_sklearn():
    code = ("import sys; import medge.edge.golive, medge.edge.golive.validation, medge.edge.golive.drift; "
            "print(','.join(m for m in ('scipy', 'sklearn', 'statsmodels', 'pandas') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
