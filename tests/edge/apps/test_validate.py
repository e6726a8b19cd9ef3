"""medge validate: a bundle on labelled cases, figures against scikit-learn and statsmodels (dev extra only)."""
import json
import shutil

import cv2
import numpy as np
import pytest

from medge.edge.apps.cli import main
from tests.edge.calibrated import calibrated_copy, synth_split


@pytest.fixture(scope="module")
def setup(bundle, tmp_path_factory):
    root = tmp_path_factory.mktemp("val")
    val, test = synth_split(root / "d", n=160)
    b = calibrated_copy(bundle, root / "b", val)
    cases = root / "cases"
    shutil.copytree(test, cases)
    (cases / "disease" / "truncated.png").write_bytes((cases / "disease").glob("*.png").__next__().read_bytes()[:100])
    (cases / "normal" / "random.png").write_bytes(np.random.default_rng(0).bytes(500))
    (cases / "normal" / "notes.txt").write_text("not an image")
    (cases / "other").mkdir()
    cv2.imwrite(str(cases / "other" / "x.png"), np.full((64, 64), 90, np.uint8) + np.eye(64, dtype=np.uint8))
    cv2.imwrite(str(cases / "loose.png"), np.full((64, 64), 80, np.uint8) + np.eye(64, dtype=np.uint8))
    return b, cases


def _run(setup, tmp_path, *extra, out="r/report.json"):
    b, cases = setup
    return main(["validate", "--model", str(b), "--data", str(cases), "--out", str(tmp_path / out), *extra])



def test_a_synthetic_split_has_no_problems_and_a_dropped_file_is_one(setup, tmp_path, capsys):
    """medge synth's class folders hold images only (its lesion index lies beside the splits): validate on a
    synthetic split reports no problem, while a file dropped into a class folder still is one (issue 31)."""
    b, cases = setup
    split = tmp_path / "split"
    shutil.copytree(cases.parent / "d" / "test", split)  # the synthetic test split the cases were copied from
    argv = ["validate", "--model", str(b), "--data", str(split)]
    assert main([*argv, "--out", str(tmp_path / "clean.json")]) == 0
    rep = json.loads((tmp_path / "clean.json").read_text())
    assert rep["counts"]["problems"] == {} and rep["problems"] == [] and rep["counts"]["cases"] == 40
    assert "problems: none" in capsys.readouterr().err
    (split / "normal" / "notes.txt").write_text("not an image")
    (split / "disease" / "00001.json").write_text('{"lesions": []}')  # a .json is no exception
    assert main([*argv, "--out", str(tmp_path / "dropped.json")]) == 0
    rep = json.loads((tmp_path / "dropped.json").read_text())
    assert rep["counts"]["problems"] == {"not an image": 2} and rep["counts"]["cases"] == 40
    assert sorted(p["path"].rsplit("/", 1)[-1] for p in rep["problems"]) == ["00001.json", "notes.txt"]
    assert "problems: 2 not an image" in capsys.readouterr().err

def _truth_and_score(tmp_path):
    recs = [json.loads(ln) for ln in (tmp_path / "r/report.cases.jsonl").read_text().splitlines()]
    ok = [r for r in recs if not r["error"]]
    return recs, np.array([r["truth"] == "disease" for r in ok]), np.array([r["probabilities"]["disease"] for r in ok])


