"""medge.edge.golive.validation's parts: requirements, size bands, cases from folders and from a CSV.

The whole ``medge validate`` run against a bundle is tested in tests/edge/apps/test_validate.py.
"""
import math

import cv2
import numpy as np
import pytest

from medge.edge.errors import UsageError
from medge.edge.golive.validation import (
    Case,
    Problem,
    Requirement,
    cases_from_csv,
    cases_from_folders,
    parse_requirements,
    size_band,
)

CLASSES = ["normal", "disease"]


def test_requirements_are_parsed_in_order():
    assert parse_requirements(None) == parse_requirements("") == []
    assert parse_requirements(" AUC >= 0.85, sensitivity>=.9,brier<=0.2") == [
        Requirement("auc", ">=", 0.85), Requirement("sensitivity", ">=", 0.9), Requirement("brier", "<=", 0.2)]


@pytest.mark.parametrize("text, message", [
    ("auc>0.8", r"cannot read 'auc>0\.8': write METRIC>=VALUE"),
    ("specifity>=0.8", "unknown metric 'specifity'"),
    ("auc<=0.8", r"auc takes >= \(larger is better\)"),
    ("ece>=0.1", r"ece takes <= \(larger is worse\)"),
    ("sensitivity>=1.5", r"sensitivity target 1.5 is not in \[0, 1\]"),
])
def test_a_bad_requirement_is_a_usage_error_saying_what_is_wrong(text, message):
    with pytest.raises(UsageError, match=message):
        parse_requirements(text)


def test_a_figure_with_a_ci_is_judged_on_its_lower_bound():
    figures = {"sensitivity": {"value": 0.93, "low": 0.88, "high": 0.97}, "brier": 0.12, "auc": {"auc": 0.9, "low": math.nan}}
    verdict = Requirement("sensitivity", ">=", 0.9).judge(figures)
    assert verdict == {"requirement": "sensitivity>=0.9", "judged_on": "lower 95% CI bound", "judged_value": 0.88,
                       "value": 0.93, "passed": False}
    assert Requirement("sensitivity", ">=", 0.85).judge(figures)["passed"]
    assert Requirement("brier", "<=", 0.15).judge(figures) == {"requirement": "brier<=0.15", "judged_on": "value",
                                                               "judged_value": 0.12, "value": 0.12, "passed": True}
    assert not Requirement("auc", ">=", 0.5).judge(figures)["passed"]  # no bound (NaN) is not a pass
    assert not Requirement("ppv", ">=", 0.5).judge(figures)["passed"]  # nor is a figure that is missing


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
