"""onnxruntime as an engine of the edge runtime (optional: ``pip install "medge[ort]"``).

One more entry of ``edge.runtime.engines.ENGINES``: the same bundle, the same
verified bytes (SHA-256), the same golden self-test and the same blob and output
guards as OpenCV's engines, because ``OrtNet`` speaks the part of the
``cv2.dnn.Net`` interface that ``edge.runtime`` uses (``setInput``, ``forward``,
``empty``, ``getUnconnectedOutLayersNames``). onnxruntime is imported only here,
inside the functions that need it: the base install stays numpy + OpenCV.

Hazards this module designs for:
- a bundle may have several outputs (a feature map for heatmaps beside the logits):
  ``forward()`` returns the output named ``logits`` (``LOGITS_OUTPUT``), never
  "the first one";
- onnxruntime's errors are plain ``Exception`` subclasses of its own: they become
  ``BundleError`` at load and ``InferenceError`` at run, naming onnxruntime's version;
- threads: onnxruntime fixes a session's intra-op thread count when it is created,
  OpenCV's engines read ``cv2.getNumThreads()`` at every pass. So that one setting
  (``cv2.setNumThreads``, ``--threads``, the pipeline's thread budget) governs every
  engine, ``OrtNet`` keeps one session per thread count it was asked for (built on
  first use: about as long as loading the model). Its thread pool does not spin
  between passes (``session.intra_op.allow_spinning=0``): on a box shared with other
  work a spinning pool takes the cores that reading and preprocessing need;
- like a ``cv2.dnn.Net``, one ``OrtNet`` is used by one thread at a time (``edge.model``
  gives each thread its own).
"""
from __future__ import annotations

import cv2

from medge.edge.errors import BundleError, ConfigError, InferenceError, MissingExtraError
from medge.edge.runtime.bundle import ForeignNet

EXTRA = "ort"  # pip install "medge[ort]": onnxruntime as an engine of the edge runtime


def _onnxruntime():
    try:
        import onnxruntime
    except ImportError:
        raise MissingExtraError(EXTRA, "onnxruntime", "the onnxruntime engine") from None
    return onnxruntime


def _reason(e: Exception) -> str:
    text = " ".join(str(e).split())
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


class OrtNet(ForeignNet):
    """An onnxruntime CPU session behind the methods of ``cv2.dnn.Net`` that ``edge.runtime`` calls."""

    def __init__(self, model: bytes | str):
        ort = _onnxruntime()
        self._ort, self._model, self._sessions = ort, model, {}
        session = self._session(max(1, cv2.getNumThreads()))  # load now: a bad model fails at load, not at the first pass
        inputs = session.get_inputs()
        if len(inputs) != 1:
            raise BundleError(f"onnxruntime {ort.__version__}: the model has {len(inputs)} inputs, medge feeds one")
        self._input, self._engine = inputs[0].name, "onnxruntime"
        self._outputs = tuple(o.name for o in session.get_outputs())

    def _session(self, threads: int):
        session = self._sessions.get(threads)
        if session is None:
            opts = self._ort.SessionOptions()
            opts.intra_op_num_threads = threads
            opts.inter_op_num_threads = 1
            opts.log_severity_level = 3  # errors only: warnings about unused initializers are noise here
            opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
            try:
                session = self._ort.InferenceSession(self._model, opts, providers=["CPUExecutionProvider"])
            except Exception as e:  # onnxruntime's own exception types; the message says what is wrong
                raise BundleError(f"onnxruntime {self._ort.__version__} cannot load this model: {_reason(e)}") from None
            self._sessions[threads] = session
        return session

    def forward(self, names: str | list[str] | tuple[str, ...] | None = None):
        """The logits (``names`` None), one named output (a str), or a tuple of named outputs (a list)."""
        wanted = self.wanted(names)
        session = self._session(max(1, cv2.getNumThreads()))
        try:
            outs = session.run(wanted, {self._input: self._blob})
        except Exception as e:  # onnxruntime's own exception types
            raise InferenceError(f"onnxruntime {self._ort.__version__} forward failed: {_reason(e)}") from None
        return tuple(outs) if names is not None and not isinstance(names, str) else outs[0]


def read_ort(src: bytes | str, precision: str = "f32") -> OrtNet:
    """``Engine.read`` of the onnxruntime engine: an OrtNet of the model's bytes (or path); f32 only
    (an int8 QDQ model runs with onnxruntime's integer kernels at f32 "precision")."""
    if precision != "f32":
        raise ConfigError(f"the onnxruntime engine computes in f32 only, not {precision}")
    return OrtNet(src)