def test_report_files_counts_and_problems(setup, tmp_path, capsys):
    assert _run(setup, tmp_path) == 0
    rep = json.loads((tmp_path / "r/report.json").read_text())
    n_good = len(list((setup[1] / "disease").glob("0*.png"))) + len(list((setup[1] / "normal").glob("0*.png")))
    assert rep["counts"]["cases"] == n_good
    assert rep["counts"]["problems"] == {"not an image": 1, "unreadable": 2, "unlabelled": 2}  # notes.txt
    reasons = {p["path"].rsplit("/", 1)[-1]: p["reason"] for p in rep["problems"]}
    assert "not a class of the model" in reasons["x.png"] and "not in a class folder" in reasons["loose.png"]
    assert "truncated" in reasons["truncated.png"].lower() or "cannot" in reasons["truncated.png"].lower()
    recs, _, _ = _truth_and_score(tmp_path)
    assert len(recs) == n_good + sum(rep["counts"]["problems"].values())  # every input a record
    # the bundle's 40 validation positives do not support 0.95: the report carries the export's mark
    mark = "sensitivity=0.95 unsupported: 40 positives (59 needed at 95% confidence)"
    assert rep["decision"]["guarantee"].startswith(mark)
    assert f"- operating point at export: {mark}" in (tmp_path / "r/report.md").read_text()
    for name in ("report.md", "report.roc.png", "report.reliability.png"):
        assert (tmp_path / "r" / name).stat().st_size > 0
    assert cv2.imread(str(tmp_path / "r/report.roc.png")).shape[2] == 3
    md = (tmp_path / "r/report.md").read_text()
    assert "| AUC |" in md and "Confusion matrix" in md and "![ROC](report.roc.png)" in md
    d = rep["decision"]
    assert d["positive"] == "disease" and d["calibrated"] and "sensitivity=0.95" in d["source"]
    assert rep["against_bundle"]["bundle_cases"] == 80
    err = capsys.readouterr().err
    assert "AUC" in err and "; operating point at export: sensitivity=0.95 unsupported: 40 positives" in err


def test_figures_agree_with_scikit_learn_and_statsmodels(setup, tmp_path):
    metrics = pytest.importorskip("sklearn.metrics")
    calibration = pytest.importorskip("sklearn.calibration")
    proportion = pytest.importorskip("statsmodels.stats.proportion")
    assert _run(setup, tmp_path) == 0
    f = json.loads((tmp_path / "r/report.json").read_text())["figures"]
    rep = json.loads((tmp_path / "r/report.json").read_text())
    _, y, s = _truth_and_score(tmp_path)
    t = rep["decision"]["threshold"]
    assert abs(f["auc"]["auc"] - metrics.roc_auc_score(y, s)) < 1e-9
    np.testing.assert_array_equal(f["matrix"], metrics.confusion_matrix(y, s >= t))
    assert abs(f["brier"] - metrics.brier_score_loss(y, s)) < 1e-9
    fpr, tpr, _ = metrics.roc_curve(y, s, drop_intermediate=False)
    np.testing.assert_allclose(rep["roc"]["fpr"], fpr, atol=1e-12)
    np.testing.assert_allclose(rep["roc"]["tpr"], tpr, atol=1e-12)
    prob_true, prob_pred = calibration.calibration_curve(y, s, n_bins=10)
    bins = [b for b in f["reliability"]["bins"] if b["count"]]
    np.testing.assert_allclose([b["fraction_positive"] for b in bins], prob_true, atol=1e-9)
    np.testing.assert_allclose([b["mean_score"] for b in bins], prob_pred, atol=1e-9)
    sens = f["sensitivity"]
    low, high = proportion.proportion_confint(sens["successes"], sens["n"], 0.05, method="wilson")
    assert abs(sens["low"] - low) < 1e-12 and abs(sens["high"] - high) < 1e-12
    assert sens["n"] == int(y.sum()) and sens["successes"] == int((s[y] >= t).sum())


def test_requirements_are_judged_on_the_lower_ci_bound(setup, tmp_path, capsys):
    assert _run(setup, tmp_path) == 0
    sens = json.loads((tmp_path / "r/report.json").read_text())["figures"]["sensitivity"]
    between = (sens["low"] + sens["value"]) / 2  # met by the estimate, not by its lower bound
    assert _run(setup, tmp_path, "--require", f"sensitivity>={between:.4f}", "--overwrite") == 1
    err = capsys.readouterr().err
    assert f"requirement not met: sensitivity>={between:.4f}" in err and "lower 95% CI bound" in err
    rep = json.loads((tmp_path / "r/report.json").read_text())
    assert rep["passed"] is False and rep["requirements"][0]["value"] > between
    assert _run(setup, tmp_path, "--require", f"sensitivity>={sens['low'] - 0.01:.4f}", "--overwrite") == 0


