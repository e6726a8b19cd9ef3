"""The model card's figures for people: names, not the manifest's keys; three decimals and intervals with "to"; each
group of figures at its decision rule, and why training's and the operating point's differ."""
import html
import re

import pytest

from medge.edge.apps.serve.api import model_info
from medge.edge.apps.serve.figures import parity_rows, small_text, training_html
from medge.edge.apps.serve.page import card_html
from medge.edge.apps.serve.texts import TEXT
from medge.edge.golive.wording import RULES_DIFFER, rules_differ_text
from medge.edge.model import Model

# the manifest's keys a reader must not meet on the card (the API returns them as they are)
RAW_KEYS = ("ppv", "npv", "per_class", "top1_agreement", "max_abs", "mean_abs", "balanced_accuracy", "label_flips",
            "near_threshold", "min_top1_agreement", "brier", "ece", "confusion", "'", "{", "True", "False")
TRAINING = {"epoch": 3, "metrics": {  # what train.metrics records per split: at argmax
    "val": {"n": 20, "accuracy": 0.55, "balanced_accuracy": 0.55, "auc": 0.5599999999999999, "loss": 0.99928,
            "sensitivity": {"disease": 0.6, "normal": 0.5}, "specificity": {"disease": 0.5, "normal": 0.6},
            "confusion": [[6, 4], [5, 5]]},
    "test": {"n": 10, "accuracy": 0.4, "balanced_accuracy": 0.4, "auc": None, "loss": 0.98482,
             "sensitivity": {"disease": 0.4, "normal": 0.4}, "specificity": {"disease": 0.4, "normal": 0.4},
             "confusion": [[2, 3], [3, 2]]}}}


def visible(page: str) -> str:
    """The text a reader sees: tags dropped, entities decoded."""
    return html.unescape(re.sub(r"<[^>]+>", " ", page))


def raw_keys(text: str) -> list[str]:
    return [k for k in RAW_KEYS if re.search(rf"(?<![\w']){re.escape(k)}(?![\w])" if k.isidentifier() else re.escape(k),
                                             text)]


def intervals(text: str) -> list[str]:
    """Every "value (low SEP high)" on the card, whatever the separator."""
    return re.findall(r"\S+ \(\S+ (?:to|-|~) \S+\)", text)


@pytest.fixture(scope="module")
def calibrated_info(bundle, tmp_path_factory):
    """model_info of a copy of the test bundle with an operating point, and training metrics as training writes them."""
    from tests.edge.calibrated import calibrated_copy, synth_split

    root = tmp_path_factory.mktemp("card")
    val, _ = synth_split(root / "d", n=60)
    info = model_info(Model.load(calibrated_copy(bundle, root / "b", val)))
    return {**info, "training": TRAINING}


def test_the_checks_see_a_raw_key_and_an_old_interval():
    old = visible("<td>ppv</td><td>0.5263 (0.3171 - 0.7267)</td><td>per_class</td><td>top1_agreement: 1</td>")
    assert raw_keys(old) == ["ppv", "per_class", "top1_agreement"]
    assert intervals(old) == ["0.5263 (0.3171 - 0.7267)"]
    assert raw_keys(visible("positive predictive value, Brier score, 100%")) == []


def test_the_card_shows_names_and_people_numbers(calibrated_info):
    text = visible(card_html(calibrated_info, "en"))
    figures = text.split("Operating point (chosen")[1].split("Versions at export")[0]  # the card's figures
    assert raw_keys(figures) == [], figures
    for name in ("AUC", "sensitivity", "specificity", "positive predictive value", "negative predictive value",
                 "Brier score", "expected calibration error", "balanced accuracy", "Top-1 agreement", "By class"):
        assert name in text, name
    found = intervals(text)
    assert len(found) >= 5 and all(re.fullmatch(r"(\d\.\d{3}|n/a) \((\d\.\d{3}|n/a) to (\d\.\d{3}|n/a)\)", i)
                                   for i in found), found
    threshold = calibrated_info["operating_point"]["threshold"]
    assert f"disease when its calibrated probability >= {threshold:.3f} (sensitivity=0.95)" in text
    assert "100% (required 100%)" in text and "PyTorch vs cv2.dnn on" in text  # agreement as a percentage


