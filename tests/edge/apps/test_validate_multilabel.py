"""medge validate of a multi-label bundle on a label index: per-finding figures against scikit-learn, masked labels,
macro and micro AUC, subgroups, the unsupported finding, missing and unreadable files, and the guarantee's exit."""
import csv
import json

import cv2
import numpy as np
import pytest

from medge.edge.apps.cli import main
from medge.edge.golive.roc import auc_ci
from tests.conftest import xray_like
from tests.edge.multilabel import finding_entry, multilabel_copy

N = 96
FINDINGS = ("Effusion", "Nodule")


def _probabilities(bundle, files):
    from medge.edge.model import Model

    model = Model.load(bundle)
    return np.array([[p.probabilities[f] for f in FINDINGS] for p in model.predict_iter(files, 16, 0)])


@pytest.fixture(scope="module")
def site(multilabel_bundle, tmp_path_factory):
    """Images made here, labels from the model's own probabilities plus noise (an AUC between chance and 1), every
    7th Effusion label uncertain (-1), sex, age and view columns, one file missing and one truncated."""
    root = tmp_path_factory.mktemp("mlval")
    images = root / "images"
    images.mkdir()
    files = []
    for i in range(N):
        img = xray_like(48, 48, seed=i).astype(np.float32) * (0.6 + 0.8 * (i % 11) / 10)
        cv2.imwrite(str(images / f"im{i:03d}.png"), np.clip(img, 0, 255).astype(np.uint8))
        files.append(str(images / f"im{i:03d}.png"))
    p = _probabilities(multilabel_bundle, files)
    rng = np.random.default_rng(3)
    noisy = p + rng.normal(0, p.std(axis=0) * 0.8, p.shape)
    y = (noisy > np.median(noisy, axis=0)).astype(int)
    rows = [["path", *FINDINGS, "patient", "sex", "age", "view"]]
    for i in range(N):
        eff = -1 if i % 7 == 0 else y[i, 0]
        rows.append([f"im{i:03d}.png", eff, y[i, 1], f"P{i // 2}", "MF"[i % 2], 25 + (i * 7) % 70, ("PA", "AP", "LL")[i % 3]])
    (images / "broken.png").write_bytes((images / "im000.png").read_bytes()[:60])
    rows += [["missing.png", 1, 0, "P900", "M", 50, "PA"], ["broken.png", 0, 1, "P901", "F", 50, "PA"]]
    with open(root / "index.csv", "w", newline="") as f:
        csv.writer(f).writerows(rows)
    return root, y, p


def _validate(bundle, site, tmp_path, *extra):
    root = site[0]
    code = main(["validate", "--model", str(bundle), "--labels", str(root / "index.csv"), "--images", str(root / "images"),
                 "--labels-format", "generic", "--out", str(tmp_path / "r/report.json"), *extra])
    return code, json.loads((tmp_path / "r/report.json").read_text())


def test_per_finding_figures_agree_with_scikit_learn(multilabel_bundle, site, tmp_path):
    metrics = pytest.importorskip("sklearn.metrics")
    recall_score, roc_auc_score = metrics.recall_score, metrics.roc_auc_score

    code, rep = _validate(multilabel_bundle, site, tmp_path)
    assert code == 0 and rep["task"] == "multilabel" and rep["counts"]["cases"] == N
    recs = [json.loads(ln) for ln in (tmp_path / "r/report.cases.jsonl").read_text().splitlines()]
    ok = [r for r in recs if not r.get("error")]
    assert len(ok) == N and all(r["task"] == "multilabel" for r in ok)
    y, p = site[1], site[2]
    masked = np.arange(N) % 7 == 0
    eff, nod = rep["findings"]
    # Effusion: its masked cases are left out of its figures, not out of Nodule's
    assert (eff["cases"], eff["masked"], nod["cases"], nod["masked"]) == (N - masked.sum(), masked.sum(), N, 0)
    assert eff["auc"]["auc"] == pytest.approx(roc_auc_score(y[~masked, 0], p[~masked, 0]), abs=1e-9)
    assert eff["auc"]["low"] == pytest.approx(auc_ci(y[~masked, 0] == 1, p[~masked, 0])["low"], abs=1e-9)
    assert eff["auc"]["low"] < eff["auc"]["auc"] < eff["auc"]["high"]
    assert 0.55 < eff["auc"]["auc"] < 0.999
    assert eff["sensitivity"]["value"] == pytest.approx(recall_score(y[~masked, 0], p[~masked, 0] >= 0.4))
    assert eff["specificity"]["value"] == pytest.approx(recall_score(1 - y[~masked, 0], p[~masked, 0] < 0.4))
    assert eff["positives"] == y[~masked, 0].sum() and eff["guarantee_at_site"]["verdict"] == "no target"
    # Nodule has no threshold: AUC only, with the reason
    assert nod["auc"]["auc"] == pytest.approx(roc_auc_score(y[:, 1], p[:, 1]), abs=1e-9)
    assert not nod["supported"] and "sensitivity" not in nod and "positives in the validation split" in nod["unsupported"]
    s = rep["summary"]
    assert s["macro_auc"] == pytest.approx((eff["auc"]["auc"] + nod["auc"]["auc"]) / 2)
    pooled_y, pooled_p = np.r_[y[~masked, 0], y[:, 1]], np.r_[p[~masked, 0], p[:, 1]]
    assert s["micro_auc"] == pytest.approx(roc_auc_score(pooled_y, pooled_p), abs=1e-9)
    assert s["micro_pairs"] == 2 * N - masked.sum()