@pytest.mark.parametrize("require, message", [
    ("auc>0.8", "cannot read"), ("kappa>=0.5", "unknown metric"), ("auc>=1.5", "not in \\[0, 1\\]"),
    ("auc>=0.9.1", "'0.9.1' is not a number"), ("auc>=.", "'.' is not a number"), ("auc=>0.9", "cannot read 'auc=>0.9'"),
    ("brier<=0.1", "brier cannot be required"), ("ece<=0.05", "ece cannot be required: it has no confidence interval")])
def test_bad_requirements_exit_2(setup, tmp_path, capsys, require, message):
    assert _run(setup, tmp_path, "--require", require) == 2
    import re

    assert re.search(message, capsys.readouterr().err)
    assert not (tmp_path / "r").exists()  # nothing written


def test_an_auc_requirement_on_two_cases_of_each_class_fails_with_too_few_cases(setup, tmp_path, capsys):
    _, cases = setup
    for cls in ("disease", "normal"):
        (tmp_path / "c" / cls).mkdir(parents=True)
        for p in sorted((cases / cls).glob("0*.png"))[:2]:
            shutil.copy(p, tmp_path / "c" / cls / p.name)
    assert main(["validate", "--model", str(setup[0]), "--data", str(tmp_path / "c"), "--out", str(tmp_path / "r/report.json"),
                 "--require", "auc>=0.5"]) == 1
    err = capsys.readouterr().err
    assert "requirement not met: auc>=0.5 (too few cases (2 positive, 2 negative; at least 10 of each))" in err
    rep = json.loads((tmp_path / "r/report.json").read_text())
    assert rep["requirements"][0]["reason"].startswith("too few cases")
    assert rep["ci_method"]["auc"] == "Newcombe score (2006, method 5)"
    assert "too few cases" in (tmp_path / "r/report.md").read_text()


def test_a_perfectly_separated_subgroup_shows_an_interval_below_1(tmp_path):
    from medge.edge.apps.validate import markdown
    from medge.edge.golive import validation as val

    rng = np.random.default_rng(0)
    records = [{"input": {"manufacturer": "Acme"}, "truth": ("disease", "normal")[i % 2],
                "probabilities": {"disease": (0.9, 0.1)[i % 2]}} for i in range(24)]  # perfectly separated
    records += [{"input": {"manufacturer": "Other"}, "truth": ("disease", "normal")[i % 2],
                 "probabilities": {"disease": float(rng.random())}} for i in range(30)]
    decision = val.Decision("disease", 1, 0.5, "test", True)
    report = {"model": {"bundle": "b", "sha256": "0" * 64, "classes": ["normal", "disease"]},
              "decision": {"positive": "disease", "threshold": 0.5, "source": "test", "calibrated": True},
              "counts": {"cases": 54, "positives": 27, "problems": {}}, "created": "now", "medge": "x", "problems": [],
              **val.evaluate_records(records, decision, None, [])}
    acme = report["subgroups"]["manufacturer"]["Acme"]["auc"]
    assert acme["auc"] == 1.0 and acme["note"] is None and acme["high"] == 1.0  # Newcombe's interval, 12 + 12
    md = markdown(report, {"roc": tmp_path / "r.png", "reliability": tmp_path / "q.png", "cases": tmp_path / "c.jsonl"})
    assert "| Acme | 24 | 1.000 (0.832 to 1.000) |" in md
    assert "1.000 to 1.000" not in md and "no interval" not in md and "| Other | 30 | 0." in md


