"""edge.findings: multi-label bundles decide each finding by its own calibrated sigmoid and threshold."""
import json

import numpy as np
import pytest

from medge.edge.errors import BundleError, ModelIntegrityError
from medge.edge.findings import FindingRule, FindingsPoint, label_of
from medge.edge.model import Model
from medge.edge.numeric import sigmoid
from tests.conftest import xray_like
from tests.edge.multilabel import finding_entry, multilabel_copy


def test_sigmoid_is_stable_and_exact():
    z = np.array([-800.0, -30.0, -1.0, 0.0, 1.0, 30.0, 800.0])
    with np.errstate(over="raise"):
        p = sigmoid(z)
    np.testing.assert_allclose(p[1:-1], 1 / (1 + np.exp(-z[1:-1])), rtol=1e-15)
    assert p[0] == 0.0 and p[-1] == 1.0 and p[3] == 0.5


def test_rules_give_per_finding_probabilities_and_decisions():
    rules = FindingsPoint((FindingRule("A", 2.0, 0.6), FindingRule("B", 1.0, None), FindingRule("C", 0.5, 0.2)), True)
    logits = np.array([[2.0, 5.0, -0.5], [-1.0, -5.0, -3.0]])
    p = rules.probabilities(logits)
    np.testing.assert_allclose(p, 1 / (1 + np.exp(-logits / [2.0, 1.0, 0.5])))
    d = rules.decisions(p)
    assert d == [{"A": True, "B": None, "C": True}, {"A": False, "B": None, "C": False}]
    assert label_of([k for k, v in d[0].items() if v]) == "A|C" and label_of([]) == "No Finding"
    assert label_of([], ["B"]) == "No Finding (not decided: B)" and label_of(["A"], ["B"]) == "A"
    assert rules.label_indices(logits) == [1, 0]


def test_a_multilabel_bundle_records_each_finding(multilabel_bundle):
    model = Model.load(multilabel_bundle)
    assert model.findings is not None and model.operating_point is None
    images = [xray_like(64, 64, seed=s) for s in range(6)]
    preds = model.predict(images, workers=0)
    for p in preds:
        z = np.array(p.logits)
        expected = sigmoid(z / [1.5, 1.0])
        np.testing.assert_allclose([p.probabilities["Effusion"], p.probabilities["Nodule"]], expected, rtol=1e-12)
        assert p.decisions == {"Effusion": bool(expected[0] >= 0.4), "Nodule": None}
        rec = p.to_record(model.sha256, model.runtime)
        assert rec["task"] == "multilabel" and rec["thresholds"] == {"Effusion": 0.4, "Nodule": None}
        assert rec["positive_findings"] == (["Effusion"] if expected[0] >= 0.4 else [])
        assert rec["any_positive"] is bool(rec["positive_findings"]) and rec["calibrated"] is True
        assert rec["label"] == ("Effusion" if expected[0] >= 0.4 else "No Finding (not decided: Nodule)")
        assert json.loads(json.dumps(rec)) == rec


def test_an_error_record_of_a_multilabel_bundle_says_so(multilabel_bundle, tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not a png")
    (p,) = Model.load(multilabel_bundle).predict([str(bad)], workers=0)
    rec = p.to_record("x")
    assert p.error and rec["task"] == "multilabel" and rec["decisions"] is None and rec["any_positive"] is None


def test_single_label_records_have_no_multilabel_keys(bundle):
    (p,) = Model.load(bundle).predict([xray_like(64, 64)], workers=0)
    assert not {"task", "decisions", "thresholds", "positive_findings", "any_positive"} & set(p.to_record("x"))


def test_without_an_operating_point_each_finding_is_decided_at_half(bundle, tmp_path):
    model = Model.load(multilabel_copy(bundle, tmp_path / "b"))
    (p,) = model.predict([xray_like(64, 64)], workers=0)
    assert not model.findings.calibrated and p.calibrated is False
    assert p.decisions == {k: v >= 0.5 for k, v in p.probabilities.items()}


def test_an_edited_threshold_is_refused(multilabel_bundle, tmp_path):
    dst = multilabel_copy(multilabel_bundle, tmp_path / "b", json.loads(
        (multilabel_bundle / "model.json").read_text())["operating_point"]["findings"])
    m = json.loads((dst / "model.json").read_text())
    m["operating_point"]["findings"][0]["threshold"] = 0.01
    (dst / "model.json").write_text(json.dumps(m))
    with pytest.raises(ModelIntegrityError, match="thresholds, calibration"):
        Model.load(dst)


def test_findings_out_of_order_are_refused(bundle, tmp_path):
    dst = multilabel_copy(bundle, tmp_path / "b", [finding_entry("Nodule"), finding_entry("Effusion")])
    with pytest.raises(BundleError, match="do not match the model"):
        Model.load(dst)


def test_an_exported_multilabel_bundle_decides_per_finding(multilabel_export_bundle):
    """The bundle medge export wrote for three findings (tests.helpers; CI's torch-less environments get it
    exported): each finding by its own calibrated sigmoid, the one without a threshold undecided."""
    bundle, _ = multilabel_export_bundle
    model = Model.load(bundle)
    section = {e["name"]: e for e in json.loads((bundle / "model.json").read_text())["operating_point"]["findings"]}
    (p,) = model.predict(xray_like(64, 64, seed=3))
    assert list(p.decisions) == ["Effusion", "Nodule", "Hernia"] and p.decisions["Hernia"] is None
    for name, e in section.items():
        expected = sigmoid(np.array(p.logits[list(section).index(name)]) / e["temperature"])
        assert p.probabilities[name] == pytest.approx(float(expected), abs=1e-12)
        if e["threshold"] is not None:
            assert p.decisions[name] == (p.probabilities[name] >= e["threshold"])
    record = p.to_record(model.sha256)
    assert record["thresholds"]["Hernia"] is None and record["positive_findings"] == p.positive_findings
