"""Figures for people: names, three decimals, intervals with "to", percentages, and the sentence on why figures at
argmax and at the operating point differ, checked against the rules themselves."""
import numpy as np
import pytest

from medge.edge.decision import OperatingPoint
from medge.edge.golive.wording import (
    FIGURE_NAMES,
    figure_name,
    figure_text,
    number_text,
    percent_text,
    rule_text,
    rules_differ_text,
    threshold_text,
)


def test_figures_have_names_not_keys():
    assert figure_name("ppv") == "positive predictive value" and figure_name("npv") == "negative predictive value"
    assert figure_name("auc") == "AUC" and figure_name("balanced_accuracy") == "balanced accuracy"
    assert figure_name("ece") == "expected calibration error" and figure_name("brier") == "Brier score"
    assert figure_name("top1_agreement") == "top1 agreement"  # a key without a name loses its underscores
    assert all("_" not in v for v in FIGURE_NAMES.values())


def test_numbers_have_three_decimals_and_intervals_say_to():
    assert number_text(0.4) == "0.400" and number_text(1) == "1.000" and number_text(0.26349, 2) == "0.26"
    assert number_text(None) == number_text(float("nan")) == number_text(True) == number_text("0.4") == "n/a"
    wilson = {"value": 0.4, "low": 0.2635, "high": 0.554, "successes": 8, "n": 20}
    assert figure_text(wilson) == "0.400 (0.264 to 0.554)"  # the card showed "0.4 (0.2635 - 0.554)"
    assert figure_text(wilson, to=" ~ ") == "0.400 (0.264 ~ 0.554)"
    assert figure_text({"auc": 0.91, "low": 0.87, "high": 0.953, "note": None}) == "0.910 (0.870 to 0.953)"
    assert figure_text({"auc": None, "low": None, "high": None, "note": "a class is absent: no AUC"}) == (
        "n/a (a class is absent: no AUC)")
    assert figure_text({"value": float("nan"), "low": float("nan"), "high": float("nan"), "n": 0}) == "n/a (no cases)"
    assert figure_text(0.24689) == "0.247" and figure_text(None) == "n/a"


def test_shares_are_percentages_that_never_round_up_to_all():
    assert percent_text(1.0) == "100%" and percent_text(0.5) == "50%" and percent_text(0.975) == "97.5%"
    assert percent_text(0.9999) == "99.9%" and percent_text(None) == "n/a"


def test_each_rule_is_named():
    assert rule_text(None, None) == "argmax (the class with the highest probability)"
    assert rule_text("disease", 0.2057) == "the operating point (disease when its calibrated probability >= 0.206)"
    assert threshold_text("disease", 0.2057) == "disease when its calibrated probability >= 0.206"


def test_the_sentence_on_why_the_rules_differ_says_which_way():
    low = rules_differ_text("disease", 0.206)
    assert low.startswith("Training counts each image at argmax (disease when its probability >= 0.5); the bundle at its "
                          "operating point (disease when its calibrated probability >= 0.206).")
    assert "below 0.5" in low and "more images disease" in low and "sensitivity is at least as high" in low
    high = rules_differ_text("disease", 0.7)
    assert "above 0.5" in high and "fewer images disease" in high and "sensitivity is at most as high" in high
    assert "same labels" in rules_differ_text("disease", 0.5)
    with pytest.raises(KeyError):
        rules_differ_text("disease", 0.2, {"both": "{positive}"})  # a language must give every part


@pytest.mark.parametrize("threshold", [0.2, 0.35, 0.65, 0.9])
def test_what_the_sentence_says_holds_for_the_rules_themselves(threshold):
    """On random logits, a temperature and either side of 0.5: the threshold's sensitivity and specificity against
    argmax's go the way the sentence says (the oracle is the rules of edge.decision, not the sentence)."""
    rng = np.random.default_rng(int(threshold * 100))
    logits = rng.normal(size=(400, 2)) * 2
    truth = (logits[:, 1] - logits[:, 0] + rng.normal(size=400) * 2 > 0).astype(int)  # class 1 = disease
    op = OperatingPoint(("normal", "disease"), temperature=1.7, positive="disease", threshold=threshold)
    at_threshold = np.asarray(op.label_indices(logits))
    at_argmax = np.argmax(logits, axis=1)
    sens = lambda pred: (pred[truth == 1] == 1).mean()  # noqa: E731
    spec = lambda pred: (pred[truth == 0] == 0).mean()  # noqa: E731
    sentence = rules_differ_text("disease", threshold)
    assert (at_threshold != at_argmax).any()  # the two rules do label some of these images differently
    if "its sensitivity is at least as high, its specificity at most as high" in sentence:
        assert sens(at_threshold) >= sens(at_argmax) and spec(at_threshold) <= spec(at_argmax)
    else:
        assert "its sensitivity is at most as high, its specificity at least as high" in sentence
        assert sens(at_threshold) <= sens(at_argmax) and spec(at_threshold) >= spec(at_argmax)
