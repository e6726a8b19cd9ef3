"""cv2.dnn, guarded: loading an ONNX model and running a checked forward pass.

OpenCV 5 hazards this module designs for (see issue 5):
- the default engine does not check the input's channel count and passes NaN
  through; the classic engine turns NaN into plausible finite numbers: so the
  blob's shape, dtype and finiteness are checked before ``setInput`` and the
  output's finiteness after ``forward``;
- a blob with batch size 0 kills the process with SIGFPE: refused here;
- ``ENGINE_NEW`` returns an empty net instead of raising on an unsupported op:
  ``net.empty()`` is always checked;
- a ``cv2.dnn.Net`` must not be used by two threads at once (crashes, wrong
  outputs): callers give each thread its own net (see ``edge.model``);
- with two graph outputs (logits and, for heatmaps, a feature map: issue 16),
  ``net.forward()`` returns the *feature map* under the classic engine and the
  logits under the new one: outputs are always asked for by name.
"""
from __future__ import annotations

import os

import cv2
import numpy as np

from medge.edge.errors import BundleError, ConfigError, InferenceError

ENGINES = {"auto": cv2.dnn.ENGINE_AUTO, "classic": cv2.dnn.ENGINE_CLASSIC, "new": cv2.dnn.ENGINE_NEW}
# name -> (backend, target). The new engine runs on the CPU only; other backends use the classic engine.
BACKENDS = {
    "cpu": (cv2.dnn.DNN_BACKEND_OPENCV, cv2.dnn.DNN_TARGET_CPU),
    "opencl": (cv2.dnn.DNN_BACKEND_OPENCV, cv2.dnn.DNN_TARGET_OPENCL),
    "opencl-fp16": (cv2.dnn.DNN_BACKEND_OPENCV, cv2.dnn.DNN_TARGET_OPENCL_FP16),
    "cuda": (cv2.dnn.DNN_BACKEND_CUDA, cv2.dnn.DNN_TARGET_CUDA),
    "cuda-fp16": (cv2.dnn.DNN_BACKEND_CUDA, cv2.dnn.DNN_TARGET_CUDA_FP16),
}
LOGITS_OUTPUT = "logits"  # the name every medge bundle gives its class scores
LOAD_REMEDIES = (
    "usual remedies: export with opset 12 (medge's default), keep the input shape fixed apart from the batch, "
    "simplify with onnxsim, try --engine classic (or new), or choose an architecture that OpenCV supports"
)


def _cv_message(e: cv2.error) -> str:
    lines = [ln.strip() for ln in str(e).strip().splitlines() if ln.strip()]
    return lines[-1] if lines else "unknown OpenCV error"


def check_choices(engine: str, backend: str) -> None:
    """Raise ConfigError for an engine or backend name that is not in the tables."""
    if engine not in ENGINES:
        raise ConfigError(f"unknown engine {engine!r}; choose one of {list(ENGINES)}")
    if backend not in BACKENDS:
        raise ConfigError(f"unknown backend {backend!r}; choose one of {list(BACKENDS)}")


def load_net(model: bytes | str | os.PathLike, engine: str = "auto", backend: str = "cpu", name: str = "") -> cv2.dnn.Net:
    """Load an ONNX model into cv2.dnn.

    Args:
        model: the ONNX file's bytes (preferred: the bytes whose hash was checked
            are the bytes loaded), or a path.
        engine: auto, classic or new (``cv2.dnn.ENGINE_*``).
        backend: a key of BACKENDS.
        name: how to call the model in errors (its path).

    Raises:
        ConfigError: unknown engine or backend. BundleError: OpenCV cannot load the
            model; the message has OpenCV's reason (naming the failing node or
            layer when OpenCV does) and the usual remedies.
    """
    check_choices(engine, backend)
    if backend != "cpu":
        if engine == "new":
            raise ConfigError(f"backend {backend!r} needs the classic engine; OpenCV's new engine runs on the CPU only")
        engine = "classic"
    name = name or (str(model) if not isinstance(model, bytes) else "<onnx bytes>")
    try:
        if isinstance(model, bytes):
            net = cv2.dnn.readNetFromONNX(np.frombuffer(model, np.uint8), ENGINES[engine])
        else:
            net = cv2.dnn.readNetFromONNX(os.fspath(model), ENGINES[engine])
    except cv2.error as e:
        raise BundleError(f"{name}: OpenCV {cv2.__version__} cannot load the model (engine {engine}): "
                          f"{_cv_message(e)}; {LOAD_REMEDIES}") from None
    if net.empty():
        raise BundleError(f"{name}: OpenCV {cv2.__version__} returned an empty network (engine {engine}): "
                          f"some operator is not supported; {LOAD_REMEDIES}")
    if backend != "cpu":  # OpenCV/CPU is the default; setting it warns under the new engine
        net.setPreferableBackend(BACKENDS[backend][0])
        net.setPreferableTarget(BACKENDS[backend][1])
    return net


