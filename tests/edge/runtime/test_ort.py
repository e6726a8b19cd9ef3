"""medge's onnxruntime engine (the ort extra): the same bundle, hash, self-tests, guards and pipeline as cv2.dnn."""
import json
import shutil

import numpy as np
import pytest

from medge.edge.errors import InferenceError, MissingExtraError, ModelIntegrityError, SelfTestError
from medge.edge.model import Model
from medge.edge.runtime import dnn as runtime
from medge.edge.runtime import engines
from tests.conftest import xray_like

ORT = "onnxruntime"


@pytest.fixture
def copy(bundle, tmp_path):
    target = tmp_path / "b"
    shutil.copytree(bundle, target)
    return target


def test_without_the_extra_the_engine_names_what_to_install(monkeypatch):
    monkeypatch.delitem(engines.ENGINES, ORT, raising=False)  # as in the base install
    assert ORT in engines.engine_choices()  # offered, so that choosing it says what to install
    with pytest.raises(MissingExtraError, match=r"medge\[ort\]"):
        engines.check_choices(ORT, "cpu")
    assert ORT not in engines.engines_for("cpu")


def test_same_logits_as_cv2_dnn_through_the_same_guards(bundle):
    pytest.importorskip("onnxruntime")
    cv, ort = Model.load(bundle, engine="classic"), Model.load(bundle, engine=ORT)
    assert ort.engine == ORT and ort.engine_choice.reason == "asked for" and ort.self_test_max_abs <= 1e-3
    assert ort.sha256 == cv.sha256
    items = [xray_like(50 + i, 40, seed=i) for i in range(11)]
    got, want = ort.predict(items, batch_size=4), cv.predict(items, batch_size=4)  # the pipeline, on both engines
    np.testing.assert_allclose([p.logits for p in got], [p.logits for p in want], rtol=0, atol=1e-4)
    assert ort.budget is not None  # it ran pipelined
    with pytest.raises(InferenceError, match="must have shape"):  # the blob guard of edge.runtime
        ort.infer(np.zeros((1, 3, 32, 32), np.float32))
    with pytest.raises(InferenceError, match="NaN"):
        ort.infer(np.full((1, *ort.chw), np.nan, np.float32))


def test_sha256_and_golden_self_test_hold_for_onnxruntime(copy):
    pytest.importorskip("onnxruntime")
    manifest = json.loads((copy / "model.json").read_text())
    manifest["golden"]["expected_logits"][0][0] += 1.0
    (copy / "model.json").write_text(json.dumps(manifest))
    with pytest.raises(SelfTestError, match="onnxruntime engine here"):
        Model.load(copy, engine=ORT)
    data = bytearray((copy / "model.onnx").read_bytes())
    data[len(data) // 2] ^= 0x01
    (copy / "model.onnx").write_bytes(bytes(data))
    with pytest.raises(ModelIntegrityError, match="does not match the manifest"):
        Model.load(copy, engine=ORT)


def test_two_output_bundle_logits_by_name_and_heatmaps(heat_bundle):
    pytest.importorskip("onnxruntime")
    cv, ort = Model.load(heat_bundle[0], engine="classic"), Model.load(heat_bundle[0], engine=ORT)  # CAM self-test too
    net = ort.bundle.load_net(ORT)
    assert set(net.getUnconnectedOutLayersNames()) == {"logits", "features"}
    image = xray_like(100, 90, seed=3)
    a, b = ort.explain(image), cv.explain(image)
    assert a.class_index == b.class_index
    np.testing.assert_allclose(a.logits, b.logits, rtol=0, atol=1e-4)
    np.testing.assert_allclose(a.heatmap, b.heatmap, rtol=0, atol=1e-3)
    with pytest.raises(InferenceError, match="no output 'nothing'"):
        runtime.forward_outputs(net, np.zeros((1, *ort.chw), np.float32), ort.chw, ("nothing",))
