"""cv2.dnn, guarded: loading an ONNX model with one of this OpenCV's engines, and a checked forward pass.

Every OpenCV from 4.5.5 up, pip wheel or distribution package: what an OpenCV offers
(engines, backends) is detected in ``edge.runtime.engines``, never assumed from its version;
the net's type is ``cv2.dnn.Net`` from 4.6 on, ``cv2.dnn_Net`` in 4.5.5.

OpenCV hazards this module designs for:
- OpenCV 5's new engine does not check the input's channel count and passes NaN
  through; the classic engine turns NaN into plausible finite numbers: so the
  blob's shape, dtype and finiteness are checked before ``setInput`` and the
  output's finiteness after ``forward``;
- a blob with batch size 0 kills the process with SIGFPE: refused here;
- the new engine returns an empty net instead of raising on an unsupported op:
  ``net.empty()`` is always checked;
- OpenCV 4.5.5 and 4.6 fail, or could err, on batches > 1 of some models (those with
  squeeze-excitation blocks: mobilenet_v3, efficientnet): ``edge.model``'s self-test
  checks batched inference and falls back to one image per pass;
- a ``cv2.dnn.Net`` must not be used by two threads at once (crashes, wrong
  outputs): callers give each thread its own net (see ``edge.model``).
"""
from __future__ import annotations

import os
import re
import time

import cv2
import numpy as np

from medge.edge.errors import BundleError, ConfigError, InferenceError
from medge.edge.runtime.bundle import LOGITS_OUTPUT
from medge.edge.runtime.engines import AUTO, BACKENDS, ENGINES, available_backends, check_choices

MIN_OPENCV = (4, 5, 5)  # the oldest OpenCV medge supports: CI runs the edge tests on opencv-python-headless 4.5.5.64
NET_TYPE = getattr(cv2.dnn, "Net", None) or cv2.dnn_Net  # the class of a net: cv2.dnn_Net in OpenCV 4.5.5
INSTALL_HINT = ("install a supported OpenCV: pip install 'opencv-python-headless>=4.5.5' "
                "(pip install -c constraints.txt . installs the tested one), or a distribution's python3-opencv 4.5.5 or newer")
LOAD_REMEDIES = (
    "usual remedies: export with opset 12 (medge's default), keep the input shape fixed apart from the batch, "
    "simplify with onnxsim, try another --engine, or choose an architecture that OpenCV supports"
)


def opencv_version(text: str | None = None) -> tuple[int, int, int]:
    """(major, minor, patch) of an OpenCV version such as '4.6.0' or '4.8.0-dev' (default: this one's)."""
    nums = [int(n) for n in re.findall(r"\d+", cv2.__version__ if text is None else text)[:3]]
    return tuple(nums + [0] * (3 - len(nums)))


def check_opencv() -> None:
    """Raise BundleError when this OpenCV is older than MIN_OPENCV."""
    if opencv_version() < MIN_OPENCV:
        raise BundleError(f"OpenCV {cv2.__version__} is older than {'.'.join(map(str, MIN_OPENCV))}, the oldest medge "
                          f"supports: {INSTALL_HINT}")


def _cv_message(e: cv2.error) -> str:
    lines = [ln.strip() for ln in str(e).strip().splitlines() if ln.strip()]
    return lines[-1] if lines else "unknown OpenCV error"


