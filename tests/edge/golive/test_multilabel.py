"""edge.golive.multilabel: per-finding figures, macro and micro AUC against scikit-learn, subgroups, and the
guarantee's verdict at a site (the family-wise chance of calling a true guarantee refuted, by simulation)."""
import math

import numpy as np
import pytest

from medge.edge.findings import FindingRule, FindingsPoint
from medge.edge.golive import multilabel as ml
from medge.edge.golive.proportions import binary_figures


def _records(y, p, names, **extra):
    out = []
    for i in range(len(y)):
        r = {"targets": {n: None if math.isnan(y[i, k]) else float(y[i, k]) for k, n in enumerate(names)},
             "probabilities": {n: float(p[i, k]) for k, n in enumerate(names)}, "input": {}}
        out.append({**r, **{k: v[i] for k, v in extra.items()}})
    return out


def _data(n=300, k=3, seed=0, masked=0.1):
    rng = np.random.default_rng(seed)
    y = (rng.random((n, k)) < 0.3).astype(float)
    p = 1 / (1 + np.exp(-(rng.normal(0, 1, (n, k)) + 1.2 * y)))
    y[rng.random((n, k)) < masked] = np.nan
    return y, p


def test_macro_and_micro_auc_agree_with_scikit_learn():
    roc_auc_score = pytest.importorskip("sklearn.metrics").roc_auc_score

    y, p = _data()
    got = ml.macro_micro(y, p)
    keep = ~np.isnan(y)
    per = [roc_auc_score(y[keep[:, k], k], p[keep[:, k], k]) for k in range(3)]
    assert got["macro_auc"] == pytest.approx(np.mean(per), abs=1e-12) and got["macro_findings"] == 3
    assert got["micro_auc"] == pytest.approx(roc_auc_score(y[keep], p[keep]), abs=1e-12)
    assert got["micro_pairs"] == keep.sum()
    y[:, 2] = np.where(np.isnan(y[:, 2]), np.nan, 0.0)  # a finding with no positive: out of the macro mean
    assert ml.macro_micro(y, p)["macro_findings"] == 2


def test_evaluate_findings_masks_per_finding_and_reports_an_unsupported_one():
    roc_auc_score = pytest.importorskip("sklearn.metrics").roc_auc_score

    names = ["A", "B", "C"]
    y, p = _data()
    point = FindingsPoint((FindingRule("A", threshold=0.5), FindingRule("B", threshold=0.6),
                           FindingRule("C", threshold=None)), calibrated=True)
    sex = np.array(["M", "F"] * 150)
    rep = ml.evaluate_findings(_records(y, p, names, sex=sex, age=np.arange(300) % 90, view=["PA"] * 300), point, None)
    for k, f in enumerate(rep["findings"]):
        keep = ~np.isnan(y[:, k])
        assert f["cases"] == keep.sum() and f["masked"] == (~keep).sum()
        assert f["auc"]["auc"] == pytest.approx(roc_auc_score(y[keep, k], p[keep, k]), abs=1e-12)
    a = rep["findings"][0]
    keep = ~np.isnan(y[:, 0])
    assert a["sensitivity"] == binary_figures(y[keep, 0] == 1, p[keep, 0], 0.5)["sensitivity"]
    assert not rep["findings"][2]["supported"] and "sensitivity" not in rep["findings"][2]
    assert rep["guarantees"]["no target"] == ["A", "B"] and rep["passed"]
    g = rep["subgroups"]["sex"]["M"]["findings"]["B"]
    m = (sex == "M") & ~np.isnan(y[:, 1])
    assert g["cases"] == m.sum() and g["auc"]["auc"] == pytest.approx(roc_auc_score(y[m, 1], p[m, 1]), abs=1e-12)
    ages = np.arange(300) % 90
    assert {k: v["cases"] for k, v in rep["subgroups"]["age_band"].items()} == {
        "<40": (ages < 40).sum(), "40-59": ((ages >= 40) & (ages < 60)).sum(), "60-79": ((ages >= 60) & (ages < 80)).sum(),
        ">=80": (ages >= 80).sum()}


@pytest.mark.parametrize("age, band", [(39.9, "<40"), (40, "40-59"), (59, "40-59"), (60, "60-79"), (80, ">=80"),
                                       (None, "unknown"), ("x", "unknown")])
def test_age_bands(age, band):
    assert ml.age_band(age) == band


def test_views_and_sexes():
    assert [ml.view_group(v) for v in ("PA", "ap", "LL", "Lateral", None)] == ["PA", "AP", "lateral", "lateral", "unknown"]
    assert [ml.sex_group(s) for s in ("M", "female", None, "O")] == ["M", "F", "unknown", "O"]


