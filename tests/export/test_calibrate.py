"""Calibration and the operating point chosen at export (export.calibrate through medge export --data)."""
import json

import numpy as np
import pytest

from medge.edge import golive as ev
from medge.edge.apps.cli import main
from medge.edge.decision import section_sha256
from medge.edge.errors import ExportError
from medge.edge.model import Model
from medge.edge.runtime.bundle import read_manifest
from medge.export.calibrate import operating_point_section, resolve_positive
from medge.export.onnx_export import ExportConfig, export_bundle
from medge.train.synth import SynthConfig, generate

quiet = lambda *a: None


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("cal") / "d"
    generate(root, SynthConfig(n=120, size=64, seed=3))  # 24 val images, 12 per class
    return root


def _val_logits(bundle, data):
    model = Model.load(bundle)
    paths, labels = [], []
    for k, c in enumerate(model.classes):
        found = sorted(str(p) for p in (data / "val" / c).glob("*.png"))
        paths += found
        labels += [k] * len(found)
    return np.array([p.logits for p in model.predict(paths, workers=0)], np.float64), np.array(labels), model.classes


UNSUPPORTED = ExportConfig(unsupported=True)  # 12 positives support no 0.95: the point estimate, marked


def test_export_with_data_seals_a_temperature_and_a_threshold_that_hold_on_the_val_split(resnet_ckpt, data, tmp_path):
    m = export_bundle(str(resnet_ckpt), str(tmp_path / "b"), str(data), UNSUPPORTED, log=quiet)
    op = m["operating_point"]
    assert op == read_manifest(tmp_path / "b")["operating_point"] and op["sha256"] == section_sha256(op)
    assert (op["positive"], op["criterion"], op["validation"]["cases"]) == ("disease", "sensitivity=0.95", 24)
    g = op["guarantee"]
    assert (g["supported"], g["n"], g["needed"], g["target"], g["confidence"]) == (False, 12, 59, 0.95, 0.95)
    assert g["estimate"] == op["validation"]["sensitivity"]["value"] and g["bound"] < 0.95
    logits, labels, classes = _val_logits(tmp_path / "b", data)
    # temperature scaling lowers the validation NLL (as recorded) and keeps every argmax
    t = op["temperature"]
    assert ev.nll(logits, labels, t) <= ev.nll(logits, labels) + 1e-12
    assert op["calibration"]["nll_calibrated"] == pytest.approx(ev.nll(logits, labels, t), abs=1e-4)
    assert (np.argmax(logits / t, 1) == np.argmax(logits, 1)).all()
    # the threshold meets the criterion on the split it was chosen on, through the edge's own labels
    model = Model.load(tmp_path / "b")
    preds = model.predict([str(p) for c in classes for p in sorted((data / "val" / c).glob("*.png"))], workers=0)
    pos = labels == classes.index("disease")
    called = np.array([p.label == "disease" for p in preds])
    assert called[pos].mean() >= 0.95
    assert all(p.threshold == op["threshold"] and p.calibrated for p in preds)
    assert op["validation"]["sensitivity"]["value"] == called[pos].mean()


@pytest.mark.parametrize("criterion", ["specificity=0.9", "youden"])
def test_other_criteria(resnet_ckpt, data, tmp_path, criterion):
    m = export_bundle(str(resnet_ckpt), str(tmp_path / "b"), str(data),
                      ExportConfig(operating_point=criterion, unsupported=True), log=quiet)
    op = m["operating_point"]
    logits, labels, classes = _val_logits(tmp_path / "b", data)
    y, score = labels == classes.index("disease"), ev.softmax(logits, op["temperature"])[:, classes.index("disease")]
    # a val score; the bundle's sits below it, in the gap
    chosen = ev.choose_threshold(y, score, criterion, unsupported=True)["threshold"]
    assert op["threshold"] < chosen and not ((score >= op["threshold"]) ^ (score >= chosen)).any()
    if criterion == "specificity=0.9":
        assert ((score < op["threshold"])[~y]).mean() >= 0.9
        assert (op["guarantee"]["supported"], op["guarantee"]["n"], op["guarantee"]["needed"]) == (False, 12, 29)
    else:
        assert op["guarantee"] is None
        assert Model.load(tmp_path / "b").operating_point.guarantee.startswith("youden: no guarantee")


def test_too_few_positives_exit_2_naming_59_and_the_flag_stores_the_mark(resnet_ckpt, data, tmp_path, capsys):
    assert main(["export", str(resnet_ckpt), "--out", str(tmp_path / "a"), "--data", str(data)]) == 2
    err = capsys.readouterr().err
    assert "the validation split has 12 positives" in err and "needs 59 positives" in err and not (tmp_path / "a").exists()
    for alternative in ("a lower target (at most 0.779 with 12 positives)", "--confidence", "more validation cases",
                        "--operating-point-unsupported"):
        assert alternative in err
    assert main(["export", str(resnet_ckpt), "--out", str(tmp_path / "b"), "--data", str(data),
                 "--operating-point-unsupported"]) == 0
    assert "operating point: sensitivity=0.95 unsupported: 12 positives (59 needed" in capsys.readouterr().out
    op = read_manifest(tmp_path / "b")["operating_point"]
    assert op["guarantee"]["supported"] is False and op["guarantee"]["n"] == 12
    model_op = Model.load(tmp_path / "b").operating_point
    assert model_op.supported is False and model_op.guarantee.startswith("sensitivity=0.95 unsupported: 12 positives")
    assert main(["export", str(resnet_ckpt), "--out", str(tmp_path / "c"), "--data", str(data), "--confidence", "1"]) == 2
    assert "--confidence" in capsys.readouterr().err


