"""medge demo --multilabel, run once (the quick configuration) for the module: every stage, splits by patient,
a threshold per finding, the held-out validation per finding, the SR read back, and the file list."""
import contextlib
import io
import json
from pathlib import Path

import pytest

from medge.edge.apps.cli import main


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """(run folder, what the demo printed on stdout) of one quick multi-label demo."""
    out = tmp_path_factory.mktemp("demo") / "ml"
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        rc = main(["demo", "--multilabel", "--quick", "--out", str(out), "--device", "cpu"])
    assert rc == 0, printed.getvalue()[-3000:]
    return out, printed.getvalue()


def test_every_stage_runs_and_the_files_listed_are_the_folders(demo):
    out, text = demo
    for k in range(1, 7):
        assert f"[{k}/6]" in text and f"[{k}/6] " in text
    summary = json.loads((out / "summary.json").read_text())
    listed = [ln.split()[0] for ln in text.split("\nfiles:\n")[1].splitlines()]
    assert listed == list(summary["paths"])
    assert {Path(p).name for p in summary["paths"].values()} == {p.name for p in out.iterdir()}


def test_no_patient_is_in_two_splits_and_the_test_patients_are_the_ones_validated(demo):
    out, _ = demo
    from medge.benchmarks.demo_multilabel import Data, splits_of

    data = Data(out / "data" / "Data_Entry.csv", out / "data" / "images")
    splits = splits_of(data)
    patients = {name: set(s.patients) for name, s in splits.items()}
    assert not patients["train"] & patients["val"] and not patients["train"] & patients["test"]
    assert not patients["val"] & patients["test"]
    summary = json.loads((out / "summary.json").read_text())
    assert {k: v["patients"] for k, v in summary["splits"].items()} == {k: len(v) for k, v in patients.items()}
    records = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert sorted(r["path"] for r in records) == sorted(splits["test"].paths)
    assert json.loads((out / "validation.json").read_text())["counts"]["cases"] == len(splits["test"])


def test_each_finding_has_its_threshold_record_and_figures(demo):
    out, _ = demo
    manifest = json.loads((out / "bundle" / "model.json").read_text())
    assert manifest["task"] == "multilabel" and len(manifest["classes"]) == 5
    section = manifest["operating_point"]
    assert [f["name"] for f in section["findings"]] == manifest["classes"]
    records = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    for r in records:
        assert set(r["probabilities"]) == set(manifest["classes"]) == set(r["decisions"])
        assert r["positive_findings"] == [k for k in manifest["classes"] if r["decisions"][k]]
        assert r["any_positive"] == bool(r["positive_findings"])
        undecided = [k for k in manifest["classes"] if r["decisions"][k] is None]
        assert r["label"] == ("|".join(r["positive_findings"]) or "No Finding" + (
            f" (not decided: {', '.join(undecided)})" if undecided else ""))
    validation = json.loads((out / "validation.json").read_text())
    assert [f["name"] for f in validation["findings"]] == manifest["classes"]
    assert "macro_auc" in validation["summary"] and "micro_auc" in validation["summary"]


def test_the_sr_holds_a_measurement_group_per_finding(demo):
    out, text = demo
    hd = pytest.importorskip("highdicom")
    import pydicom
    from pydicom.sr.coding import Code

    from medge.edge.apps.node import report

    (sr_file,) = sorted((out / "sr").glob("*.sr.dcm"))
    sr = hd.sr.Comprehensive3DSR.from_dataset(pydicom.dcmread(sr_file))
    groups = sr.content.get_image_measurement_groups()
    names = json.loads((out / "bundle" / "model.json").read_text())["classes"]
    codes = report.class_codes(names)  # SNOMED CT where medge's table has the finding, else 99MEDGE (said in the log)
    assert [(g.finding_type.value, g.finding_type.scheme_designator, g.finding_type.meaning) for g in groups] == list(
        codes)
    for group in groups:
        (probability,) = group.get_measurements(name=Code(*report.PROBABILITY))
        assert 0 <= probability.value <= 1
    private = report.private_classes(names, codes)
    assert ("coded in medge's private scheme 99MEDGE" in text) == bool(private)


def test_multilabel_refuses_a_data_folder(tmp_path, capsys):
    assert main(["demo", "--multilabel", "--data", str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    assert "--multilabel makes its own" in capsys.readouterr().err