def _judge(successes, n, target=0.9, family=1, supported=True):
    g = {"statistic": "sensitivity", "target": target, "confidence": 0.95, "supported": supported}
    figures = {"sensitivity": {"value": successes / n, "successes": successes, "n": n}}
    return ml.guarantee_at_site(g, figures, family)


def test_guarantee_verdicts_and_their_bounds_against_scipy():
    stats = pytest.importorskip("scipy.stats")
    v = _judge(60, 60)
    assert v["verdict"] == "confirmed" and v["lower_bound"] == pytest.approx(stats.beta.ppf(0.05, 60, 1), abs=1e-9)
    v = _judge(20, 40, family=4)
    assert v["verdict"] == "refuted"
    assert v["upper_bound"] == pytest.approx(stats.beta.ppf(1 - 0.05 / 4, 21, 20), abs=1e-9)
    assert _judge(18, 20)["verdict"] == "not shown"
    assert ml.guarantee_at_site(None, {}, 1)["verdict"] == "no target"


def test_a_true_guarantee_is_called_refuted_at_most_alpha_of_the_time_over_the_family():
    """M = 5 findings whose true sensitivity sits exactly at the target (the least favourable truth): the chance that
    any is called refuted stays at most REFUTE_ALPHA (Bonferroni over exact bounds), and the same rule without the
    division by M exceeds it (the correction is what keeps it)."""
    stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(7)
    m, n, target, reps = 5, 60, 0.9, 4000
    hits = rng.binomial(n, target, size=(reps, m))
    for k in (30, 48, 52, 59):  # the bound is scipy's exact Clopper-Pearson upper bound at 1 - alpha / M
        assert _judge(k, n, target, m)["upper_bound"] == pytest.approx(stats.beta.ppf(1 - 0.05 / m, k + 1, n - k),
                                                                       abs=1e-9)
    refuted = {k: _judge(k, n, target, m)["verdict"] == "refuted" for k in range(n + 1)}
    family_rate = np.mean([any(refuted[k] for k in row) for row in hits])
    assert family_rate <= ml.REFUTE_ALPHA + 0.01
    uncorrected = {k: _judge(k, n, target, 1)["verdict"] == "refuted" for k in range(n + 1)}
    exact = 1 - (1 - sum(stats.binom.pmf(k, n, target) for k in range(n + 1) if uncorrected[k])) ** m
    assert exact > ml.REFUTE_ALPHA + 0.02 and np.mean([any(uncorrected[k] for k in row) for row in hits]) > 0.07


def test_an_unpromised_target_never_fails():
    point = FindingsPoint((FindingRule("A", threshold=0.99, criterion="sensitivity=0.9"),), calibrated=True)
    section = {"findings": [{"name": "A", "guarantee": {"statistic": "sensitivity", "target": 0.9, "confidence": 0.95,
                                                         "supported": False}}]}
    y = np.array([[1.0]] * 40 + [[0.0]] * 40)
    p = np.full((80, 1), 0.5)
    rep = ml.evaluate_findings(_records(y, p, ["A"]), point, section)
    assert rep["findings"][0]["guarantee_at_site"]["verdict"] == "refuted"
    assert rep["guarantees"]["not promised"] == ["A"] and rep["guarantees"]["refuted"] == [] and rep["passed"]
    section["findings"][0]["guarantee"]["supported"] = True
    assert ml.evaluate_findings(_records(y, p, ["A"]), point, section)["guarantees"]["refuted"] == ["A"]


def test_each_finding_is_compared_with_its_validation_auc():
    roc_auc_score = pytest.importorskip("sklearn.metrics").roc_auc_score

    y, p = _data(n=200, k=1, masked=0.0)
    ry, rp = _data(n=150, k=1, seed=5, masked=0.0)
    point = FindingsPoint((FindingRule("A", threshold=0.5),), calibrated=True)
    section = {"findings": [{"name": "A", "validation": {"scores": rp[:, 0].tolist(),
                                                         "positives": ry[:, 0].astype(int).tolist()}}]}
    d = ml.evaluate_findings(_records(y, p, ["A"]), point, section)["findings"][0]["against_bundle"]
    assert d["auc_1"] == pytest.approx(roc_auc_score(y[:, 0], p[:, 0]), abs=1e-12)
    assert d["auc_2"] == pytest.approx(roc_auc_score(ry[:, 0], rp[:, 0]), abs=1e-12) and d["bundle_cases"] == 150
    assert ml.evaluate_findings(_records(y, p, ["A"]), point, None)["findings"][0]["against_bundle"] is None