def test_subgroups_problems_and_files(multilabel_bundle, site, tmp_path):
    code, rep = _validate(multilabel_bundle, site, tmp_path)
    assert rep["counts"]["problems"] == {"missing": 1, "unreadable": 1}
    assert sorted(p["path"].rsplit("/", 1)[-1] for p in rep["problems"]) == ["broken.png", "missing.png"]
    sub = rep["subgroups"]
    assert {k: g["cases"] for k, g in sub["sex"].items()} == {"F": N // 2, "M": N // 2}
    assert {k: g["cases"] for k, g in sub["view_position"].items()} == {"AP": N // 3, "PA": N // 3, "lateral": N // 3}
    ages = 25 + (np.arange(N) * 7) % 70
    assert sub["age_band"]["<40"]["cases"] == int((ages < 40).sum())
    assert sub["age_band"][">=80"]["cases"] == int((ages >= 80).sum()) and sub["age_band"][">=80"]["small"]
    assert "auc" not in sub["age_band"][">=80"]["findings"]["Nodule"]
    assert set(sub["manufacturer"]) == {"unknown"}  # PNGs carry no manufacturer
    m = np.arange(N) % 2 == 1  # "F"
    y, p = site[1], site[2]
    assert sub["sex"]["F"]["findings"]["Nodule"]["auc"]["auc"] == pytest.approx(
        auc_ci(y[m, 1] == 1, p[m, 1])["auc"], abs=1e-9)
    assert rep["ci_method"]["age_bands"] == ["<40", "40-59", "60-79", ">=80"]
    lines = (tmp_path / "r/report.cases.jsonl").read_text().splitlines()
    assert len(lines) == N + 2
    md = (tmp_path / "r/report.md").read_text()
    assert "| Effusion |" in md and "unsupported" in md and "Macro AUC" in md and "### age_band" in md
    assert cv2.imread(str(tmp_path / "r/report.roc.png")).shape[1] > cv2.imread(str(tmp_path / "r/report.roc.png")).shape[0]


def _with_target(src, dst, threshold):
    g = {"statistic": "sensitivity", "target": 0.9, "confidence": 0.95, "estimate": 0.95, "bound": 0.91, "n": 80,
         "needed": 29, "supported": True}
    entries = [{**finding_entry("Effusion", 1.5, threshold, "sensitivity=0.9"), "guarantee": g},
               finding_entry("Nodule", threshold=None)]
    return multilabel_copy(src, dst, entries)


def test_a_guarantee_is_confirmed_or_refuted_and_a_refuted_one_fails(multilabel_bundle, site, tmp_path, capsys):
    low = _with_target(multilabel_bundle, tmp_path / "low", 0.0)  # every case positive: sensitivity 1
    code, rep = _validate(low, site, tmp_path / "a")
    assert code == 0 and rep["guarantees"]["confirmed"] == ["Effusion"]
    g = rep["findings"][0]["guarantee_at_site"]
    assert g["lower_bound"] >= 0.9 and g["estimate"] == 1.0
    high = _with_target(multilabel_bundle, tmp_path / "high", 1.0)  # no case positive: sensitivity 0
    code, rep = _validate(high, site, tmp_path / "b")
    assert code == 1 and rep["guarantees"]["refuted"] == ["Effusion"] and not rep["passed"]
    assert "guarantee refuted at this site: Effusion" in capsys.readouterr().err


def test_requirements_are_judged_per_finding(multilabel_bundle, site, tmp_path):
    code, rep = _validate(multilabel_bundle, site, tmp_path, "--require", "auc>=0.99,specificity>=0.5")
    assert code == 1
    judged = {v["requirement"]: v["passed"] for v in rep["requirements"]}
    assert judged == {"Effusion: auc>=0.99": False, "Nodule: auc>=0.99": False, "Effusion: specificity>=0.5": True}


def test_usage_errors(multilabel_bundle, bundle, site, tmp_path, capsys):
    root = site[0]
    assert main(["validate", "--model", str(multilabel_bundle), "--data", str(root / "images"), "--out",
                 str(tmp_path / "a/r.json")]) == 2
    assert "give --labels INDEX.csv" in capsys.readouterr().err
    assert main(["validate", "--model", str(bundle), "--labels", str(root / "index.csv"), "--labels-format", "nih",
                 "--out", str(tmp_path / "b/r.json")]) == 2
    assert "single-label bundle" in capsys.readouterr().err


def test_an_nih_index_gives_the_same_figures(multilabel_bundle, site, tmp_path):
    """The same labels written as NIH ChestX-ray14's columns ("A|B" or "No Finding", Patient Gender, View Position):
    no masked label in that format, so Effusion's masked cases there are read as written (here: absent)."""
    root, y, _ = site
    rows = [["Image Index", "Finding Labels", "Follow-up #", "Patient ID", "Patient Age", "Patient Gender",
             "View Position"]]
    for i in range(N):
        names = [f for k, f in enumerate(FINDINGS) if y[i, k] and not (k == 0 and i % 7 == 0)]
        rows.append([f"im{i:03d}.png", "|".join(names) or "No Finding", 0, i // 2, 25 + (i * 7) % 70, "MF"[i % 2],
                     ("PA", "AP", "LL")[i % 3]])
    with open(root / "nih.csv", "w", newline="") as f:
        csv.writer(f).writerows(rows)
    assert main(["validate", "--model", str(multilabel_bundle), "--labels", str(root / "nih.csv"), "--images",
                 str(root / "images"), "--labels-format", "nih", "--out", str(tmp_path / "n/report.json")]) == 0
    rep = json.loads((tmp_path / "n/report.json").read_text())
    _, generic = _validate(multilabel_bundle, site, tmp_path)
    assert rep["counts"] == {"cases": N, "patients": N // 2, "problems": {}} and rep["data"]["format"] == "nih"
    assert rep["findings"][1]["auc"] == generic["findings"][1]["auc"]  # Nodule: the same labels, the same figures
    assert rep["findings"][0]["masked"] == 0 and rep["findings"][0]["cases"] == N
    assert {k: g["cases"] for k, g in rep["subgroups"]["view_position"].items()} == {"AP": 32, "PA": 32, "lateral": 32}


def test_dicom_manufacturer_subgroups(multilabel_bundle, tmp_path):
    pydicom = pytest.importorskip("pydicom")
    from tests.edge.apps.node.nodes import write_radiograph

    rows = [["path", *FINDINGS, "sex"]]
    (tmp_path / "c").mkdir()
    for i in range(44):
        path = write_radiograph(tmp_path / "c" / f"IM{i:04d}", size=64, seed=i)
        ds = pydicom.dcmread(path)
        ds.Manufacturer, ds.ViewPosition = ("Acme", "PA") if i < 24 else ("Other", "AP")
        ds.save_as(path)
        rows.append([path.name, i % 2, (i // 2) % 2, "F"])
    with open(tmp_path / "c" / "index.csv", "w", newline="") as f:
        csv.writer(f).writerows(rows)
    assert main(["validate", "--model", str(multilabel_bundle), "--labels", str(tmp_path / "c" / "index.csv"),
                 "--out", str(tmp_path / "r/report.json")]) == 0  # images: the index's folder
    sub = json.loads((tmp_path / "r/report.json").read_text())["subgroups"]
    assert {k: g["cases"] for k, g in sub["manufacturer"].items()} == {"Acme": 24, "Other": 20}
    assert sub["manufacturer"]["Acme"]["findings"]["Effusion"]["auc"]["n_positive"] == 12
    assert set(sub["view_position"]) == {"PA", "AP"}  # from DICOM ViewPosition: the index has no view column


def _strict(text):
    """JSON as strict readers take it: NaN and Infinity refused."""
    def refuse(name):
        raise ValueError(f"{name} in strict JSON")
    return json.loads(text, parse_constant=refuse)


def test_the_report_is_strict_json_when_a_figure_is_undefined(multilabel_bundle, site, tmp_path):
    """A threshold calling every case positive leaves no predicted negative (NPV undefined), and a finding without a
    positive has no sensitivity: those figures are written null, never NaN (which strict JSON readers refuse)."""
    root = site[0]
    rows = list(csv.reader(open(root / "index.csv")))
    rows = [rows[0]] + [[r[0], 0, *r[2:]] for r in rows[1:]]  # no Effusion positive
    with open(root / "none.csv", "w", newline="") as f:
        csv.writer(f).writerows(rows)
    low = _with_target(multilabel_bundle, tmp_path / "low", 0.0)  # every case called positive
    main(["validate", "--model", str(low), "--labels", str(root / "none.csv"), "--images", str(root / "images"),
          "--out", str(tmp_path / "r/report.json")])
    rep = _strict((tmp_path / "r/report.json").read_text())
    eff = rep["findings"][0]
    assert eff["positives"] == 0 and eff["sensitivity"]["value"] is None and eff["npv"]["value"] is None
    assert eff["guarantee_at_site"]["estimate"] is None
    for line in (tmp_path / "r/report.cases.jsonl").read_text().splitlines():
        _strict(line)


def test_finding_names_that_do_not_match_the_bundle_s_are_listed_and_warned(multilabel_bundle, site, tmp_path,
                                                                            capsys):
    """The site writes "Pleural Effusion" where the bundle says "Effusion": not a silent "0 positives, AUC n/a"."""
    root, y, _ = site
    rows = [["Image Index", "Finding Labels", "Patient ID", "Patient Age", "Patient Gender", "View Position"]]
    for i in range(N):
        names = [f for k, f in enumerate(("Pleural Effusion", "Nodule")) if y[i, k]]
        rows.append([f"im{i:03d}.png", "|".join(names) or "No Finding", i // 2, 50, "M", "PA"])
    with open(root / "renamed.csv", "w", newline="") as f:
        csv.writer(f).writerows(rows)
    main(["validate", "--model", str(multilabel_bundle), "--labels", str(root / "renamed.csv"), "--images",
          str(root / "images"), "--labels-format", "nih", "--out", str(tmp_path / "r/report.json")])
    rep = json.loads((tmp_path / "r/report.json").read_text())
    assert rep["findings_not_matched"] == {"index_only": ["Pleural Effusion"], "bundle_only": ["Effusion"]}
    assert len(rep["warnings"]) == 1 and "Pleural Effusion" in rep["warnings"][0]
    err = capsys.readouterr().err
    assert "warning: the bundle's finding(s) Effusion are named nowhere in the index" in err
    assert "WARNING: the bundle's finding(s) Effusion" in err.splitlines()[-1]  # the summary line
    assert "> **Warning:** the bundle's finding(s) Effusion" in (tmp_path / "r/report.md").read_text()
    _, matched = _validate(multilabel_bundle, site, tmp_path / "m")
    assert matched["findings_not_matched"] == {"index_only": [], "bundle_only": []} and matched["warnings"] == []


def test_an_index_whose_files_are_mostly_missing_says_so_first(multilabel_bundle, site, tmp_path, capsys):
    root = site[0]
    rows = list(csv.reader(open(root / "index.csv")))
    rows = rows[:11] + [[f"gone{i}.png", *r[1:]] for i, r in enumerate(rows[11:41])]  # 10 found, 30 missing
    with open(root / "gone.csv", "w", newline="") as f:
        csv.writer(f).writerows(rows)
    main(["validate", "--model", str(multilabel_bundle), "--labels", str(root / "gone.csv"), "--images",
          str(root / "images"), "--out", str(tmp_path / "r/report.json")])
    rep = json.loads((tmp_path / "r/report.json").read_text())
    assert rep["counts"]["problems"] == {"missing": 30}
    assert rep["warnings"] == ["30 of the 40 files the index names are missing or not images: is --images the folder "
                               "its paths are under?"]
    err = capsys.readouterr().err
    assert "warning: 30 of the 40 files" in err and err.splitlines()[-1].startswith("WARNING: 30 of the 40 files")
