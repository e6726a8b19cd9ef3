import json
import shutil
import threading

import cv2
import numpy as np
import pytest

from medge.edge.errors import BundleError, InferenceError, ModelIntegrityError, SelfTestError
from medge.edge.inputs.image import read_image, write_image
from medge.edge.model import Model
from medge.edge.preprocess import preprocess
from medge.edge.runtime.dnn import NET_TYPE, forward, load_net
from tests.conftest import xray_like


@pytest.fixture
def copy(bundle, tmp_path):
    target = tmp_path / "b"
    shutil.copytree(bundle, target)
    return target


def _images(tmp_path, n=6):
    paths = []
    for i in range(n):
        p = tmp_path / f"img{i}.png"
        write_image(p, xray_like(60 + 7 * i, 50, seed=i, bits=16 if i % 2 else 8))
        paths.append(str(p))
    return paths


def test_load_runs_the_self_test(bundle):
    m = Model.load(bundle)
    assert m.self_test_max_abs is not None and m.self_test_max_abs <= 1e-3
    assert m.classes == ["disease", "normal"] and m.chw == (1, 32, 32) and len(m.sha256) == 64


def test_predict_files_arrays_and_mixed(bundle, tmp_path):
    m = Model.load(bundle)
    paths = _images(tmp_path)
    preds = m.predict(paths)
    assert [p.path for p in preds] == paths and all(p.ok for p in preds)
    for p in preds:
        assert p.label in m.classes and abs(sum(p.probabilities.values()) - 1) < 1e-9
        assert set(p.timings_ms) == {"read", "preprocess", "inference"}
        assert p.label == max(p.probabilities, key=p.probabilities.get)
    arr = xray_like(60, 50, seed=0)
    from_array = m.predict(arr)[0]
    assert from_array.path is None and from_array.logits == preds[0].logits
    mixed = m.predict([paths[1], arr, paths[2]])
    assert [p.logits for p in mixed] == [preds[1].logits, from_array.logits, preds[2].logits]


def test_batched_equals_one_by_one_and_sequential(bundle, tmp_path):
    m = Model.load(bundle)
    paths = _images(tmp_path, 11)
    batched = m.predict(paths, batch_size=4, workers=2)
    single = m.predict(paths, batch_size=1, workers=0)
    assert [p.logits for p in batched] == [p.logits for p in single]
    # and both equal a plain read -> preprocess -> forward
    net = load_net((bundle / "model.onnx").read_bytes())
    for path, p in zip(paths, single, strict=True):
        from medge.edge.inputs.image import read_image

        net.setInput(preprocess(read_image(path), m.preprocess_config)[None])
        np.testing.assert_array_equal(np.float32(p.logits), net.forward("logits")[0])  # heatmap bundles have 2 outputs


