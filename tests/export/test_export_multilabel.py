"""medge export of a multi-label checkpoint, end to end: the bundle, its per-finding section, the edge's decisions."""
import json

import numpy as np
import pytest

from medge.edge.errors import UsageError
from medge.edge.findings import is_multilabel
from medge.edge.inputs.index import read_index
from medge.edge.model import Model
from medge.export.findings import IndexArgs, findings_section
from medge.export.onnx_export import ExportConfig, export_bundle
from tests.helpers import FINDINGS, make_checkpoint

quiet = lambda *a: None  # noqa: E731


def _val(bundle):
    """The val images of the test bundle's index and their targets (nan: uncertain, masked)."""
    index = read_index(bundle.parent / "data" / "index.csv", bundle.parent / "data", "generic")
    val = [e for e in index.entries if e.split == "val"]
    return [e.file for e in val], np.array([e.targets for e in val])


def test_the_bundle_decides_each_finding_by_its_own_threshold(multilabel_export_bundle):
    bundle, _ = multilabel_export_bundle
    model = Model.load(bundle)  # the golden self-test runs on the logits, as for any bundle
    manifest = json.loads((bundle / "model.json").read_text())
    assert is_multilabel(manifest) and manifest["classes"] == FINDINGS and model.operating_point is None
    assert "sigmoid" in manifest["model"]["output"] and manifest["parity"]["passed"]
    assert manifest["parity"]["inputs"].startswith("val images of ") and manifest["parity"]["inputs"].endswith("index.csv")
    rules = {r.name: r for r in model.findings.findings}
    assert rules["Effusion"].supported is True and rules["Effusion"].threshold is not None
    assert rules["Nodule"].supported is False and rules["Nodule"].threshold is not None  # 10 positives < 14 needed
    assert rules["Hernia"].threshold is None and rules["Hernia"].guarantee.startswith("unsupported: 3 positives")
    paths, targets = _val(bundle)
    predictions = model.predict(paths)
    assert all(p.ok and set(p.decisions) == set(FINDINGS) and p.decisions["Hernia"] is None for p in predictions)
    # the edge's calibrated probabilities are the section's validation scores, and decide as the section says
    section = {e["name"]: e for e in manifest["operating_point"]["findings"]}
    for k, name in enumerate(FINDINGS):
        known = ~np.isnan(targets[:, k])
        edge = np.array([p.probabilities[name] for p in predictions])[known]
        np.testing.assert_allclose(edge, section[name]["validation"]["scores"], rtol=0, atol=1e-5)
        if section[name]["threshold"] is not None:
            assert [p.decisions[name] for p, kn in zip(predictions, known, strict=True) if kn] == \
                   (edge >= section[name]["threshold"]).tolist()
    assert sum(len(s["validation"]["scores"]) for s in section.values()) + 2 == 3 * len(paths)  # 2 cells masked


def test_the_section_is_what_findings_section_makes_of_the_validation_logits(multilabel_export_bundle):
    bundle, _ = multilabel_export_bundle
    model, manifest = Model.load(bundle), json.loads((bundle / "model.json").read_text())
    paths, targets = _val(bundle)
    logits = np.array([p.logits for p in model.predict(paths)])
    op = manifest["operating_point"]
    again = findings_section(logits, targets, FINDINGS, "sensitivity=0.8", "again")
    for mine, theirs in zip(again["findings"], op["findings"], strict=True):
        assert mine["temperature"] == pytest.approx(theirs["temperature"], rel=1e-4)
        assert mine.get("unsupported") == theirs.get("unsupported")
    assert op["validation"]["cases"] == len(paths) == 48 and op["validation"]["macro_auc"]["findings"] == 3
    assert op["validation"]["source"].startswith("val split of ") and "the index given" in op["validation"]["source"]


def test_heatmaps_explain_each_finding(multilabel_export_bundle):
    bundle, _ = multilabel_export_bundle
    model = Model.load(bundle)
    paths, _ = _val(bundle)
    assert model.explain_method == "cam"
    for k in range(len(FINDINGS)):
        explanation = model.explain(paths[0], class_index=k)
        assert explanation.class_index == k and explanation.heatmap.shape == (32, 32)


