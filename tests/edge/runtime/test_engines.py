"""medge.edge.runtime.engines: engines and backends detected from what this OpenCV says, never from its version.

The engines of the installed OpenCV against the golden logits, and check_choices' messages, are tested in
test_dnn.py; here detection runs on stand-ins for OpenCV 4.x and 5.x.
"""
import types

import cv2
import pytest

from medge.edge.errors import ConfigError
from medge.edge.runtime import engines
from medge.edge.runtime.engines import AUTO, BACKENDS, ENGINES, OPTIONAL_ENGINES


def fake_dnn(**flags):
    """cv2.dnn as an OpenCV with these engine flags (ENGINE_CLASSIC, ENGINE_NEW, ENGINE_ORT) would have it."""
    return types.SimpleNamespace(**flags)


@pytest.fixture
def no_optional(monkeypatch):
    """As without the ort extra: onnxruntime not found."""
    monkeypatch.setattr(engines.importlib.util, "find_spec", lambda name: None)


def test_opencv_4_has_the_classic_engine_only(monkeypatch, no_optional):
    monkeypatch.setattr(engines.cv2, "dnn", fake_dnn())
    found = engines.detect_engines()
    assert list(found) == ["classic"] and found["classic"].backends == tuple(BACKENDS)
    assert found["classic"].extra is None


def test_opencv_5_has_classic_and_new_and_ort_only_where_built_with_onnx_runtime(monkeypatch, no_optional):
    monkeypatch.setattr(engines.cv2, "dnn", fake_dnn(ENGINE_CLASSIC=1, ENGINE_NEW=2, ENGINE_ORT=3))
    monkeypatch.setattr(engines.cv2, "getBuildInformation", lambda: "  ONNX Runtime:   NO\n")
    assert list(engines.detect_engines()) == ["classic", "new"]  # ENGINE_ORT alone would silently fall back
    monkeypatch.setattr(engines.cv2, "getBuildInformation", lambda: "  Video I/O:\n  ONNX Runtime:   YES (1.17.0)\n")
    found = engines.detect_engines()
    assert list(found) == ["classic", "new", "ort"]
    assert found["new"].backends == found["ort"].backends == ("cpu",)


@pytest.mark.parametrize("flags", [
    pytest.param({}, id="opencv4"),
    pytest.param({"ENGINE_CLASSIC": 1}, id="opencv5"),
])
def test_onnxruntime_is_an_engine_where_its_module_is_found(monkeypatch, flags):
    monkeypatch.setattr(engines.cv2, "dnn", fake_dnn(**flags))
    monkeypatch.setattr(engines.importlib.util, "find_spec", lambda name: object() if name == "onnxruntime" else None)
    found = engines.detect_engines()
    assert list(found) == ["classic", "onnxruntime"] and found["onnxruntime"].extra == "ort"


@pytest.mark.parametrize("info, component, has", [
    ("  ONNX Runtime:  YES (1.17)\n", "ONNX Runtime", True),
    ("  ONNX Runtime:  NO\n", "ONNX Runtime", False),
    ("  ONNX Runtime support:  YES\n", "ONNX Runtime", False),  # another line that starts alike
    ("  CUDA:  yes\n", "CUDA", True),
    ("", "CUDA", False),
])
def test_build_has_reads_the_component_line(monkeypatch, info, component, has):
    monkeypatch.setattr(engines.cv2, "getBuildInformation", lambda: info)
    assert engines._build_has(component) is has


def test_engine_choices_and_engines_for():
    assert engines.engine_choices()[0] == AUTO and set(ENGINES) <= set(engines.engine_choices())
    assert set(OPTIONAL_ENGINES) <= set(engines.engine_choices())  # a missing extra is offered, to say what to install
    assert engines.engines_for("cpu", extras=False) == [n for n, e in ENGINES.items() if e.extra is None]
    assert engines.engines_for("no-such-backend") == []


def test_available_backends_are_those_whose_target_this_box_lists(monkeypatch):
    cpu_backend, cpu_target = BACKENDS["cpu"]

    def targets(backend):
        if backend != cpu_backend:
            raise cv2.error("no such backend here")
        return [[cpu_target]]

    monkeypatch.setattr(engines.cv2.dnn, "getAvailableTargets", targets)
    assert engines.available_backends() == ["cpu"]


def test_auto_needs_only_a_known_backend():
    engines.check_choices(AUTO, "cpu")
    with pytest.raises(ConfigError, match="unknown backend 'tpu'"):
        engines.check_choices(AUTO, "tpu")