def test_every_bad_input_is_reported_in_order_and_the_rest_processed(bundle, tmp_path):
    m = Model.load(bundle)
    good = _images(tmp_path, 3)
    (tmp_path / "dir.png").mkdir()
    (tmp_path / "empty.png").write_bytes(b"")
    png = (tmp_path / "img0.png").read_bytes()
    (tmp_path / "trunc.png").write_bytes(png[: len(png) // 2])
    jpg = cv2.imencode(".jpg", xray_like(64, 64))[1].tobytes()
    (tmp_path / "trunc.jpg").write_bytes(jpg[: len(jpg) // 2])
    (tmp_path / "doc.gif").write_bytes(b"GIF89a" + bytes(64))
    korean = tmp_path / "환자.png"
    write_image(korean, xray_like(40, 40))
    inputs = [good[0], str(tmp_path / "missing.png"), str(tmp_path / "dir.png"), good[1], str(tmp_path / "empty.png"),
              str(tmp_path / "trunc.png"), str(tmp_path / "trunc.jpg"), str(tmp_path / "doc.gif"), str(korean), good[2],
              np.zeros((3, 3, 2), np.uint8), 42]
    preds = m.predict(inputs, batch_size=3, workers=2, max_pixels=100_000)
    assert len(preds) == len(inputs)
    reasons = [p.error for p in preds]
    assert [r is None for r in reasons] == [True, False, False, True, False, False, False, False, True, True, False, False]
    for r, expected in zip([reasons[i] for i in (1, 2, 4, 5, 6, 7, 10, 11)],
                           ["file not found", "is a folder", "empty file", "truncated PNG", "truncated JPEG",
                            "it is a GIF image", "expected a gray, BGR or BGRA", "unsupported input int"], strict=True):
        assert expected in r
    big = tmp_path / "big.png"
    write_image(big, np.zeros((400, 300), np.uint8))
    assert "over the limit" in m.predict([str(big)], max_pixels=100_000)[0].error


def test_modified_byte_is_refused(copy):
    data = bytearray((copy / "model.onnx").read_bytes())
    data[len(data) // 2] ^= 0x01
    (copy / "model.onnx").write_bytes(bytes(data))
    with pytest.raises(ModelIntegrityError, match="does not match the manifest"):
        Model.load(copy)


def test_half_copied_model_is_refused(copy):
    data = (copy / "model.onnx").read_bytes()
    (copy / "model.onnx").write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelIntegrityError):
        Model.load(copy)


@pytest.mark.parametrize(
    "doctor, match",
    [
        (lambda d: (d / "model.json").unlink(), "no model.json manifest"),
        (lambda d: (d / "model.onnx").unlink(), "model file missing"),
        (lambda d: (d / "model.json").write_text("{not json"), "not valid JSON"),
        (lambda d: _edit(d, format_version=99), "format version 99 is not supported"),
        (lambda d: _edit(d, format="something-else"), "not a medge bundle manifest"),
        (lambda d: _edit(d, golden=None, drop="golden"), r"manifest lacks \['golden'\]"),
    ],
)
def test_bad_bundles_give_clear_errors(copy, doctor, match):
    doctor(copy)
    with pytest.raises(BundleError, match=match):
        Model.load(copy)


def _edit(d, drop=None, **changes):
    m = json.loads((d / "model.json").read_text())
    m.update(changes)
    if drop:
        del m[drop]
    (d / "model.json").write_text(json.dumps(m))


def test_self_test_failure(copy):
    m = json.loads((copy / "model.json").read_text())
    m["golden"]["expected_logits"][0][0] += 0.01
    (copy / "model.json").write_text(json.dumps(m))
    with pytest.raises(SelfTestError, match="golden self-test failed: max \\|logit difference\\| 0.01"):
        Model.load(copy)
    assert Model.load(copy, self_test=False).self_test_max_abs is None


def test_missing_bundle_folder(tmp_path):
    with pytest.raises(BundleError, match="bundle folder not found"):
        Model.load(tmp_path / "nothing")


@pytest.mark.parametrize(
    "blob, match",
    [
        (np.zeros((0, 1, 32, 32), np.float32), "batch size 0"),
        (np.zeros((1, 3, 32, 32), np.float32), r"shape \(N, 1, 32, 32\)"),
        (np.zeros((1, 32, 32, 1), np.float32), r"shape \(N, 1, 32, 32\)"),
        (np.full((1, 1, 32, 32), np.nan, np.float32), "NaN"),
        (np.zeros((1, 1, 32, 32), np.float64), "float32"),
    ],
    ids=["batch0", "channels", "nhwc", "nan", "float64"],
)
def test_blob_hazards_are_refused_before_opencv(bundle, blob, match):
    m = Model.load(bundle)
    with pytest.raises(InferenceError, match=match):
        forward(m.thread_net(), blob, m.chw, 2)
    if len(blob):
        with pytest.raises(InferenceError, match=match):
            m.infer(blob)
    else:
        assert m.infer(blob).shape == (0, 2)  # nothing to do: OpenCV is not called


def test_empty_net_from_opencv_is_an_error(bundle, monkeypatch):
    monkeypatch.setattr(cv2.dnn, "readNetFromONNX", lambda *a: NET_TYPE())  # what ENGINE_NEW does on an unsupported op
    with pytest.raises(BundleError, match="returned an empty network"):
        Model.load(bundle)


def test_non_finite_output_is_an_error(bundle, monkeypatch):
    m = Model.load(bundle)
    net = m.thread_net()

    class NaNNet:
        def setInput(self, blob):
            net.setInput(blob)

        def getUnconnectedOutLayersNames(self):
            return net.getUnconnectedOutLayersNames()

        def forward(self, *names):
            return net.forward(*names) * np.float32("nan")

    m.set_thread_net(NaNNet())  # the documented seam: a net that returns NaN
    with pytest.raises(InferenceError, match="NaN or infinite outputs"):
        m.infer(np.zeros((1, 1, 32, 32), np.float32))


def test_four_threads_give_the_single_thread_results(bundle, tmp_path):
    m = Model.load(bundle)
    paths = _images(tmp_path, 8)
    expected = [p.logits for p in m.predict(paths, batch_size=1, workers=0)]
    results, errors = {}, []

    def worker(k):
        try:
            for rep in range(25):
                order = paths[k:] + paths[:k]
                got = [p.logits for p in m.predict(order, batch_size=1 + (rep + k) % 4, workers=rep % 2)]
                results[(k, rep)] = got == expected[k:] + expected[:k]
        except Exception as e:  # surface in the main thread
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(results) == 100 and all(results.values())


def test_a_hot_pixel_does_not_move_the_probabilities(bundle, tmp_path):
    """A 12-bit X-ray in 16 bits with one pixel at 65535 (a dead detector pixel, burned-in text)."""
    clean = xray_like(512, 448, seed=11, bits=12)
    hot = clean.copy()
    hot[40, 300] = 65535
    write_image(tmp_path / "clean.png", clean)
    write_image(tmp_path / "hot.png", hot)
    paths = [str(tmp_path / "clean.png"), str(tmp_path / "hot.png")]
    a, b = Model.load(bundle).predict(paths, workers=0)
    assert a.ok and b.ok
    assert max(abs(a.probabilities[c] - b.probabilities[c]) for c in a.probabilities) <= 0.05
    # The same bundle with the min-max rule of medge 0.2: the hot pixel squeezes the anatomy into a few grey levels.
    old = tmp_path / "old"
    shutil.copytree(bundle, old)
    manifest = json.loads((old / "model.json").read_text())
    manifest["preprocess"]["high_bit_rule"] = "minmax"
    (old / "model.json").write_text(json.dumps(manifest))
    m_old = Model.load(old)
    old_clean, old_hot = m_old.predict(paths, workers=0)
    x_clean, x_hot = (preprocess(read_image(p), m_old.preprocess_config) for p in paths)
    assert np.abs(x_clean - x_hot).mean() > 0.1  # what min-max made of the hot pixel
    assert max(abs(old_clean.probabilities[c] - old_hot.probabilities[c]) for c in a.probabilities) > 0.05
