"""OpenVINO as an engine of the edge runtime (optional: ``pip install "medge[openvino]"``).

One more entry of ``edge.runtime.engines.ENGINES``, beside OpenCV's engines and onnxruntime:
the same verified bytes, golden self-test and blob and output guards, because ``OvNet`` speaks
the part of the ``cv2.dnn.Net`` interface that ``edge.runtime`` uses (``setInput``, ``forward``,
``empty``, ``getUnconnectedOutLayersNames``). openvino is imported only here, inside the
functions that need it: the base install stays numpy + OpenCV.

Hazards this module designs for:
- **precision is always pinned**: on a CPU with AMX or AVX-512 BF16, OpenVINO computes in bf16
  unless told ``INFERENCE_PRECISION_HINT=f32``, which would move a validated operating point with
  nobody knowing. ``OvNet`` always passes the hint: ``f32`` for the fp32 and int8 variants, ``bf16``
  only for the bf16 variant (``edge.runtime.variants``), and reads back what the compiled model
  says it computes in (``precision``): a CPU without bf16 answers f32, said in ``medge check``;
- threads: as ``OrtNet``, one compiled model per thread count asked for (``cv2.getNumThreads()``,
  so one setting governs every engine), one stream, the latency hint;
- a bundle may have several outputs (a feature map beside the logits): ``forward()`` returns the
  output named ``logits``, never "the first one";
- OpenVINO's errors (``RuntimeError`` and its own types) become ``BundleError`` at load and
  ``InferenceError`` at run, naming OpenVINO's version;
- like a ``cv2.dnn.Net``, one ``OvNet`` is used by one thread at a time (``edge.model`` gives each
  thread its own).
"""
from __future__ import annotations

import threading

import cv2
import numpy as np

from medge.edge.errors import BundleError, ConfigError, InferenceError, MissingExtraError
from medge.edge.runtime.bundle import ForeignNet

EXTRA = "openvino"  # pip install "medge[openvino]": OpenVINO as an engine of the edge runtime
PRECISIONS = {"f32": "f32", "bf16": "bf16"}  # medge's name -> OpenVINO's INFERENCE_PRECISION_HINT
_core = None
_core_lock = threading.Lock()


def _openvino():
    try:
        import openvino
    except ImportError:
        raise MissingExtraError(EXTRA, "openvino", "the openvino engine") from None
    return openvino


def core():
    """The process's one ``openvino.Core`` (creating one costs tens of ms; it is thread-safe)."""
    global _core
    with _core_lock:
        if _core is None:
            _core = _openvino().Core()
        return _core


def version() -> str:
    return _openvino().__version__


def _reason(e: Exception) -> str:
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip() and not ln.strip().startswith("Exception from")]
    text = lines[-1] if lines else ""
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


class OvNet(ForeignNet):
    """An OpenVINO CPU model, compiled at a pinned precision, behind the methods of ``cv2.dnn.Net``."""

    def __init__(self, model: bytes | str, precision: str = "f32"):
        if precision not in PRECISIONS:
            raise ConfigError(f"OpenVINO precision {precision!r}: choose one of {list(PRECISIONS)}")
        self._core, self._version, self.requested_precision = core(), version(), precision
        try:
            self._model = self._core.read_model(model)
        except Exception as e:  # OpenVINO raises RuntimeError and its own types; the message says what is wrong
            raise BundleError(f"OpenVINO {self._version} cannot read this model: {_reason(e)}") from None
        if len(self._model.inputs) != 1:
            raise BundleError(f"OpenVINO {self._version}: the model has {len(self._model.inputs)} inputs, medge feeds one")
        self._outputs, self._engine = tuple(o.get_any_name() for o in self._model.outputs), "OpenVINO"
        self._compiled: dict[int, tuple] = {}
        compiled, _ = self._request(max(1, cv2.getNumThreads()))  # compile now: a bad model fails at load
        self.precision = str(compiled.get_property("INFERENCE_PRECISION_HINT")).replace("<Type: '", "").rstrip("'>")
        self.precision = {"float32": "f32", "bfloat16": "bf16", "float16": "f16"}.get(self.precision, self.precision)

    def _request(self, threads: int):
        entry = self._compiled.get(threads)
        if entry is None:
            config = {"INFERENCE_PRECISION_HINT": PRECISIONS[self.requested_precision], "INFERENCE_NUM_THREADS": threads,
                      "PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": 1}
            try:
                compiled = self._core.compile_model(self._model, "CPU", config)
            except Exception as e:  # OpenVINO's own exception types
                raise BundleError(f"OpenVINO {self._version} cannot compile this model for the CPU: {_reason(e)}") from None
            entry = self._compiled[threads] = (compiled, compiled.create_infer_request())
        return entry

    def forward(self, names: str | list[str] | tuple[str, ...] | None = None):
        """The logits (``names`` None), one named output (a str), or a tuple of named outputs (a list)."""
        wanted = self.wanted(names)
        compiled, request = self._request(max(1, cv2.getNumThreads()))
        try:
            request.infer({0: self._blob})
            outs = [np.array(request.get_tensor(compiled.output(n)).data, copy=True) for n in wanted]
        except Exception as e:  # OpenVINO's own exception types
            raise InferenceError(f"OpenVINO {self._version} forward failed: {_reason(e)}") from None
        return tuple(outs) if names is not None and not isinstance(names, str) else outs[0]


def read_openvino(src: bytes | str, precision: str = "f32") -> OvNet:
    """``Engine.read`` of the openvino engine: an OvNet of the model's bytes (or path) at ``precision``."""
    return OvNet(src, precision)