def test_the_run_s_own_index_is_split_again_and_its_log_has_a_line_per_finding(multilabel_export_bundle, tmp_path):
    torch = pytest.importorskip("torch")
    from medge.train.checkpoint import save_checkpoint
    from medge.train.config import TrainConfig

    bundle, ckpt = multilabel_export_bundle
    payload = {k: v for k, v in torch.load(ckpt, weights_only=True).items() if k not in ("format", "version")}
    index = bundle.parent / "data" / "index.csv"
    payload["train_config"] = TrainConfig(arch="resnet18", labels=str(index), labels_format="generic").to_dict()
    save_checkpoint(tmp_path / "run.pt", payload)
    lines = []
    manifest = export_bundle(str(tmp_path / "run.pt"), str(tmp_path / "b"), cfg=ExportConfig(max_images=4,
                             operating_point="sensitivity=0.8"), log=lines.append)
    assert "the run's own index, split again as in training" in manifest["operating_point"]["validation"]["source"]
    assert [ln.split(":")[0] for ln in lines if ln.startswith("finding ")] == [f"finding {n!r}" for n in FINDINGS]
    assert any(ln.startswith("note: Nodule: too few validation cases") for ln in lines)
    assert any("validation: 48 images of 48 patients" in ln for ln in lines)


def test_a_positive_class_is_refused_for_a_multi_label_model(multilabel_export_bundle, tmp_path):
    bundle, ckpt = multilabel_export_bundle
    with pytest.raises(UsageError, match="a multi-label model has no positive class"):
        export_bundle(str(ckpt), str(tmp_path / "b"), cfg=ExportConfig(positive="Effusion"), log=quiet)


def test_variants_a_multi_label_export_cannot_make_are_said_or_refused(multilabel_export_bundle, tmp_path):
    """No index: no gate (refused when asked for, a note with --variants auto); an index without a split column: no
    training images to calibrate int8 on."""
    from medge.export.variants import VariantConfig

    bundle, ckpt = multilabel_export_bundle
    int8 = VariantConfig(variants=("int8",))
    with pytest.raises(UsageError, match="gated on its validation index and none is known"):
        export_bundle(str(ckpt), str(tmp_path / "b"), log=quiet, variants=int8)
    lines = []
    export_bundle(str(ckpt), str(tmp_path / "b"), cfg=ExportConfig(max_images=4), log=lines.append, variants=int8,
                  optional_variants=True)
    assert "note: no fast variants: no validation index to gate them on" in lines
    assert "variants" not in json.loads((tmp_path / "b" / "model.json").read_text())
    whole = tmp_path / "whole.csv"  # the test index without its split column: all validation cases
    rows = (bundle.parent / "data" / "index.csv").read_text().splitlines()
    whole.write_text("\n".join(",".join(c for i, c in enumerate(r.split(",")) if i != 2) for r in rows) + "\n")
    index = IndexArgs(str(whole), str(bundle.parent / "data"), "generic")
    with pytest.raises(UsageError, match="int8 is calibrated on training images and every row of .* gives none"):
        export_bundle(str(ckpt), str(tmp_path / "c"), log=quiet, variants=int8, index=index)


def test_an_index_is_refused_for_a_single_label_checkpoint(resnet_ckpt, tmp_path):
    with pytest.raises(UsageError, match="validate a multi-label checkpoint; this one is single-label"):
        export_bundle(str(resnet_ckpt), str(tmp_path / "b"), log=quiet, index=IndexArgs(labels="index.csv"))
    with pytest.raises(UsageError, match="validate a multi-label checkpoint; this one is single-label"):
        export_bundle(str(resnet_ckpt), str(tmp_path / "b"), log=quiet, index=IndexArgs(images=str(tmp_path)))


def test_a_multi_label_checkpoint_without_an_index_is_exported_undecided_at_half(tmp_path):
    lines = []
    ckpt = make_checkpoint(tmp_path / "ck.pt", findings=FINDINGS)
    manifest = export_bundle(str(ckpt), str(tmp_path / "b"), cfg=ExportConfig(max_images=4), log=lines.append)
    assert manifest["task"] == "multilabel" and "operating_point" not in manifest
    assert any("each finding decided at 0.5 on the uncalibrated sigmoid" in ln for ln in lines)
    assert Model.load(tmp_path / "b").findings.thresholds == dict.fromkeys(FINDINGS, 0.5)


