"""The fast variants made and gated at export: int8 (QDQ, opset 13) on onnxruntime and OpenVINO, bf16 on OpenVINO."""
from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch", reason="export needs the train extra")
pytest.importorskip("onnxruntime", reason="the int8 variant needs onnxruntime")
openvino = pytest.importorskip("openvino", reason="the bf16 variant needs OpenVINO")

import onnx  # noqa: E402

from medge.edge import Model  # noqa: E402
from medge.edge.apps.cli import main  # noqa: E402
from medge.edge.errors import BundleError, ExportError, UsageError  # noqa: E402
from medge.edge.runtime.verify import open_bundle  # noqa: E402
from medge.export import variants as V  # noqa: E402


@pytest.fixture
def made(variant_bundle, tmp_path):
    """A copy of the variant bundle, and the data folder it was exported with."""
    bundle, ck = variant_bundle
    return shutil.copytree(bundle, tmp_path / "b"), ck.parent / "data"


def test_int8_is_a_per_channel_qdq_file_at_opset_13_gated_on_both_engines(variant_bundle):
    b = open_bundle(variant_bundle[0])
    entry = b.manifest["variants"]["int8"]
    model = onnx.load_from_string(b.variants["int8"].data)
    ops = {n.op_type for n in model.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops and entry["opset"] == 13
    assert max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) == 13
    assert entry["quantization"]["per_channel"] and "train split" in entry["quantization"]["calibration"]["split"]
    assert set(entry["gates"]) == {"onnxruntime", "openvino"}
    for gate in entry["gates"].values():
        assert gate["passed"] and gate["images"] == 24 and 0.0 <= gate["top1_agreement"] <= 1.0
        assert gate["logit_drift"]["p99"] <= gate["logit_drift"]["max"]
        v = gate["validation"]
        assert v["auc"]["low"] <= v["auc"]["auc"] <= v["auc"]["high"] and v["sensitivity"]["n"] == 12
        assert len(gate["golden"]["expected_logits"]) == b.manifest["golden"]["count"]
    bf16 = b.manifest["variants"]["bf16"]["gates"]["openvino"]
    if "BF16" in openvino.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"):
        assert bf16["passed"]
    else:  # a CPU without bf16 computes f32: what would be gated is not bf16, so it is not offered
        assert not bf16["passed"] and "computes f32 here" in bf16["reason"]


def test_the_fp32_model_and_its_outputs_are_untouched(made, tmp_path, bundle):
    folder, data = made
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    m = V.add_variants(folder, str(data), V.VariantConfig(variants=("int8",), max_flips=24, calibration_images=8,
                                                          timing_rounds=2), log=lambda *a: None)
    assert (folder / "model.onnx").read_bytes() == before["model.onnx"]
    assert (folder / "cam_head.npy").read_bytes() == before["cam_head.npy"]  # the bundle's other files are kept
    old = json.loads(before["model.json"])
    assert {k: v for k, v in m.items() if k != "variants"} == {k: v for k, v in old.items() if k != "variants"}
    assert set(m["variants"]) == {"bf16", "int8", "sha256"}  # bf16 kept, int8 replaced
    image = (np.arange(48 * 48).reshape(48, 48) % 241).astype(np.uint8)
    engines = [e for e in ("classic", "new", "onnxruntime", "openvino") if e in V.ENGINES]
    for engine in engines:  # fp32 probabilities bit-identical to the bundle before, on every engine here
        a = Model.load(variant_bundle_copy(before, tmp_path / engine), engine=engine).predict(image)[0]
        b = Model.load(folder, engine=engine, variant="fp32").predict(image)[0]
        assert a.probabilities == b.probabilities and a.logits == b.logits


def variant_bundle_copy(files: dict, folder):
    """The bundle as it was, without its variants section and files: what medge ran before variants."""
    folder.mkdir()
    m = json.loads(files["model.json"])
    m.pop("variants")
    for name, data in files.items():
        if name not in ("model.json", "model.int8.onnx"):
            (folder / name).write_bytes(data)
    (folder / "model.json").write_text(json.dumps(m))
    return folder


