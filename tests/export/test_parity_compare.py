"""The release gate itself: ``export.parity.compare`` on crafted logits (numpy only, no model)."""
import json

import numpy as np
import pytest

from medge.export.parity import Tolerance, compare, summary_line

CLASSES = ["disease", "normal"]


def _names(n):
    return [f"case{i}.png" for i in range(n)]


def _compare(ref, cand, classes=CLASSES, **kw):
    ref, cand = np.asarray(ref, np.float32), np.asarray(cand, np.float32)
    return compare(ref, cand, _names(len(ref)), classes, **kw)


def test_identical_logits_pass_with_zero_differences():
    ref = [[2.0, -1.0], [-0.5, 1.5], [0.3, 0.1]]
    r = _compare(ref, ref)
    assert r["passed"] and r["failures"] == [] and r["n"] == 3
    assert r["logits"] == {"max_abs": 0.0, "mean_abs": 0.0} and r["probabilities"]["max_abs"] == 0.0
    assert r["top1_agreement"] == 1.0 and r["label_flips"] == []
    assert r["cosine"]["min"] == pytest.approx(1.0)
    assert r["per_class"] == {"disease": {"n": 2, "max_abs_logit": 0.0, "top1_agreement": 1.0},
                              "normal": {"n": 1, "max_abs_logit": 0.0, "top1_agreement": 1.0}}
    assert r["reference"] == "pytorch" and r["candidate"] == "cv2.dnn" and "PASS" in summary_line(r)
    json.dumps(r, allow_nan=False)  # a JSON record, as the bundle stores it


def test_a_label_flip_fails_the_gate_and_names_the_input():
    ref = [[1.0, 0.0], [0.0, 1.0], [0.6, 0.5]]
    cand = [[1.0, 0.0], [0.0, 1.0], [0.5, 0.6]]  # the third input flips, each logit only 0.1 off
    r = _compare(ref, cand, tol=Tolerance(max_abs_logit=0.5))
    assert not r["passed"] and r["top1_agreement"] == pytest.approx(2 / 3)
    assert r["label_flips"] == [{"input": "case2.png", "pytorch": "disease", "cv2.dnn": "normal",
                                 "max_abs_logit": pytest.approx(0.1, abs=1e-6)}]
    assert len(r["failures"]) == 1 and "top-1 agreement 0.6667 < 1" in r["failures"][0] and "1 label flip" in r["failures"][0]
    assert r["per_class"]["disease"]["top1_agreement"] == 0.5  # per class by the reference's label
    assert "FAIL: top-1 agreement" in summary_line(r)


def test_a_flip_is_allowed_down_to_min_top1_agreement():
    ref = [[1.0, 0.0]] * 9 + [[0.6, 0.5]]
    cand = [[1.0, 0.0]] * 9 + [[0.5, 0.6]]
    assert _compare(ref, cand, tol=Tolerance(max_abs_logit=1, min_top1_agreement=0.9))["passed"]
    assert not _compare(ref, cand, tol=Tolerance(max_abs_logit=1, min_top1_agreement=0.91))["passed"]


@pytest.mark.parametrize("delta, passed", [(0.0009, True), (0.001, True), (0.0011, False)])
def test_logit_tolerance_edges(delta, passed):
    ref = np.array([[3.0, -3.0], [-3.0, 3.0]])
    cand = ref.copy()
    cand[1, 0] += delta  # far from the boundary: no flip, only the logit difference decides
    r = compare(ref, cand, _names(2), CLASSES, tol=Tolerance(max_abs_logit=1e-3))
    assert r["passed"] is passed and r["top1_agreement"] == 1.0
    assert r["logits"]["max_abs"] == pytest.approx(delta) and r["logits"]["mean_abs"] == pytest.approx(delta / 4)
    assert (r["failures"] == []) is passed
    if not passed:
        assert r["failures"] == [f"max |delta logit| {delta:.3g} > 0.001"]


def test_both_failures_are_reported_together():
    r = _compare([[1.0, 0.0]], [[0.0, 1.0]])
    assert not r["passed"] and len(r["failures"]) == 2
    assert r["failures"][0].startswith("max |delta logit| 1 > ")


def test_inputs_near_the_decision_boundary_are_listed_by_margin():
    # top-two probability margins: softmax of a logit gap g is tanh(g / 2) apart
    gaps = {"case0.png": 0.0, "case1.png": 0.09, "case2.png": 0.11, "case3.png": 4.0}
    ref = np.array([[g, 0.0] for g in gaps.values()])
    r = compare(ref, ref, _names(4), CLASSES, tol=Tolerance(near_threshold=0.05))
    near = {n["input"]: n["margin"] for n in r["near_threshold"]}
    assert set(near) == {"case0.png", "case1.png"}  # tanh(0.045) = 0.045 < 0.05 <= tanh(0.055) = 0.055
    assert near["case0.png"] == pytest.approx(0.0) and near["case1.png"] == pytest.approx(np.tanh(0.045))
    assert r["passed"]  # near the boundary is reported, not failed


def test_cosine_and_probabilities_of_a_scaled_candidate():
    ref = np.array([[1.0, 2.0, 3.0]])
    cand = 2 * ref  # the same direction: cosine 1, but logits and probabilities differ
    r = compare(ref, cand, _names(1), ["a", "b", "c"], tol=Tolerance(max_abs_logit=10))
    assert r["cosine"]["min"] == pytest.approx(1.0) and r["logits"]["max_abs"] == pytest.approx(3.0)
    p = lambda z: np.exp(z) / np.exp(z).sum()
    assert r["probabilities"]["max_abs"] == pytest.approx(np.abs(p(ref[0]) - p(cand[0])).max())
    assert r["passed"] and r["per_class"] == {"c": {"n": 1, "max_abs_logit": pytest.approx(3.0), "top1_agreement": 1.0}}


def test_zero_logits_have_cosine_one_not_nan():
    r = _compare([[0.0, 0.0]], [[0.0, 0.0]])
    assert r["cosine"] == {"min": 1.0, "mean": 1.0} and r["passed"]


def test_no_inputs_fail():
    r = compare(np.zeros((0, 2)), np.zeros((0, 2)), [], CLASSES)
    assert not r["passed"] and r["failures"] == ["no inputs were compared"]
    assert r["top1_agreement"] == 1.0 and r["logits"]["max_abs"] == 0.0


@pytest.mark.parametrize("ref_shape, cand_shape, n_names", [((3, 2), (3, 3), 3), ((3, 2), (2, 2), 3),
                                                            ((3, 2), (3, 2), 2), ((6,), (6,), 6)])
def test_shapes_that_do_not_match_are_refused(ref_shape, cand_shape, n_names):
    with pytest.raises(ValueError, match="cannot compare shapes"):
        compare(np.zeros(ref_shape), np.zeros(cand_shape), _names(n_names), CLASSES)


def test_names_of_the_runtimes_label_the_report():
    r = _compare([[1.0, 0.0]], [[0.0, 1.0]], reference_name="cv2.dnn", candidate_name="onnxruntime")
    assert r["reference"] == "cv2.dnn" and r["candidate"] == "onnxruntime"
    assert set(r["label_flips"][0]) == {"input", "cv2.dnn", "onnxruntime", "max_abs_logit"}
