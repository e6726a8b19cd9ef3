"""medge predict with a multi-label bundle (edge.findings): JSONL and CSV per finding, the summary, heatmaps per finding."""
import csv
import json

import numpy as np
import pytest

from medge.edge.apps.cli import main
from medge.edge.inputs.image import read_image, write_image
from tests.conftest import xray_like
from tests.edge.multilabel import finding_entry, multilabel_copy

KEYS = {"task", "decisions", "thresholds", "positive_findings", "any_positive"}


@pytest.fixture
def folder(tmp_path):
    d = tmp_path / "scans"
    d.mkdir()
    for s in range(5):
        write_image(d / f"img{s}.png", xray_like(64, 64, seed=s))
    (d / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    return d


@pytest.fixture(scope="module")
def ml_heat(heat_bundle, tmp_path_factory):
    """The 96 px CAM bundle as a multi-label bundle: Effusion (threshold 0.4), Nodule unsupported."""
    entries = [finding_entry("Effusion", 1.5, 0.4), finding_entry("Nodule", threshold=None)]
    return multilabel_copy(heat_bundle[0], tmp_path_factory.mktemp("mlheat") / "b", entries)


def test_jsonl_records_carry_each_finding_and_error_records_the_same_keys(multilabel_bundle, folder, tmp_path, capsys):
    missing = tmp_path / "missing.png"
    assert main(["predict", "--model", str(multilabel_bundle), str(folder), str(missing)]) == 1
    out, err = capsys.readouterr()
    recs = [json.loads(ln) for ln in out.splitlines()]
    assert len(recs) == 7 and all(KEYS <= set(r) for r in recs)
    good = [r for r in recs if r["error"] is None]
    bad = [r for r in recs if r["error"] is not None]
    assert len(good) == 5 and len(bad) == 2  # the broken file and the missing one (an entry that cannot be read)
    for r in good:
        assert r["thresholds"] == {"Effusion": 0.4, "Nodule": None} and r["decisions"]["Nodule"] is None
        assert r["decisions"]["Effusion"] is (r["probabilities"]["Effusion"] >= 0.4)
        assert r["positive_findings"] == (["Effusion"] if r["decisions"]["Effusion"] else [])
        assert r["any_positive"] is bool(r["positive_findings"])
    for r in bad:
        assert r["task"] == "multilabel" and r["decisions"] is None and r["any_positive"] is None
        assert r["thresholds"] == {"Effusion": 0.4, "Nodule": None}
    positive = sum(r["decisions"]["Effusion"] for r in good)
    assert (f"findings: Effusion {positive} positive, Nodule not decided (no threshold) on 5; {positive} exam(s) "
            "with a positive finding") in err


def test_csv_has_a_decision_threshold_and_probability_per_finding(multilabel_bundle, folder, tmp_path):
    out, jl = tmp_path / "r.csv", tmp_path / "r.jsonl"
    main(["predict", "--model", str(multilabel_bundle), str(folder), "--out", str(out), "--format", "csv"])
    main(["predict", "--model", str(multilabel_bundle), str(folder), "--out", str(jl)])
    with out.open(newline="") as f:
        reader = csv.DictReader(f)
        header, rows = reader.fieldnames, list(reader)
    assert header[:10] == ["path", "label", "p_Effusion", "p_Nodule", "positive_Effusion", "positive_Nodule",
                           "threshold_Effusion", "threshold_Nodule", "positive_findings", "any_positive"]
    assert "threshold" not in header and header[10] == "calibrated"
    recs = [json.loads(ln) for ln in jl.read_text().splitlines()]
    assert [r["path"] for r in rows] == [r["path"] for r in recs]
    for row, rec in zip(rows, recs, strict=True):
        if rec["error"]:
            assert row["error"] and row["positive_Effusion"] == row["any_positive"] == row["positive_findings"] == ""
            assert row["threshold_Effusion"] == "0.4" and row["threshold_Nodule"] == ""
            continue
        assert float(row["p_Effusion"]) == rec["probabilities"]["Effusion"]
        assert row["positive_Effusion"] == str(int(rec["decisions"]["Effusion"]))
        assert row["positive_Nodule"] == "" and row["threshold_Nodule"] == "" and row["threshold_Effusion"] == "0.4"
        assert row["positive_findings"] == "|".join(rec["positive_findings"])
        assert row["any_positive"] == str(int(rec["any_positive"])) and row["label"] == rec["label"]


def test_without_an_operating_point_both_findings_are_decided(bundle, folder, tmp_path):
    ml = multilabel_copy(bundle, tmp_path / "b")
    out = tmp_path / "r.csv"
    main(["predict", "--model", str(ml), str(folder), "--out", str(out), "--format", "csv"])
    rows = [r for r in csv.DictReader(out.open(newline="")) if not r["error"]]
    for r in rows:
        for f in ("Effusion", "Nodule"):
            assert r[f"positive_{f}"] == str(int(float(r[f"p_{f}"]) >= 0.5)) and r[f"threshold_{f}"] == "0.5"
        assert r["positive_findings"] == "|".join(f for f in ("Effusion", "Nodule") if r[f"positive_{f}"] == "1")


def test_default_heatmap_explains_the_most_probable_finding(ml_heat, folder, tmp_path):
    out, heat = tmp_path / "r.jsonl", tmp_path / "h"
    assert main(["predict", "--model", str(ml_heat), str(folder), "--heatmaps", str(heat), "--out", str(out)]) == 1
    for r in (json.loads(ln) for ln in out.read_text().splitlines()):
        if r["error"]:
            assert r["heatmap"] is None and r["heatmap_finding"] is None
            continue
        assert r["heatmap_finding"] == max(r["probabilities"], key=r["probabilities"].get)
        assert r["heatmap"].endswith(".heatmap.png") and "heatmaps" not in r


def test_heatmap_per_finding_files_differ_and_are_never_overwritten(ml_heat, folder, tmp_path, capsys):
    out, heat = tmp_path / "r.csv", tmp_path / "h"
    args = ["predict", "--model", str(ml_heat), str(folder), "--heatmaps", str(heat), "--heatmap-finding", "all",
            "--out", str(out), "--format", "csv"]
    assert main(args) == 1
    assert "10 heatmap(s) for 5 image(s) in" in capsys.readouterr().err  # files counted, not images
    rows = list(csv.DictReader(out.open(newline="")))
    assert {"heatmap_Effusion", "heatmap_Nodule"} <= set(rows[0]) and "heatmap" not in rows[0]
    good = [r for r in rows if not r["error"]]
    assert len(good) == 5 and sorted(p.name for p in heat.iterdir()) == sorted(
        f"img{s}.{f}.heatmap.png" for s in range(5) for f in ("Effusion", "Nodule"))
    for r in good:
        a, b = read_image(r["heatmap_Effusion"]), read_image(r["heatmap_Nodule"])
        assert a.shape == b.shape and not np.array_equal(a, b)  # each finding's own head row
    capsys.readouterr()
    before = {p.name: p.read_bytes() for p in heat.iterdir()}
    assert main(args[:-4]) == 2 and "would overwrite img0.Effusion.heatmap.png" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in heat.iterdir()} == before
    # one finding by name, in JSONL: the record lists the file of the finding asked for
    jl = tmp_path / "one.jsonl"
    assert main(["predict", "--model", str(ml_heat), str(folder / "img0.png"), "--heatmaps", str(tmp_path / "h1"),
                 "--heatmap-finding", "Nodule", "--out", str(jl)]) == 0
    (rec,) = [json.loads(ln) for ln in jl.read_text().splitlines()]
    assert rec["heatmaps"] == {"Nodule": str(tmp_path / "h1" / "img0.Nodule.heatmap.png")}
    assert rec["heatmap_finding"] == "Nodule" and rec["heatmap"] == rec["heatmaps"]["Nodule"]


def test_a_finding_the_bundle_does_not_have_is_refused_before_any_work(ml_heat, folder, tmp_path, capsys):
    assert main(["predict", "--model", str(ml_heat), str(folder), "--heatmaps", str(tmp_path / "h"),
                 "--heatmap-finding", "Hernia"]) == 2
    err = capsys.readouterr().err
    assert "'Hernia'" in err and "['Effusion', 'Nodule']" in err and not (tmp_path / "h").exists()
    assert main(["predict", "--model", str(ml_heat), str(folder), "--heatmap-finding", "Nodule"]) == 2
    assert "--heatmap-finding needs --heatmaps" in capsys.readouterr().err
