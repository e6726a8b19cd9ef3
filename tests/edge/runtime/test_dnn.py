"""edge.runtime on whatever OpenCV is installed (CI runs this on 4.5.5, Debian's 4.6 and the pinned one)."""
import json
import shutil

import cv2
import numpy as np
import pytest

from medge.edge.apps.cli import main
from medge.edge.errors import BundleError, ConfigError, InferenceError
from medge.edge.model import Model
from medge.edge.runtime import dnn, engines
from medge.edge.runtime.bundle import sha256_bytes
from medge.edge.runtime.dnn import forward, load_net, opencv_version, time_forwards
from medge.edge.runtime.engines import AUTO, ENGINES, engine_choices


@pytest.mark.parametrize("text, expected", [("4.5.5", (4, 5, 5)), ("4.8.0-dev", (4, 8, 0)), ("5.0", (5, 0, 0)),
                                            ("4.10.0.84", (4, 10, 0))])
def test_opencv_version(text, expected):
    assert opencv_version(text) == expected


def test_engines_are_what_this_opencv_has_and_each_gives_the_golden_logits(bundle):
    opencv5 = hasattr(cv2.dnn, "ENGINE_CLASSIC")
    assert set(ENGINES) >= ({"classic", "new"} if opencv5 else {"classic"})
    assert opencv5 or list(ENGINES) == ["classic"]  # 4.x: one engine, readNetFromONNX(src)
    missing = [name for name in engines.OPTIONAL_ENGINES if name not in ENGINES]  # offered, naming their extra
    assert engine_choices() == [AUTO, *ENGINES, *missing] and "onnxruntime" in engine_choices()
    m = Model.open(bundle)
    expected = np.asarray(m.manifest["golden"]["expected_logits"], np.float32)
    for engine in ENGINES:
        net = load_net(m.onnx_bytes, engine)
        got = np.concatenate([forward(net, x[None], m.chw, 2) for x in m.golden_inputs()])
        np.testing.assert_allclose(got, expected, atol=1e-3, rtol=0)


def test_an_engine_this_opencv_lacks_is_named_with_where_it_exists(monkeypatch):
    for name in set(ENGINES) - {"classic"}:  # as on OpenCV 4.x
        monkeypatch.delitem(ENGINES, name)
    with pytest.raises(ConfigError, match=rf"engine 'new' is not available in OpenCV {cv2.__version__} \(it is in OpenCV 5\)"):
        engines.check_choices("new", "cpu")
    optional = r"(, 'onnxruntime')?(, 'openvino')?"
    with pytest.raises(ConfigError, match=rf"'warp' is not available.*choose one of \['auto', 'classic'{optional}\]"):
        engines.check_choices("warp", "cpu")
    with pytest.raises(ConfigError, match="unknown backend 'tpu'"):
        engines.check_choices("classic", "tpu")
    with pytest.raises(ConfigError, match="'auto' is chosen per bundle"):
        load_net(b"", AUTO)


def test_opencv_older_than_4_5_5_is_a_bundle_error_naming_what_to_install(bundle, monkeypatch, capsys, tmp_path):
    monkeypatch.setattr(cv2, "__version__", "4.5.4")
    with pytest.raises(BundleError, match=r"OpenCV 4\.5\.4 is older than 4\.5\.5.*pip install 'opencv-python-headless>=4\.5\.5'"):
        Model.load(bundle)
    assert main(["predict", "--model", str(bundle), str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "OpenCV 4.5.4 is older than 4.5.5" in err and "Traceback" not in err


def test_a_model_this_opencv_cannot_read_names_the_version_and_what_to_install(bundle, tmp_path, capsys):
    copy = tmp_path / "b"
    shutil.copytree(bundle, copy)
    data = b"\x08\x07 this is not an ONNX protobuf \xff" * 10
    (copy / "model.onnx").write_bytes(data)
    manifest = json.loads((copy / "model.json").read_text())
    manifest["model"]["sha256"] = sha256_bytes(data)  # a consistent bundle whose model OpenCV cannot read
    manifest["versions"]["opencv"] = "9.9.9"
    (copy / "model.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match=rf"OpenCV {cv2.__version__} \(classic engine\) cannot read this model: .*"
                                          r"verified with OpenCV 9\.9\.9: install it here \(pip install "
                                          r"'opencv-python-headless==9\.9\.9\.\*'"):
        Model.load(copy, engine="classic")
    assert main(["predict", "--model", str(copy), str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert f"OpenCV {cv2.__version__}" in err and "cannot read this model" in err and "Traceback" not in err


def test_a_backend_this_box_cannot_run_is_refused(bundle):
    unavailable = [b for b in engines.BACKENDS if b not in engines.available_backends()]
    if not unavailable:
        pytest.skip("every backend is available on this box")
    with pytest.raises(ConfigError, match=f"backend '{unavailable[0]}' is not available on this box"):
        load_net((bundle / "model.onnx").read_bytes(), "classic", unavailable[0])


class _Recorder:
    """A net that records the order of forward calls and returns fixed logits."""

    def __init__(self, name, log, out=None):
        self.name, self.log, self.out = name, log, out

    def setInput(self, blob):
        self.n = len(blob)

    def forward(self):
        self.log.append(self.name)
        return np.zeros((self.n, 2), np.float32) if self.out is None else self.out


def test_time_forwards_interleaves_in_rotating_order(monkeypatch):
    log = []
    clock = {"s": 0.0}

    class Clock:  # the n-th forward call takes n ms
        @staticmethod
        def perf_counter():
            return clock["s"]

    class Timed(_Recorder):
        def forward(self):
            out = super().forward()
            clock["s"] += len(log) / 1000
            return out

    monkeypatch.setattr(dnn, "time", Clock)
    nets = {"a": Timed("a", log), "b": Timed("b", log)}
    times = time_forwards(nets, np.zeros((1, 1, 4, 4), np.float32), (1, 4, 4), 2, rounds=3, warmup=1)
    assert log == ["a", "b", "b", "a", "a", "b", "b", "a"]  # the warm-up round, then 3 timed rounds
    # calls 1 and 2 were the warm-up; each net's timings in ms, in the order of the rounds
    assert times == {"a": pytest.approx([4.0, 5.0, 8.0]), "b": pytest.approx([3.0, 6.0, 7.0])}
    assert list(times) == ["a", "b"]


def test_an_output_that_does_not_fit_the_batch_is_an_error():
    net = _Recorder("a", [], out=np.zeros((1, 2), np.float32))  # one image's logits for a batch of 4
    with pytest.raises(InferenceError, match=r"output of shape \(1, 2\) for a batch of 4"):
        forward(net, np.zeros((4, 1, 4, 4), np.float32), (1, 4, 4), 2)