def test_medge_export_takes_a_validation_index(multilabel_export_bundle, tmp_path, capsys):
    from medge.edge.apps.cli import main

    bundle, ckpt = multilabel_export_bundle
    index, out = bundle.parent / "data" / "index.csv", str(tmp_path / "b")
    assert main(["export", str(ckpt), "--out", out, "--uncertain", "ones"]) == 2
    assert "--labels-format and --uncertain go with --labels INDEX.csv" in capsys.readouterr().err
    assert main(["export", str(ckpt), "--out", out, "--images", str(index.parent), "--data", str(index.parent)]) == 2
    assert "--images and --data: give one" in capsys.readouterr().err
    assert main(["export", str(ckpt), "--out", out, "--labels", str(index), "--data", str(index.parent)]) == 2
    assert "--labels and --data: give one" in capsys.readouterr().err
    assert main(["export", str(ckpt), "--out", out, "--labels", str(index), "--labels-format", "generic",
                 "--operating-point", "youden", "--max-images", "4"]) == 0
    lines = capsys.readouterr().out.splitlines()
    thresholds = json.loads(next(ln for ln in lines if ln.startswith('{"task"')))["thresholds"]
    assert list(thresholds) == FINDINGS and thresholds["Hernia"] is None and thresholds["Effusion"] is not None
    assert json.loads(lines[-1])["bundle"] == out


def test_after_the_data_has_moved_export_says_what_to_give_and_images_alone_find_them(multilabel_export_bundle,
                                                                                      tmp_path):
    """The run's index and images moved: the errors name --images DIR (images) and --labels INDEX.csv --images DIR;
    --images alone reads the run's own index from its images' new folder, split again as in training."""
    import shutil

    from medge.edge.errors import DataError
    from medge.export.findings import IndexArgs, index_source, validation_split

    bundle, _ = multilabel_export_bundle
    data = tmp_path / "data"
    shutil.copytree(bundle.parent / "data", data)
    run = {"labels": str(data / "index.csv"), "images": str(tmp_path / "gone"), "labels_format": "generic"}
    with pytest.raises(DataError, match=r"images folder not found \(for the run's index .*give --images DIR, where its "
                                        r"images are now .* or --labels INDEX.csv --images DIR"):
        validation_split(index_source(run, None), FINDINGS, quiet)
    lines = []
    moved = validation_split(index_source(run, IndexArgs(images=str(data))), FINDINGS, lines.append)
    assert len(moved.split) == 48 and "split again as in training" in moved.source  # the run's val split, as before
    with pytest.raises(DataError, match=r"the run's index not found .*give --labels INDEX.csv --images DIR"):
        validation_split(index_source({**run, "labels": str(tmp_path / "old.csv")}, None), FINDINGS, quiet)
    with pytest.raises(DataError, match=r"images folder not found .*give --labels INDEX.csv --images DIR"):
        validation_split(index_source({**run, "labels": str(tmp_path / "old.csv")},  # another index than the run's
                                      IndexArgs(str(data / "index.csv"), str(tmp_path / "gone"))), FINDINGS,
                         quiet)


def test_export_s_index_options_are_the_index_reader_s():
    """--labels-format and --uncertain offer exactly what edge.inputs.index reads (one list, not a copy)."""
    import argparse

    from medge.edge.inputs.index import FORMATS, UNCERTAIN
    from medge.export.cli import add_parser

    parser = add_parser(argparse.ArgumentParser().add_subparsers())
    choices = {a.dest: a.choices for a in parser._actions}
    assert choices["labels_format"] is FORMATS and choices["uncertain"] is UNCERTAIN


def test_variants_auto_makes_them_on_the_run_s_own_index(multilabel_export_bundle, tmp_path):
    """medge export's default --variants auto, without --data or --labels: the run's own index gates the variants and
    its training split calibrates int8."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("onnxruntime")
    pytest.importorskip("openvino")
    from medge.edge.apps.cli import main
    from medge.train.checkpoint import save_checkpoint
    from medge.train.config import TrainConfig

    bundle, ckpt = multilabel_export_bundle
    payload = {k: v for k, v in torch.load(ckpt, weights_only=True).items() if k not in ("format", "version")}
    index = bundle.parent / "data" / "index.csv"
    payload["train_config"] = TrainConfig(arch="resnet18", labels=str(index), labels_format="generic").to_dict()
    save_checkpoint(tmp_path / "run.pt", payload)
    assert main(["export", str(tmp_path / "run.pt"), "--out", str(tmp_path / "b"), "--max-images", "4",
                 "--operating-point", "sensitivity=0.8", "--max-flips", "1000", "--max-probability-change", "1"]) == 0
    variants = json.loads((tmp_path / "b" / "model.json").read_text())["variants"]
    assert set(variants) == {"int8", "bf16", "sha256"}
    assert variants["int8"]["quantization"]["calibration"]["split"].startswith(f"train split of {index} (the run's own")
    assert variants["int8"]["gated_on"]["images"].startswith(f"val split of {index}")
