"""medge.edge.golive.validation's parts: requirements, size bands, cases from folders and from a CSV.

The whole ``medge validate`` run against a bundle is tested in tests/edge/apps/test_validate.py.
"""
import math

import cv2
import numpy as np
import pytest

from medge.edge.errors import UsageError
from medge.edge.golive.validation import (
    MIN_CASES_PER_CLASS,
    Case,
    Problem,
    Requirement,
    cases_from_csv,
    cases_from_folders,
    ci_text,
    parse_requirements,
    size_band,
)

CLASSES = ["normal", "disease"]


def test_requirements_are_parsed_in_order():
    assert parse_requirements(None) == parse_requirements("") == []
    assert parse_requirements(" AUC >= 0.85, sensitivity>=.9,ppv>=1") == [
        Requirement("auc", ">=", 0.85), Requirement("sensitivity", ">=", 0.9), Requirement("ppv", ">=", 1.0)]


@pytest.mark.parametrize("text, message", [
    ("auc>0.8", r"cannot read 'auc>0\.8': write METRIC>=VALUE"),
    ("auc=>0.8", r"cannot read 'auc=>0\.8'"),
    ("auc>=", r"cannot read 'auc>='"),
    ("auc>=0.9,", r"cannot read ''"),
    ("auc>=0.9.1", r"'auc>=0\.9\.1': '0\.9\.1' is not a number"),
    ("auc>=.", r"'auc>=\.': '\.' is not a number"),
    ("auc>=1e-1", r"'1e-1' is not a number"),
    ("auc>=-0.1", r"'-0\.1' is not a number"),
    ("specifity>=0.8", "unknown metric 'specifity'"),
    ("auc<=0.8", r"auc takes >= \(larger is better\)"),
    ("ece<=0.05", r"'ece<=0\.05': ece cannot be required: it has no confidence interval"),
    ("brier<=0.2", r"brier cannot be required"),
    ("sensitivity>=1.5", r"sensitivity target 1.5 is not in \[0, 1\]"),
])
def test_a_bad_requirement_is_a_usage_error_saying_what_is_wrong(text, message):
    with pytest.raises(UsageError, match=message):
        parse_requirements(text)


def test_a_figure_with_a_ci_is_judged_on_its_lower_bound():
    auc = {"auc": 0.9, "low": 0.86, "high": 0.93, "n_positive": 10, "n_negative": 40, "note": None}
    figures = {"sensitivity": {"value": 0.93, "low": 0.88, "high": 0.97}, "auc": auc}
    verdict = Requirement("sensitivity", ">=", 0.9).judge(figures)
    assert verdict == {"requirement": "sensitivity>=0.9", "judged_on": "lower 95% CI bound", "judged_value": 0.88,
                       "value": 0.93, "passed": False, "reason": "lower 95% CI bound 0.880 < 0.9"}
    assert Requirement("sensitivity", ">=", 0.85).judge(figures) == {**verdict, "requirement": "sensitivity>=0.85",
                                                                     "passed": True, "reason": None}
    assert Requirement("auc", ">=", 0.85).judge(figures)["passed"]
    assert not Requirement("ppv", ">=", 0.5).judge(figures)["passed"]  # a figure that is missing is not a pass


def test_an_auc_requirement_needs_a_bound_and_ten_cases_of_each_class():
    auc = {"auc": 0.9, "low": 0.86, "high": 0.93, "n_positive": 10, "n_negative": 40, "note": None}
    assert MIN_CASES_PER_CLASS == 10 and Requirement("auc", ">=", 0.85).judge({"auc": auc})["passed"]
    few = Requirement("auc", ">=", 0.85).judge({"auc": {**auc, "n_positive": 9}})
    assert not few["passed"] and few["reason"] == "too few cases (9 positive, 40 negative; at least 10 of each)"
    absent = Requirement("auc", ">=", 0.85).judge({"auc": None})
    assert not absent["passed"] and absent["reason"].startswith("too few cases (a class is absent")
    separated = Requirement("auc", ">=", 0.8).judge({"auc": {**auc, "auc": 1.0, "low": 0.83, "high": 1.0}})
    assert separated["passed"]  # perfectly separated classes have a lower bound below 1 (Newcombe's interval)
    undefined = Requirement("auc", ">=", 0.5).judge({"auc": {**auc, "low": math.nan, "note": None}})
    assert not undefined["passed"] and undefined["reason"] == "no lower bound (undefined on these cases)"  # NaN never


