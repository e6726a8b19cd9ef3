"""The bundle's calibration and operating point on the edge (edge.decision, Model.predict)."""
import json

import numpy as np
import pytest

from medge.edge.decision import OperatingPoint, label_indices, seal, section_sha256
from medge.edge.errors import BundleError, ModelIntegrityError
from medge.edge.model import Model
from medge.edge.numeric import softmax
from tests.edge.calibrated import calibrated_copy, labelled, synth_split


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return synth_split(tmp_path_factory.mktemp("synth") / "d")


@pytest.fixture(scope="module")
def calibrated(bundle, data, tmp_path_factory):
    return calibrated_copy(bundle, tmp_path_factory.mktemp("cal") / "b", data[0])


def _manifest(path):
    return json.loads((path / "model.json").read_text())


def test_section_is_sealed_and_read(calibrated):
    op = _manifest(calibrated)["operating_point"]
    assert op["sha256"] == section_sha256(op)
    m = Model.load(calibrated)
    g = op["guarantee"]  # 30 validation positives: the point estimate, marked unsupported (calibrated_copy)
    text = (f"sensitivity=0.95 unsupported: 30 positives (59 needed at 95% confidence); validation sensitivity "
            f"{g['estimate']:.3f}, lower bound {g['bound']:.3f}")
    assert m.operating_point == OperatingPoint(tuple(m.classes), op["temperature"], "disease", op["threshold"],
                                               "sensitivity=0.95", text, False)
    assert m.operating_point.positive_index == 0


def test_a_bundle_from_before_the_guarantee_loads_and_says_none_was_recorded(calibrated, tmp_path):
    import shutil

    copy = shutil.copytree(calibrated, tmp_path / "b")
    m = _manifest(copy)
    section = {k: v for k, v in m["operating_point"].items() if k not in ("guarantee", "sha256")}
    m["operating_point"] = seal(section)  # as medge wrote it before issue 31
    (copy / "model.json").write_text(json.dumps(m))
    op = Model.load(copy).operating_point
    assert op.guarantee == "sensitivity=0.95: no guarantee recorded (exported before medge recorded one)"
    assert op.supported is None and op.threshold == section["threshold"]


@pytest.mark.parametrize("edit", [{"threshold": 0.01}, {"temperature": 9.0}, {"positive": "normal"}])
def test_an_edited_section_is_refused(calibrated, tmp_path, edit):
    import shutil

    copy = shutil.copytree(calibrated, tmp_path / "b")
    m = _manifest(copy)
    m["operating_point"].update(edit)
    (copy / "model.json").write_text(json.dumps(m))
    with pytest.raises(ModelIntegrityError, match="operating_point section .* does not match its SHA-256"):
        Model.load(copy)


def test_unsealed_or_unusable_sections_are_refused(calibrated, tmp_path):
    import shutil

    copy = shutil.copytree(calibrated, tmp_path / "b")
    m = _manifest(copy)
    m["operating_point"].pop("sha256")
    (copy / "model.json").write_text(json.dumps(m))
    with pytest.raises(BundleError, match="not sealed"):
        Model.load(copy)
    m["operating_point"] = seal({**m["operating_point"], "temperature": -1.0})
    (copy / "model.json").write_text(json.dumps(m))
    with pytest.raises(BundleError, match="temperature -1.0 is not a positive number"):
        Model.load(copy)
    m["operating_point"] = seal({**m["operating_point"], "temperature": 1.0, "positive": "effusion"})
    (copy / "model.json").write_text(json.dumps(m))
    with pytest.raises(BundleError, match="needs two classes and a positive one"):
        Model.load(copy)


def test_predictions_are_calibrated_and_labelled_by_the_threshold(bundle, calibrated, data):
    paths, _ = labelled(data[1], ["disease", "normal"])
    raw = Model.load(bundle).predict(paths)
    cal = Model.load(calibrated)
    op = cal.operating_point
    preds = cal.predict(paths)
    assert op.temperature != 1.0
    flipped = 0
    for r, p in zip(raw, preds, strict=True):
        assert p.logits == r.logits  # the raw logits, unchanged by calibration
        z = np.asarray([p.logits])
        assert list(p.probabilities.values()) == softmax(z, op.temperature)[0].tolist()
        assert (p.label == "disease") == (p.probabilities["disease"] >= op.threshold)
        rec = p.to_record(cal.sha256)
        assert rec["threshold"] == op.threshold and rec["calibrated"] is True and rec["logits"] == p.logits
        flipped += p.label != r.label
        assert r.to_record("x")["threshold"] is None and r.to_record("x")["calibrated"] is False
    # the threshold for sensitivity 0.95 is not argmax's 0.5: some labels differ from the uncalibrated bundle's
    assert flipped > 0


def test_predict_csv_and_jsonl_say_threshold_and_calibrated(calibrated, data, tmp_path):
    import csv

    from medge.edge.apps.cli import main

    op = Model.load(calibrated).operating_point
    assert main(["predict", "--model", str(calibrated), str(data[1]), "--out", str(tmp_path / "r.csv"), "--format", "csv"]) == 0
    assert main(["predict", "--model", str(calibrated), str(data[1]), "--out", str(tmp_path / "r.jsonl")]) == 0
    rows = list(csv.DictReader((tmp_path / "r.csv").open()))
    recs = [json.loads(ln) for ln in (tmp_path / "r.jsonl").read_text().splitlines()]
    assert len(rows) == len(recs) > 0
    for row, rec in zip(rows, recs, strict=True):
        assert float(row["threshold"]) == rec["threshold"] == op.threshold and row["calibrated"] == "True"
        assert row["label"] == rec["label"] and float(row["p_disease"]) == rec["probabilities"]["disease"]


def test_argmax_unchanged_by_temperature_without_threshold():
    z = np.random.default_rng(0).normal(0, 3, (200, 3))
    op = OperatingPoint(("a", "b", "c"), temperature=2.5)
    assert op.label_indices(z) == label_indices(None, z) == np.argmax(z, 1).tolist()
    np.testing.assert_allclose(op.probabilities(z).sum(1), 1.0)


def test_heatmaps_explain_the_label_the_threshold_gives(heat_bundle, data, tmp_path):
    b = calibrated_copy(heat_bundle[0], tmp_path / "h", data[0], criterion="sensitivity=0.99")
    m = Model.load(b)
    paths, _ = labelled(data[1], m.classes)
    for p in m.predict(paths, heatmaps=True):
        assert p.explanation.class_index == m.classes.index(p.label)
    one = m.explain(paths[0])
    assert one.class_index == m.classes.index(m.predict(paths[0])[0].label)