def _damaged(real):
    """quantize_int8 with the scale of the first convolution's weights negated: a wrong scale, the features wrong."""
    def quantize(onnx_bytes, calibration, work):
        data, info = real(onnx_bytes, calibration, work)
        model = onnx.load_from_string(data)
        inits = {i.name: i for i in model.graph.initializer}
        first = [n for n in model.graph.node if n.op_type == "DequantizeLinear" and n.input[0] in inits
                 and inits[n.input[0]].data_type == onnx.TensorProto.INT8][0]  # weights (int8), not a bias (int32)
        scale = onnx.numpy_helper.to_array(inits[first.input[1]])
        inits[first.input[1]].CopyFrom(onnx.numpy_helper.from_array(-scale, first.input[1]))
        return model.SerializeToString(), info
    return quantize


def test_a_damaged_variant_is_refused_with_its_reason_and_never_runs(made, monkeypatch, tmp_path):
    folder, data = made
    monkeypatch.setattr(V, "quantize_int8", _damaged(V.quantize_int8))
    m = V.add_variants(folder, str(data), V.VariantConfig(variants=("int8",), calibration_images=8, timing_rounds=2),
                       log=lambda *a: None)
    for gate in m["variants"]["int8"]["gates"].values():
        assert not gate["passed"] and gate["flips"] > 0
        assert "validation decisions flipped at the operating point" in gate["reason"]
        assert "golden" not in gate and gate["flipped"][0]["fp32"] != gate["flipped"][0]["variant"]
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    auto = Model.load(folder)
    assert auto.variant != "int8"
    assert any(t.variant == "int8" and "failed its gate" in t.error for t in auto.engine_choice.trials)
    with pytest.raises(BundleError, match="failed its gate on the onnxruntime engine"):
        Model.load(folder, engine="onnxruntime", variant="int8")


def test_the_gate_counts_flips_at_the_operating_point(variant_bundle):
    b = open_bundle(variant_bundle[0])
    op = b.operating_point
    rng = np.random.default_rng(0)
    reference = rng.normal(size=(40, 2))
    labels = rng.integers(0, 2, 40)
    same = V.gate(reference, reference.copy(), labels, b, [f"{i}.png" for i in range(40)], max_flips=0)
    assert same["passed"] and same["flips"] == 0 and same["logit_drift"]["max"] == 0 and same["top1_agreement"] == 1
    moved = reference.copy()
    decided = np.array(op.label_indices(reference))
    moved[:3] = reference[:3][:, ::-1] * 5 + np.where(decided[:3, None] == np.arange(2), -50, 50)  # three decisions swapped
    assert (np.array(op.label_indices(moved))[:3] != decided[:3]).all()
    for max_flips, passed in ((3, True), (2, False)):
        g = V.gate(reference, moved, labels, b, [f"{i}.png" for i in range(40)], max_flips)
        assert g["flips"] == 3 and g["passed"] is passed and [f["path"] for f in g["flipped"]] == ["0.png", "1.png", "2.png"]


def test_bad_requests_are_refused_before_any_work(variant_bundle, tmp_path, monkeypatch):
    with pytest.raises(UsageError, match="choose among"):
        V.parse_variants("int4")
    assert V.parse_variants("fp32, int8,int8") == ("int8",)
    monkeypatch.delitem(V.ENGINES, "openvino")
    with pytest.raises(ExportError, match=r"variants \['bf16'\] need one of the engines"):
        V.pairs_here(("bf16", "int8"))


def test_data_of_other_classes_is_refused_and_the_bundle_untouched(made, tmp_path):
    folder, data = made
    other = tmp_path / "other"
    for split in ("train", "val"):
        for old, new in (("disease", "cats"), ("normal", "dogs")):
            (other / split).mkdir(parents=True, exist_ok=True)
            (other / split / new).symlink_to(data / split / old)
    before = (folder / "model.json").read_bytes()
    with pytest.raises(UsageError, match=r"its classes \['cats', 'dogs'\] are not the bundle's"):
        V.add_variants(folder, str(other), V.VariantConfig(variants=("int8",)), log=lambda *a: None)
    assert (folder / "model.json").read_bytes() == before


def test_an_own_operating_point_that_does_not_calibrate_is_no_second_chance(variant_bundle):
    b = open_bundle(variant_bundle[0])
    own = dict(b.manifest["operating_point"])
    own["calibration"] = {**own["calibration"], "at_bound": None}
    assert V.own_unfit(own, b) is None
    own["calibration"] = {**own["calibration"], "at_bound": "high"}
    assert "stopped at the high end of its range" in V.own_unfit(own, b)