def load_net(model: bytes | str | os.PathLike, engine: str = "classic", backend: str = "cpu", name: str = "",
             verified_with: str | None = None, precision: str = "f32"):
    """Load an ONNX model with one of the ENGINES (OpenCV's, or onnxruntime with the ort extra).

    Args:
        model: the ONNX file's bytes (preferred: the bytes whose hash was checked
            are the bytes loaded), or a path.
        engine: a key of ENGINES (``auto`` is resolved per bundle by ``edge.runtime.choice``).
        backend: a key of BACKENDS that this box can run (``available_backends()``).
        name: how to call the model in errors (its path).
        verified_with: the OpenCV version the bundle was verified with, for the remedy in errors.
        precision: the compute precision the engine is pinned to (``f32``; ``bf16`` on engines that have it).

    Returns:
        the engine's net (a ``cv2.dnn.Net`` for OpenCV's engines).

    Raises:
        ConfigError: an engine or backend this OpenCV or box does not have, or a precision the engine lacks.
        MissingExtraError: an optional engine whose extra is not installed.
        BundleError: OpenCV is too old, or the engine cannot load the model; the message names
            the OpenCV version, OpenCV's reason (the failing node or layer when OpenCV
            says) and what to install or try.
    """
    check_opencv()
    if engine == AUTO:
        raise ConfigError("engine 'auto' is chosen per bundle by Model.load; load_net needs one of "
                          f"{list(ENGINES)}")
    check_choices(engine, backend)
    if backend != "cpu" and backend not in available_backends():
        raise ConfigError(f"backend {backend!r} is not available on this box: OpenCV {cv2.__version__} finds no device "
                          f"for it (available: {available_backends()})")
    name = name or (str(model) if not isinstance(model, bytes) else "<onnx bytes>")
    remedy = LOAD_REMEDIES
    if verified_with and verified_with != cv2.__version__:
        remedy = (f"the bundle was verified with OpenCV {verified_with}: install it here "
                  f"(pip install 'opencv-python-headless=={verified_with}.*', or pip install -c constraints.txt .), "
                  f"or try another --engine")
    try:
        src = model if isinstance(model, bytes) else os.fspath(model)
        net = ENGINES[engine].read(src) if precision == "f32" else ENGINES[engine].read(src, precision)
    except cv2.error as e:
        raise BundleError(f"{name}: OpenCV {cv2.__version__} ({engine} engine) cannot read this model: "
                          f"{_cv_message(e)}; {remedy}") from None
    except BundleError as e:  # an engine from outside OpenCV, in its own words
        raise BundleError(f"{name}: {e}; {LOAD_REMEDIES}") from None
    if net.empty():
        raise BundleError(f"{name}: OpenCV {cv2.__version__} ({engine} engine) returned an empty network: "
                          f"some operator is not supported; {remedy}")
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


def _output_names(net) -> tuple:
    """The graph outputs of a cv2.dnn net; () for a net of another kind, which answers ``forward()`` with its logits."""
    names = getattr(net, "getUnconnectedOutLayersNames", None)
    return tuple(names()) if names is not None else ()


def forward(net, blob: np.ndarray, chw: tuple[int, int, int], num_outputs: int | None = None) -> np.ndarray:
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
        out = net.forward(LOGITS_OUTPUT) if len(_output_names(net)) > 1 else net.forward()
    except cv2.error as e:
        raise InferenceError(f"cv2.dnn forward failed: {_cv_message(e)}") from None
    out = np.array(out, dtype=np.float32, copy=True)
    if out.size == 0 or out.size % blob.shape[0]:
        raise InferenceError(f"model returned an output of shape {out.shape} for a batch of {blob.shape[0]}")
    out = out.reshape(blob.shape[0], -1)
    if num_outputs is not None and out.shape[1] != num_outputs:
        raise InferenceError(f"model returned {out.shape[1]} outputs per image, expected {num_outputs}")
    if not np.isfinite(out).all():
        raise InferenceError("model returned NaN or infinite outputs")
    return out


def forward_outputs(net, blob: np.ndarray, chw: tuple[int, int, int], names: tuple[str, ...]) -> dict[str, np.ndarray]:
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


def forward_batches(net, blob: np.ndarray, chw: tuple[int, int, int], num_outputs: int,
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


def forward_outputs_batches(net, blob: np.ndarray, chw: tuple[int, int, int], names: tuple[str, ...],
                            batch_size: int) -> dict[str, np.ndarray]:
    """``forward_outputs`` over a non-empty blob of any length, ``batch_size`` images per pass."""
    step = max(1, int(batch_size))
    parts = [forward_outputs(net, blob[i : i + step], chw, names) for i in range(0, max(len(blob), 1), step)]
    return {n: np.concatenate([p[n] for p in parts]) for n in names}


def time_forwards(nets: dict, blob: np.ndarray, chw: tuple[int, int, int], num_outputs: int, rounds: int,
                  warmup: int = 1) -> dict[str, list[float]]:
    """Milliseconds per checked ``forward`` of ``blob`` through each net, interleaved.

    Every round runs each net once, in an order that rotates from round to round, so
    that drift on a shared machine hits all alike; ``warmup`` untimed rounds first.

    Returns:
        net name -> ``rounds`` timings in ms.
    """
    names = list(nets)
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(warmup + rounds):
        k = r % len(names)
        for n in names[k:] + names[:k]:
            t0 = time.perf_counter()
            forward(nets[n], blob, chw, num_outputs)
            if r >= warmup:
                times[n].append(1000 * (time.perf_counter() - t0))
    return times
