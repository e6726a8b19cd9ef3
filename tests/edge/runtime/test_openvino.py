"""OpenVINO as an engine: precision pinned, the cv2.dnn.Net methods medge uses, errors in medge's types."""
from __future__ import annotations

import builtins

import numpy as np
import pytest

from medge.edge.errors import BundleError, ConfigError, InferenceError, MissingExtraError
from medge.edge.runtime import openvino as ov_engine
from medge.edge.runtime.dnn import forward, load_net
from medge.edge.runtime.verify import open_bundle

openvino = pytest.importorskip("openvino", reason="the openvino extra is not installed")


def _bf16_here() -> bool:
    return "BF16" in openvino.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")


def test_f32_is_pinned_and_matches_opencv(bundle):
    b = open_bundle(bundle)
    net = load_net(b.onnx_bytes, "openvino")
    assert net.precision == "f32" and net.requested_precision == "f32"  # never OpenVINO's bf16 default on AMX
    x = b.golden_inputs()
    ref = forward(load_net(b.onnx_bytes, "classic"), x, b.chw, len(b.classes))
    assert np.abs(forward(net, x, b.chw, len(b.classes)) - ref).max() <= 1e-4


def test_bf16_is_asked_for_by_name_and_what_the_cpu_computes_is_read_back(bundle):
    b = open_bundle(bundle)
    net = load_net(b.onnx_bytes, "openvino", precision="bf16")
    assert net.requested_precision == "bf16"
    assert net.precision == ("bf16" if _bf16_here() else "f32")  # a CPU without bf16 computes f32: said, not hidden


def test_named_outputs_and_errors(bundle):
    b = open_bundle(bundle)
    net = load_net(b.onnx_bytes, "openvino")
    with pytest.raises(InferenceError, match="without an input"):
        net.forward()
    net.setInput(b.golden_inputs()[:1])
    assert net.forward("logits").shape == (1, len(b.classes))
    assert isinstance(net.forward(["logits"]), tuple)
    with pytest.raises(InferenceError, match="no output 'nope'"):
        net.forward("nope")
    with pytest.raises(ConfigError, match="precision 'int4'"):
        ov_engine.OvNet(b.onnx_bytes, "int4")


def test_a_bad_model_is_a_bundle_error_naming_openvino():
    with pytest.raises(BundleError, match=r"OpenVINO .* cannot read this model"):
        load_net(b"not an onnx model", "openvino", name="x.onnx")


def test_without_the_extra_the_error_says_what_to_install(monkeypatch):
    real = builtins.__import__

    def no_openvino(name, *args, **kw):
        if name == "openvino":
            raise ImportError("no openvino")
        return real(name, *args, **kw)

    monkeypatch.setattr(builtins, "__import__", no_openvino)
    with pytest.raises(MissingExtraError, match="openvino"):
        ov_engine._openvino()