def test_quantize_command(made, capsys):
    folder, data = made
    assert main(["quantize", str(folder), "--data", str(data), "--variants", "int8", "--max-flips", "24",
                 "--quantize-images", "8"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["variants"]["int8"] == ["onnxruntime", "openvino"]
    assert main(["quantize", str(folder), "--data", str(data), "--max-flips", "-1"]) == 2


def test_a_variant_that_moves_probabilities_keeps_its_decisions_with_its_own_operating_point(variant_bundle):
    rng = np.random.default_rng(3)
    labels = np.repeat([0, 1], 60)
    reference = np.stack([np.zeros(120), rng.normal(size=120) + 1.5 * labels], axis=1)
    stretched = 3.0 * reference  # the same ranking, other probabilities: what a variant's scale error does
    paths = [f"{i}.png" for i in range(120)]
    b = open_bundle(variant_bundle[0])  # its operating point, as export chose it on these validation logits:
    section, op = V.own_operating_point(b, reference, labels, "these validation cases")
    b = dataclasses.replace(b, manifest={**b.manifest, "operating_point": section}, operating_point=op)
    at_bundle = V.gate(reference, stretched, labels, b, paths, max_flips=0)
    assert at_bundle["flips"] > 0 and not at_bundle["passed"]  # the precondition: the bundle's threshold moves it
    cfg = V.VariantConfig()
    again = V.regate_with_own_operating_point(at_bundle, reference, stretched, (None, labels, paths), b, cfg)
    assert again["passed"] and again["flips"] == 0 and again["at_bundle_operating_point"]["flips"] == at_bundle["flips"]
    own = again["operating_point"]
    assert own["criterion"] == b.manifest["operating_point"]["criterion"] and own["sha256"]
    assert own["temperature"] == pytest.approx(3 * b.manifest["operating_point"]["temperature"], rel=0.05) or \
        own["calibration"]["at_bound"]
    assert "with its own temperature" in V.summary({**again, "forward_ms": {"p50_ms": 1.0}, "speedup_vs_cv2_fp32": 2.0})
    shuffled = rng.permutation(stretched)  # a variant that lost the ranking gets no second chance
    refused = V.regate_with_own_operating_point(V.gate(reference, shuffled, labels, b, paths, 0), reference, shuffled,
                                                (None, labels, paths), b, cfg)
    assert not refused["passed"] and ("with its own temperature and threshold" in refused["reason"]
                                      or "no operating point of its own" in refused["reason"])


@pytest.fixture
def multilabel_made(multilabel_export_bundle, tmp_path):
    """A copy of the multi-label test bundle (three findings: Effusion and Nodule decided, Hernia not) and its index
    (a split column: 16 train rows, 48 val rows)."""
    bundle, _ = multilabel_export_bundle
    return shutil.copytree(bundle, tmp_path / "ml"), bundle.parent / "data" / "index.csv"


def test_a_multi_label_bundle_is_gated_finding_by_finding(multilabel_made, tmp_path, monkeypatch):
    folder, index = multilabel_made
    m = V.add_variants(folder, str(index), V.VariantConfig(max_flips=1000, calibration_images=16, timing_rounds=2),
                       log=lambda *a: None)
    entry = m["variants"]["int8"]
    assert entry["quantization"]["calibration"] == {"method": "MinMax", "images": 16,
                                                    "split": f"train rows of {index} (its split column)"}
    gates = {(v, e): g for v in ("int8", "bf16") for e, g in m["variants"][v]["gates"].items()}
    assert set(gates) == {("int8", "onnxruntime"), ("int8", "openvino"), ("bf16", "openvino")}
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    from medge.edge.inputs.index import read_index

    paths = [e.file for e in read_index(index, index.parent, "generic").entries if e.split == "val"]
    fp32 = Model.load(folder, engine="classic", variant="fp32").predict(paths)
    for (variant, engine), g in gates.items():
        assert g["images"] == 48 and g["decisions"] == 96  # Effusion and Nodule decided on 48 images; Hernia never
        assert set(g["findings"]) == {"Effusion", "Nodule", "Hernia"} and g["findings"]["Hernia"]["flips"] == 0
        assert g["flips"] == sum(f["flips"] for f in g["findings"].values())
        assert g["findings"]["Effusion"]["auc"]["low"] <= g["findings"]["Effusion"]["auc"]["auc"]
        if not g["passed"]:  # bf16 on a CPU without it
            continue
        # the oracle: the edge's own decisions, fp32 on cv2.dnn against the pair, image by image and finding by finding
        other = Model.load(folder, engine=engine, variant=variant).predict(paths)
        recount = sum(a.decisions[n] != b.decisions[n] for a, b in zip(fp32, other, strict=True)
                      for n in ("Effusion", "Nodule"))
        assert recount == g["flips"], (variant, engine)
        expected = {(p, n) for p, a, b in zip(paths, fp32, other, strict=True) for n in ("Effusion", "Nodule")
                    if a.decisions[n] != b.decisions[n]}
        named = {(f["path"], f["finding"]) for f in g["flipped"]}
        assert named <= expected and len(named) == min(10, len(expected))


def test_a_multi_label_variant_that_flips_decisions_is_refused_naming_the_findings(multilabel_made, monkeypatch):
    folder, index = multilabel_made
    monkeypatch.setattr(V, "quantize_int8", _damaged(V.quantize_int8))
    m = V.add_variants(folder, str(index), V.VariantConfig(variants=("int8",), calibration_images=16, timing_rounds=2),
                       log=lambda *a: None)
    for g in m["variants"]["int8"]["gates"].values():
        assert not g["passed"] and g["flips"] > 0 and "golden" not in g
        assert g["reason"].startswith(f"{g['flips']} of 96 validation decisions flipped at the findings' thresholds")
        named = [n for n, f in g["findings"].items() if f["flips"]]
        assert named and all(f"{n} {g['findings'][n]['flips']}" in g["reason"] for n in named)
    assert Model.load(folder).variant == "fp32"


def test_int8_of_a_multi_label_bundle_needs_training_images(multilabel_made, tmp_path):
    folder, index = multilabel_made
    whole = tmp_path / "whole.csv"  # no split column: every row a validation case, no training rows
    rows = index.read_text().splitlines()
    whole.write_text("\n".join(",".join(c for i, c in enumerate(r.split(",")) if i != 2) for r in rows) + "\n")
    before = (folder / "model.json").read_bytes()
    from medge.export.findings import IndexArgs

    given = IndexArgs(str(whole), str(index.parent), "generic")  # its images where they are
    with pytest.raises(UsageError, match=r"int8 is calibrated on training images, and this index gives none \(it is "
                                         r"used whole, all validation cases \(it has no split column\)\)"):
        V.add_variants(folder, given, V.VariantConfig(variants=("int8",)), log=lambda *a: None)
    with pytest.raises(ExportError, match="64 file.* named but not usable .*: no validation image was found under"):
        V.add_variants(folder, str(whole), V.VariantConfig(variants=("int8",)), log=lambda *a: None)  # images elsewhere
    assert (folder / "model.json").read_bytes() == before


def test_quantize_command_on_a_multi_label_bundle(multilabel_made, capsys):
    folder, index = multilabel_made
    assert main(["quantize", str(folder), "--data", str(index), "--variants", "bf16", "--max-flips", "96"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert set(out["variants"]) == {"bf16"}


def test_the_runs_own_index_is_split_again_and_checked_against_training(multilabel_made):
    """A bundle whose manifest names the run's own index (medge train --labels) and the hashes of its splits: the
    split rebuilt for the gate must be the one training held out, else nothing is made."""
    folder, index = multilabel_made
    manifest = json.loads((folder / "model.json").read_text())
    manifest["training"]["train_config"].update(labels=str(index), images=str(index.parent), labels_format="generic")
    manifest["training"]["data_source"] = {"split_sha256": {"val": "0" * 64}}  # not this index's val split
    (folder / "model.json").write_text(json.dumps(manifest))
    with pytest.raises(ExportError, match="is not the one training held out"):
        V.add_variants(folder, str(index), V.VariantConfig(variants=("bf16",)), log=lambda *a: None)
    # a copy of the run's index (the same bytes as training recorded) is the run's own: split again, checked
    from medge.train.checkpoint import file_sha256

    copy = index.parent.parent / f"copy-{folder.parent.name}.csv"
    copy.write_bytes(index.read_bytes())
    manifest["training"]["data_source"]["index_sha256"] = file_sha256(index)
    (folder / "model.json").write_text(json.dumps(manifest))
    from medge.export.findings import IndexArgs

    with pytest.raises(ExportError, match="is not the one training held out"):
        V.add_variants(folder, IndexArgs(str(copy), str(index.parent)), V.VariantConfig(variants=("bf16",)),
                       log=lambda *a: None)
    copy.unlink()


def test_quantize_reads_another_index_by_its_format(multilabel_made, tmp_path, capsys):
    """An index in NIH's layout (no split column: every row a validation case), its images elsewhere: bf16 is gated on
    it, int8 refused (no training rows), a class folder or a single-label bundle's index refused, all exit 2."""
    folder, index = multilabel_made
    from medge.edge.inputs.index import read_index

    entries = read_index(index, index.parent, "generic").entries
    names = ["Effusion", "Nodule", "Hernia"]
    rows = [f"{Path(e.file).name},{'|'.join(n for n, t in zip(names, e.targets, strict=True) if t == 1) or 'No Finding'},"
            f"{e.patient}" for e in entries]
    nih = tmp_path / "Data_Entry.csv"
    nih.write_text("Image Index,Finding Labels,Patient ID\n" + "\n".join(rows) + "\n")
    args = ["quantize", str(folder), "--data", str(nih), "--labels-format", "nih", "--images", str(index.parent)]
    assert main([*args, "--variants", "bf16", "--max-flips", "1000", "--max-probability-change", "1"]) == 0
    m = json.loads((folder / "model.json").read_text())
    assert m["variants"]["bf16"]["gated_on"]["images"].startswith(f"every row of {nih} (nih,")
    assert main([*args, "--variants", "int8"]) == 2
    assert "int8 is calibrated on training images, and this index gives none" in capsys.readouterr().err
    assert main(["quantize", str(folder), "--data", str(index.parent.parent / "nothing-here")]) == 2
    assert "not found" in capsys.readouterr().err
    assert main(["quantize", str(folder), "--data", str(index), "--variants", "fp32"]) == 2
    assert "nothing to make" in capsys.readouterr().err


def test_a_single_label_bundle_given_an_index_is_told_so(made, multilabel_made, capsys):
    folder, _ = made
    _, index = multilabel_made
    before = (folder / "model.json").read_bytes()
    assert main(["quantize", str(folder), "--data", str(index)]) == 2
    assert f"{folder} is a single-label bundle (disease, normal): give the data folder" in capsys.readouterr().err
    assert (folder / "model.json").read_bytes() == before


def test_a_variant_that_moves_probabilities_is_refused_though_its_decisions_hold():
    """A shift of every score above a low threshold flips no decision; the probabilities records show still moved."""
    record = {"passed": True, "reason": None, "flips": 0, "max_abs_probability": 0.84}
    refused = V.limit_probabilities(record, 0.2)
    assert not refused["passed"] and refused["max_probability_change"] == 0.2
    assert refused["reason"] == "a calibrated probability moved by 0.84 (at most 0.2 allowed)"
    assert V.limit_probabilities(record, 0.9)["passed"]
    both = V.limit_probabilities({**record, "passed": False, "reason": "3 of 80 validation decisions flipped"}, 0.2)
    assert both["reason"] == "3 of 80 validation decisions flipped; a calibrated probability moved by 0.84 (at most 0.2 allowed)"


def test_the_probability_limit_is_applied_and_recorded(made, multilabel_made):
    for folder, data in (made, multilabel_made):
        m = V.add_variants(folder, str(data), V.VariantConfig(variants=("int8",), max_flips=1000, max_probability_change=0.0,
                                                              calibration_images=8, timing_rounds=2), log=lambda *a: None)
        for g in m["variants"]["int8"]["gates"].values():
            assert g["max_abs_probability"] > 0 and g["max_probability_change"] == 0.0 and not g["passed"]
            assert "a calibrated probability moved by" in g["reason"] and "(at most 0 allowed)" in g["reason"]
        assert m["variants"]["int8"]["config"]["max_probability_change"] == 0.0