def check_blob(blob: np.ndarray, chw: tuple[int, int, int]) -> np.ndarray:
    """Refuse what cv2.dnn would mis-handle: wrong type/rank/shape, batch 0, NaN or inf."""
    if not isinstance(blob, np.ndarray) or blob.dtype != np.float32:
        raise InferenceError(f"input blob must be a float32 numpy array, got {getattr(blob, 'dtype', type(blob).__name__)}")
    if blob.ndim != 4 or tuple(blob.shape[1:]) != tuple(chw):
        raise InferenceError(f"input blob must have shape (N, {', '.join(map(str, chw))}), got {blob.shape}")
    if blob.shape[0] == 0:
        raise InferenceError("input blob has batch size 0 (OpenCV would crash the process)")
    if not np.isfinite(blob).all():
        raise InferenceError("input blob contains NaN or infinite values")
    return np.ascontiguousarray(blob)


def forward(net: cv2.dnn.Net, blob: np.ndarray, chw: tuple[int, int, int], num_outputs: int | None = None) -> np.ndarray:
    """Run one checked forward pass.

    Args:
        net: a net from ``load_net`` used by this thread only.
        blob: (N, C, H, W) float32.
        chw: the model's expected (C, H, W).
        num_outputs: expected size of the output's last axis (number of classes).

    Returns:
        (N, num_outputs) float32 logits (a copy: cv2 may reuse its buffer).

    Raises:
        InferenceError: bad blob, an OpenCV error, or a non-finite / misshapen output.
    """
    blob = check_blob(blob, chw)
    try:
        net.setInput(blob)
        # By name when the model has several outputs (a heatmap bundle): the classic engine's
        # unnamed forward() would return the feature map instead of the logits.
        out = net.forward(LOGITS_OUTPUT) if len(net.getUnconnectedOutLayersNames()) > 1 else net.forward()
    except cv2.error as e:
        raise InferenceError(f"cv2.dnn forward failed: {_cv_message(e)}") from None
    out = np.array(out, dtype=np.float32, copy=True).reshape(blob.shape[0], -1)
    if num_outputs is not None and out.shape[1] != num_outputs:
        raise InferenceError(f"model returned {out.shape[1]} outputs per image, expected {num_outputs}")
    if not np.isfinite(out).all():
        raise InferenceError("model returned NaN or infinite outputs")
    return out


def forward_outputs(net: cv2.dnn.Net, blob: np.ndarray, chw: tuple[int, int, int],
                    names: tuple[str, ...]) -> dict[str, np.ndarray]:
    """Run one checked forward pass and return the named outputs (for models with several).

    Args:
        net: a net from ``load_net`` used by this thread only.
        blob: (N, C, H, W) float32.
        chw: the model's expected (C, H, W).
        names: graph output names, e.g. ``("logits", "features")``.

    Returns:
        name -> float32 array (a copy) whose first axis is N.

    Raises:
        InferenceError: bad blob, an OpenCV error (an unknown output name included),
            or an output that is non-finite or does not have N rows.
    """
    blob = check_blob(blob, chw)
    try:
        net.setInput(blob)
        # One name as a string: OpenCV 5's new engine refuses a list shorter than the graph's outputs.
        outs = [net.forward(names[0])] if len(names) == 1 else net.forward(list(names))
    except cv2.error as e:
        raise InferenceError(f"cv2.dnn forward of outputs {list(names)} failed: {_cv_message(e)}") from None
    result = {}
    for name, out in zip(names, outs, strict=True):
        out = np.array(out, dtype=np.float32, copy=True)
        if out.ndim == 0 or out.shape[0] != blob.shape[0]:
            raise InferenceError(f"model output {name!r} has shape {out.shape}, expected {blob.shape[0]} rows")
        if not np.isfinite(out).all():
            raise InferenceError(f"model output {name!r} contains NaN or infinite values")
        result[name] = out
    return result


def forward_batches(net: cv2.dnn.Net, blob: np.ndarray, chw: tuple[int, int, int], num_outputs: int,
                    batch_size: int) -> np.ndarray:
    """``forward`` over a blob of any length, ``batch_size`` images per pass (1 for a fixed-batch model).

    The one chunked forward pass of medge: ``Model.infer``, the export's parity gate
    and the benchmarks all go through it.

    Returns:
        (N, num_outputs) float32 logits; (0, num_outputs) for an empty blob.
    """
    if not len(blob):
        return np.zeros((0, num_outputs), np.float32)
    step = max(1, int(batch_size))
    return np.concatenate([forward(net, blob[i : i + step], chw, num_outputs) for i in range(0, len(blob), step)])


def forward_outputs_batches(net: cv2.dnn.Net, blob: np.ndarray, chw: tuple[int, int, int], names: tuple[str, ...],
                            batch_size: int) -> dict[str, np.ndarray]:
    """``forward_outputs`` over a non-empty blob of any length, ``batch_size`` images per pass."""
    step = max(1, int(batch_size))
    parts = [forward_outputs(net, blob[i : i + step], chw, names) for i in range(0, max(len(blob), 1), step)]
    return {n: np.concatenate([p[n] for p in parts]) for n in names}


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax in float64 for stable probabilities, returned as float64."""
    z = logits.astype(np.float64) - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)