def test_existing_report_is_not_replaced(setup, tmp_path, capsys):
    assert _run(setup, tmp_path) == 0
    before = (tmp_path / "r/report.json").read_bytes()
    assert _run(setup, tmp_path) == 2
    assert "exists" in capsys.readouterr().err and (tmp_path / "r/report.json").read_bytes() == before
    assert _run(setup, tmp_path, out="r/report.txt") == 2


def test_labels_csv(setup, tmp_path):
    b, cases = setup
    rows = ["path,label"] + [f"{p.relative_to(cases)},{p.parent.name.upper()}" for p in sorted(cases.glob("*/0*.png"))]
    rows += ["missing.png,normal", "other/x.png,effusion"]
    (tmp_path / "labels.csv").write_text("\n".join(rows) + "\n")
    assert main(["validate", "--model", str(b), "--labels", str(tmp_path / "labels.csv"), "--data", str(cases),
                 "--out", str(tmp_path / "r/report.json")]) == 0
    rep = json.loads((tmp_path / "r/report.json").read_text())
    assert rep["counts"]["cases"] == len(rows) - 3
    assert rep["counts"]["problems"] == {"unknown label": 1, "unreadable": 1}
    (tmp_path / "bad.csv").write_text("file;class\na.png;normal\n")
    assert main(["validate", "--model", str(b), "--labels", str(tmp_path / "bad.csv"), "--out",
                 str(tmp_path / "r2/report.json")]) == 2


def test_no_usable_case_exits_1(setup, tmp_path):
    b, _ = setup
    folder = tmp_path / "cases" / "normal"
    folder.mkdir(parents=True)
    (folder / "a.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    assert main(["validate", "--model", str(b), "--data", str(tmp_path / "cases"), "--out", str(tmp_path / "r/report.json")]) == 1
    assert json.loads((tmp_path / "r/report.json").read_text())["counts"]["problems"] == {"unreadable": 1}


def test_dicom_subgroups(setup, tmp_path):
    pydicom = pytest.importorskip("pydicom")
    from tests.edge.apps.node.nodes import write_radiograph

    b, _ = setup
    for cls in ("disease", "normal"):
        (tmp_path / "c" / cls).mkdir(parents=True)
    for i in range(44):
        path = write_radiograph(tmp_path / "c" / ("disease", "normal")[i % 2] / f"IM{i:04d}", size=128, seed=i)
        ds = pydicom.dcmread(path)
        ds.Manufacturer, ds.ViewPosition = ("Acme", "PA") if i < 24 else ("Other", "AP")
        ds.save_as(path)
    assert main(["validate", "--model", str(b), "--data", str(tmp_path / "c"), "--out", str(tmp_path / "r/report.json")]) == 0
    sub = json.loads((tmp_path / "r/report.json").read_text())["subgroups"]
    assert sub["manufacturer"]["Acme"]["cases"] == 24 and "sensitivity" in sub["manufacturer"]["Acme"]
    assert sub["manufacturer"]["Other"]["cases"] == 20 and "auc" in sub["manufacturer"]["Other"]
    assert set(sub["view_position"]) == {"PA", "AP"} and set(sub["modality"]) == {"DX"}
    assert sub["bit_depth"] == {"12-bit": sub["bit_depth"]["12-bit"]} and sub["bit_depth"]["12-bit"]["cases"] == 44


def test_a_report_with_one_class_absent_is_strict_json(setup, tmp_path):
    """Cases of one class only: sensitivity (no positive) and its interval are undefined, written null, not NaN."""
    b, cases = setup
    shutil.copytree(cases / "normal", tmp_path / "cases" / "normal")
    (tmp_path / "cases" / "disease").mkdir()
    main(["validate", "--model", str(b), "--data", str(tmp_path / "cases"), "--out", str(tmp_path / "r/report.json")])

    def refuse(name):
        raise ValueError(f"{name} in strict JSON")
    text = (tmp_path / "r/report.json").read_text()
    rep = json.loads(text, parse_constant=refuse)
    assert rep["counts"]["cases"] > 0 and "null" in text