def test_enough_positives_give_a_supported_operating_point(resnet_ckpt, tmp_path):
    """60 validation positives support 0.95 at 95%: the threshold sits at or below the lowest positive score."""
    big = tmp_path / "big"
    generate(big, SynthConfig(n=240, size=64, seed=5, val_fraction=0.5))  # 60 val images per class
    m = export_bundle(str(resnet_ckpt), str(tmp_path / "b"), str(big), log=quiet)
    g = m["operating_point"]["guarantee"]
    assert (g["supported"], g["n"], g["needed"]) == (True, 60, 59)
    assert g["bound"] == pytest.approx(ev.clopper_pearson_lower(round(g["estimate"] * 60), 60)) and g["bound"] >= 0.95
    text = Model.load(tmp_path / "b").operating_point.guarantee
    assert text == f"sensitivity >= 0.95 with 95% confidence (lower bound {g['bound']:.3f} on 60 positives)"


def test_none_without_data_or_when_asked_and_bad_criteria_refused_before_work(resnet_ckpt, data, tmp_path, capsys):
    assert "operating_point" not in export_bundle(str(resnet_ckpt), str(tmp_path / "a"), None, log=quiet)
    assert "operating_point" not in export_bundle(str(resnet_ckpt), str(tmp_path / "b"), str(data),
                                                  ExportConfig(operating_point="none"), log=quiet)
    assert main(["export", str(resnet_ckpt), "--out", str(tmp_path / "c"), "--data", str(data),
                 "--operating-point", "sensitivity=1.5"]) == 2
    assert "--operating-point" in capsys.readouterr().err and not (tmp_path / "c").exists()
    assert main(["export", str(resnet_ckpt), "--out", str(tmp_path / "d"), "--data", str(data), "--positive", "nodule"]) == 2
    assert "--positive 'nodule' is not a class of the model" in capsys.readouterr().err and not (tmp_path / "d").exists()


def test_too_few_validation_images_export_without_an_operating_point(resnet_ckpt, tmp_path):
    small = tmp_path / "small"
    generate(small, SynthConfig(n=40, size=64, seed=4))  # 8 val images
    lines = []
    m = export_bundle(str(resnet_ckpt), str(tmp_path / "b"), str(small), log=lines.append)
    assert "operating_point" not in m
    assert any("no calibration and no operating point" in ln and "at least 20" in ln for ln in lines)


def test_positive_class_default_and_section_errors():
    assert resolve_positive(["disease", "normal"], None)[0] == "disease"
    assert resolve_positive(["Normal", "pneumonia"], None)[0] == "pneumonia"
    assert resolve_positive(["a", "b"], None)[0] == "b"
    with pytest.raises(ExportError, match="at least 20"):
        operating_point_section(np.zeros((10, 2)), np.r_[np.zeros(5), np.ones(5)].astype(int), ["a", "b"], "youden",
                                None, "x")
    rng = np.random.default_rng(0)
    three = operating_point_section(rng.normal(size=(30, 3)), np.arange(30) % 3, ["a", "b", "c"], "youden", None, "x")
    assert three["threshold"] is None and three["positive"] is None and len(three["validation"]["scores"]) == 30
    json.dumps(three, allow_nan=False)


@pytest.mark.slow
def test_go_live_of_a_trained_model_validate_and_monitor(trained_run, tmp_path, capsys):
    """The whole loop on a model that learned the task: export's operating point, judged by medge validate on the
    held-out split; records of the same distribution are not flagged (exit 0), records of larger images are."""
    data, run, _ = trained_run
    bundle = tmp_path / "bundle"
    # 40 validation positives: 0.95 at 95% would need 59; 0.90 needs 29
    assert main(["export", str(run / "best.pt"), "--out", str(bundle), "--data", str(data),
                 "--operating-point", "sensitivity=0.9"]) == 0
    op = read_manifest(bundle)["operating_point"]
    assert op["guarantee"]["supported"] and op["guarantee"]["n"] == 40 and op["guarantee"]["bound"] >= 0.9
    assert op["validation"]["sensitivity"]["value"] >= op["guarantee"]["bound"]
    assert main(["validate", "--model", str(bundle), "--data", str(data / "test"), "--out", str(tmp_path / "v/r.json"),
                 "--require", "auc>=0.55"]) == 0
    report = json.loads((tmp_path / "v/r.json").read_text())
    assert report["decision"]["threshold"] == op["threshold"] and report["passed"] and report["counts"]["cases"] == 40

    def records(name, **kw):
        generate(tmp_path / name, SynthConfig(n=120, bits="mix", val_fraction=0.0, test_fraction=0.0, **kw))
        out = tmp_path / f"{name}.jsonl"
        assert main(["predict", "--model", str(bundle), str(tmp_path / name), "--out", str(out)]) == 0
        return out

    capsys.readouterr()
    same = main(["monitor", "--model", str(bundle), str(records("same", size=128, seed=21)),
                 "--out", str(tmp_path / "m/same.json")])
    larger = main(["monitor", "--model", str(bundle), str(records("larger", size=256, seed=22)),
                   "--out", str(tmp_path / "m/larger.json")])
    assert (same, larger) == (0, 1), capsys.readouterr().err
    reasons = json.loads((tmp_path / "m/larger.json").read_text())["reasons"]
    assert any("shorter side outside the training range" in r for r in reasons), reasons