def test_each_group_of_figures_says_its_rule_and_why_they_differ(calibrated_info):
    page = card_html(calibrated_info, "en")
    text = visible(page)
    op = calibrated_info["operating_point"]
    assert "the figures below count each at this decision rule" in text  # the operating point's figures
    assert "Training metrics, at argmax" in text and "each image counted at argmax (the class with the highest " \
        "probability), as in training: not at the operating point above" in text
    assert "Why the training metrics differ" in text
    assert rules_differ_text("disease", op["threshold"]) in text
    # per-class rows name their class, with what argmax labelled that class's images as (the confusion's row)
    classes = re.search(r'id="medge-training-classes".*?</table>', page, re.S).group(0)
    assert re.search(r"<td>validation</td><td>disease</td><td>0\.600</td><td>0\.500</td><td>disease 6, normal 4</td>",
                     classes)
    assert "<td>test</td><td>normal</td><td>0.400</td><td>0.400</td><td>disease 3, normal 2</td>" in classes
    splits = re.search(r'id="medge-training".*?</table>', page, re.S).group(0)
    assert "<td>validation</td><td>20</td><td>0.550</td><td>0.550</td><td>0.560</td><td>0.999</td>" in splits
    assert "<td>test</td><td>10</td><td>0.400</td><td>0.400</td><td>n/a</td>" in splits  # an AUC that is undefined


def test_a_bundle_without_an_operating_point_has_no_sentence_and_old_metrics_still_show(bundle):
    info = model_info(Model.load(bundle))
    info = {**info, "training": {"epoch": 1, "metrics": {"val": {"auc": None, "accuracy": 0.5}}}}
    text = visible(card_html(info, "en"))
    assert "none in this bundle" in text and "Why the training metrics differ" not in text
    assert "validation n/a 0.500 n/a n/a n/a" in " ".join(text.split())  # what the record has, n/a the rest


def test_the_korean_card_says_the_same_in_korean(calibrated_info):
    text = visible(card_html(calibrated_info, "ko"))
    op = calibrated_info["operating_point"]
    ko = {k: TEXT["ko"][f"rules_differ_{k}"] for k in RULES_DIFFER}
    assert rules_differ_text("disease", op["threshold"], ko) in text
    assert "민감도" in text and "양성 예측도" in text and "1순위 일치율" in text
    assert intervals(text) and all(" ~ " in i for i in intervals(text))
    assert "positive predictive value" not in text and "Top-1 agreement" not in text


def test_parity_rows_in_words():
    parity = {"reference": "pytorch", "candidate": "cv2.dnn", "n": 20, "inputs": "val images",
              "logits": {"max_abs": 6.198e-06, "mean_abs": 1.856e-06}, "probabilities": {"max_abs": 1.3e-06,
                                                                                        "mean_abs": 4.1e-07},
              "cosine": {"min": 0.9999999999955, "mean": 1.0}, "top1_agreement": 0.95, "label_flips": 1,
              "near_threshold": 2, "skipped": 0, "tolerance": {"max_abs_logit": 0.001, "min_top1_agreement": 1.0,
                                                              "near_threshold": 0.05},
              "engines": {"classic": {"max_abs_logit": 4.1e-06, "top1_agreement": 1.0, "passed": True},
                          "openvino": {"max_abs_logit": 6.2e-06, "top1_agreement": 0.95, "passed": False}},
              "engine": "openvino", "failures": ["top-1 agreement 0.9500 < 1 (1 label flip(s))"], "passed": False}
    rows = dict(parity_rows(parity, TEXT["en"]))
    assert rows["Compared"] == "PyTorch vs cv2.dnn on 20 validation images"
    assert rows["Largest logit difference"] == "6.2e-06 (mean 1.9e-06; allowed 0.001)"
    assert rows["Top-1 agreement"] == "95% (required 100%)" and rows["Labels changed"] == "1"
    assert rows["Lowest cosine similarity"] == "1.000000"
    assert rows["cv2.dnn engines"] == ("classic: passed, largest logit difference 4.1e-06, top-1 agreement 100%; "
                                       "openvino: failed, largest logit difference 6.2e-06, top-1 agreement 95% "
                                       "(the figures above: openvino, the farthest from PyTorch)")
    assert rows["Failures"] == "top-1 agreement 0.9500 &lt; 1 (1 label flip(s))"  # escaped: the card is HTML
    assert parity_rows({}, TEXT["en"]) == [] and small_text(None) == "n/a" and small_text(True) == "n/a"
    assert "medge-training-classes" not in training_html({"metrics": {}}, ["a", "b"], TEXT["en"])