def test_ci_text_shows_the_note_instead_of_an_interval():
    assert ci_text({"value": 0.9, "low": 0.85, "high": 0.95}) == "0.900 (0.850 to 0.950)"
    assert ci_text({"auc": 0.9, "low": 0.85, "high": 0.95, "note": None}, 2, "-") == "0.90 (0.85-0.95)"
    note = "a class is absent: no AUC"
    assert ci_text({"auc": math.nan, "low": math.nan, "high": math.nan, "note": note}) == f"n/a ({note})"
    assert ci_text({"auc": 1.0, "low": 0.8318, "high": 1.0, "note": None}) == "1.000 (0.832 to 1.000)"  # separated
    assert ci_text({"difference": 0.0, "low": math.nan, "high": math.nan, "note": "standard error 0: no interval"}
                   ) == "0.000 (standard error 0: no interval)"
    assert ci_text(None) == "n/a"


@pytest.mark.parametrize("side, band", [(0, "shorter side 0-511 px"), (511, "shorter side 0-511 px"),
                                        (512, "shorter side 512-1023 px"), (2047, "shorter side 1024-2047 px"),
                                        (2048, "shorter side >= 2048 px"), (-1, "unknown")])
def test_size_band(side, band):
    assert size_band(side) == band


def _png(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), np.full((8, 8), 128, np.uint8))
    return str(path)


def test_cases_from_folders_by_class_folder_and_the_rest_as_problems(tmp_path):
    a, b = _png(tmp_path / "normal" / "a.png"), _png(tmp_path / "disease" / "deep" / "b.png")
    loose, other = _png(tmp_path / "c.png"), _png(tmp_path / "maybe" / "d.png")
    (tmp_path / "normal" / "notes.txt").write_text("not an image")
    cases, problems = cases_from_folders(tmp_path, CLASSES)
    assert sorted(cases, key=lambda c: c.path) == sorted([Case(a, "normal"), Case(b, "disease")], key=lambda c: c.path)
    kinds = {p.path: p.kind for p in problems}
    assert kinds == {loose: "unlabelled", other: "unlabelled", str(tmp_path / "normal" / "notes.txt"): "not an image"}
    assert any("folder 'maybe' is not a class of the model" in p.reason for p in problems)


def test_cases_from_folders_needs_a_class_folder(tmp_path):
    _png(tmp_path / "cats" / "a.png")
    with pytest.raises(UsageError, match=r"no folder named after a class of the model \(normal, disease\); found \['cats'\]"):
        cases_from_folders(tmp_path, CLASSES)
    with pytest.raises(UsageError, match="not a folder"):
        cases_from_folders(tmp_path / "cats" / "a.png", CLASSES)


def test_cases_from_csv_relative_to_its_folder_labels_matched_without_case(tmp_path):
    labels = tmp_path / "labels.csv"
    labels.write_text("\ufeffpath,label\nimg/a.png,Normal\n/abs/b.png,disease\n,normal\nimg/c.png,cat\n", encoding="utf-8")
    cases, problems = cases_from_csv(labels, CLASSES)
    assert cases == [Case(str(tmp_path / "img" / "a.png"), "normal"), Case("/abs/b.png", "disease")]
    assert [(p.path, p.kind) for p in problems] == [(f"{labels}:4", "unlabelled"),
                                                     (str(tmp_path / "img" / "c.png"), "unknown label")]
    assert cases_from_csv(labels, CLASSES, root="/data")[0][0] == Case("/data/img/a.png", "normal")
    assert isinstance(problems[0], Problem) and "line 5" in problems[1].reason


@pytest.mark.parametrize("text, message", [
    ("file,class\na.png,normal\n", "needs a header row with columns path,label"),
    ("", r"needs a header row with columns path,label \(found no rows\)"),
    ("path,label\na.png,normal\na.png,disease\n", "line 3: a.png is listed twice"),
])
def test_a_bad_labels_csv_is_a_usage_error(tmp_path, text, message):
    labels = tmp_path / "labels.csv"
    labels.write_text(text)
    with pytest.raises(UsageError, match=message):
        cases_from_csv(labels, CLASSES)
    with pytest.raises(UsageError, match="labels file not found"):
        cases_from_csv(tmp_path / "none.csv", CLASSES)