def _bundle_with_section(bundle, folder, section):
    """A copy of the test bundle with this operating_point section in its manifest."""
    import shutil

    copy = shutil.copytree(bundle, folder)
    manifest = json.loads((copy / "model.json").read_text())
    manifest["operating_point"] = section
    (copy / "model.json").write_text(json.dumps(manifest, indent=2))
    return copy


def test_a_capped_temperature_is_sealed_loaded_and_shown_and_older_sections_still_load(bundle, tmp_path):
    from medge.edge.apps.serve.api import model_info
    from medge.edge.apps.serve.page import card_html
    from medge.edge.decision import seal
    from medge.edge.errors import ModelIntegrityError
    from medge.export.calibrate import summary_line

    classes = Model.load(bundle).classes
    rng = np.random.default_rng(31)
    d = np.r_[rng.uniform(1, 8, 12), -rng.uniform(1, 8, 12)]  # every validation case on its side: separable
    labels = np.r_[np.full(12, classes.index("disease")), np.full(12, classes.index("normal"))]
    logits = np.zeros((24, 2))
    logits[:, classes.index("disease")] = d
    section = operating_point_section(logits, labels, classes, "sensitivity=0.95", None, "simulated", unsupported=True)
    fit = ev.fit_temperature_bounded(logits, labels)
    assert section["calibration"]["at_bound"] == "low" and section["temperature"] == fit.temperature
    assert section["calibration"]["temperature_range"] == [fit.low, fit.high]
    note = f"validation classes separable or nearly: T capped at {fit.temperature:.3g}"
    assert note in summary_line(section)

    capped = Model.load(_bundle_with_section(bundle, tmp_path / "capped", section))
    info = model_info(capped)
    assert info["operating_point"]["temperature_at_bound"] == "low"
    assert note in card_html(info, "en") and "에서 제한" in card_html(info, "ko")

    # the bound is inside the seal: edited, the section is refused
    edited = {**section, "calibration": {**section["calibration"], "at_bound": None}}
    with pytest.raises(ModelIntegrityError, match="does not match its SHA-256"):
        Model.load(_bundle_with_section(bundle, tmp_path / "edited", edited))
    # a section sealed before the bound was recorded loads, and shows T without a note
    old = {k: v for k, v in section.items() if k != "sha256"}
    old["calibration"] = {k: v for k, v in old["calibration"].items() if k not in ("at_bound", "temperature_range")}
    before = Model.load(_bundle_with_section(bundle, tmp_path / "old", seal(old)))
    info = model_info(before)
    assert info["operating_point"]["temperature_at_bound"] is None and "capped" not in card_html(info, "en")
    assert before.operating_point == capped.operating_point and "capped" not in summary_line(old)


def test_class_folders_without_val_are_split_with_the_run_s_val_fraction_and_seed(tmp_path, monkeypatch):
    """Export calibrates on the val split training held out (the checkpoint's val_fraction and seed), not on
    discover's defaults; a run with the defaults (or a checkpoint recording none) gets exactly today's split."""
    import cv2

    from medge.export import calibrate
    from medge.train.data import discover

    for c in ("normal", "pneumonia"):
        (tmp_path / c).mkdir()
        for i in range(20):
            cv2.imwrite(str(tmp_path / c / f"{i:02d}.png"), np.full((8, 8), 10 * i, np.uint8))
    seen = []

    def split_logits(model, split, *args, **kwargs):
        seen.append(sorted(split.paths))
        return np.zeros((len(split), 2)), split.labels, 0

    class Ck(dict):
        preprocess = None

    monkeypatch.setattr(calibrate, "split_logits", split_logits)
    for train_config in ({"val_fraction": 0.4, "seed": 7}, {"val_fraction": 0.2, "seed": 0}):
        calibrate.validation_logits(None, str(tmp_path), Ck(train_config=train_config), 64, print)
    calibrate.validation_logits(None, str(tmp_path), Ck(), 64, print)

    def val(*settings):
        return sorted(discover(tmp_path, *settings)[1]["val"].paths)

    assert seen[0] == val(0.4, 7) != val() and len(seen[0]) == 16
    assert seen[1] == seen[2] == val()
