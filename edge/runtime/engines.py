"""The engines and backends of this OpenCV (and onnxruntime's), detected, never assumed from a version.

- engines: OpenCV 5 has a classic and a new engine (``readNetFromONNX(src, engine)``);
  4.x has one, the classic engine (``readNetFromONNX(src)``); OpenCV 5's ONNX Runtime
  engine only where OpenCV was built with ONNX Runtime (elsewhere it silently falls
  back to another engine). ``ENGINES`` lists this OpenCV's, onnxruntime where the
  ``ort`` extra is installed (``edge.runtime.ort``) and OpenVINO where the ``openvino`` extra is
  (``edge.runtime.openvino``); ``auto`` (the fastest
  correct one of OpenCV's engines for a bundle on this box, or the one ``medge check``
  measured fastest of all) is chosen by ``edge.runtime.choice``;
- backends and targets: those that ``cv2.dnn.getAvailableTargets`` lists on this box.

``edge.runtime`` loads and runs nets with them; ``check_choices`` says, before any work,
whether an engine and backend asked for exist here.
"""
from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from functools import partial
from typing import Callable

import cv2
import numpy as np

from medge.edge.errors import ConfigError, MissingExtraError
from medge.edge.runtime.openvino import EXTRA as OV_EXTRA  # pip install "medge[openvino]": OpenVINO as an engine
from medge.edge.runtime.openvino import read_openvino  # imports openvino only when a net is read
from medge.edge.runtime.ort import EXTRA as ORT_EXTRA  # pip install "medge[ort]": onnxruntime as an engine
from medge.edge.runtime.ort import read_ort  # imports onnxruntime only when a net is read

AUTO = "auto"  # the engine that is fastest and correct for a bundle on this box, chosen by edge.runtime.choice


@dataclass(frozen=True)
class Engine:
    """One way to run an ONNX model on this box.

    ``read`` takes the model's bytes (or a path) and a compute precision (``f32``; ``bf16`` where
    ``precisions`` has it) and returns a net with ``setInput``, ``forward`` and ``empty`` (a
    ``cv2.dnn.Net`` for OpenCV's engines); ``backends`` are the keys of BACKENDS it can use;
    ``extra`` is the medge extra that brings an engine from outside OpenCV (None for OpenCV's
    own); ``quantized``: it runs int8 QDQ models with integer kernels (``edge.runtime.variants``).
    """

    name: str
    about: str
    read: Callable[..., object]
    backends: tuple[str, ...]
    extra: str | None = None
    precisions: tuple[str, ...] = ("f32",)
    quantized: bool = False


def _read_onnx(flag: int | None, src: bytes | str, precision: str = "f32"):
    """cv2.dnn.readNetFromONNX of bytes or a path; ``flag`` is OpenCV 5's engine (None before 5.0)."""
    if precision != "f32":
        raise ConfigError(f"OpenCV's engines compute in f32 only, not {precision}")
    buf = np.frombuffer(src, np.uint8) if isinstance(src, bytes) else os.fspath(src)
    return cv2.dnn.readNetFromONNX(buf) if flag is None else cv2.dnn.readNetFromONNX(buf, flag)


def _build_has(component: str) -> bool:
    """Whether getBuildInformation says ``component: YES ...``."""
    for line in cv2.getBuildInformation().splitlines():
        key, _, value = line.partition(":")
        if key.strip() == component:
            return value.strip().upper().startswith("YES")
    return False


# name -> (backend, target) of cv2.dnn, for the constants this OpenCV defines; available_backends() says
# which of them this box can run.
BACKENDS = {
    name: (getattr(cv2.dnn, backend), getattr(cv2.dnn, target))
    for name, (backend, target) in {
        "cpu": ("DNN_BACKEND_OPENCV", "DNN_TARGET_CPU"),
        "opencl": ("DNN_BACKEND_OPENCV", "DNN_TARGET_OPENCL"),
        "opencl-fp16": ("DNN_BACKEND_OPENCV", "DNN_TARGET_OPENCL_FP16"),
        "cuda": ("DNN_BACKEND_CUDA", "DNN_TARGET_CUDA"),
        "cuda-fp16": ("DNN_BACKEND_CUDA", "DNN_TARGET_CUDA_FP16"),
    }.items()
    if hasattr(cv2.dnn, backend) and hasattr(cv2.dnn, target)
}
# Engines that some install has, for messages on one that lacks them.
KNOWN_ENGINES = {"classic": "every OpenCV", "new": "OpenCV 5", "ort": "an OpenCV 5 built with ONNX Runtime",
                 "onnxruntime": f"medge's onnxruntime engine: pip install 'medge[{ORT_EXTRA}]'",
                 "openvino": f"medge's OpenVINO engine: pip install 'medge[{OV_EXTRA}]'"}


# Engines from outside OpenCV: name -> (extra, module that must be importable, Engine).
OPTIONAL_ENGINES = {
    "onnxruntime": (ORT_EXTRA, "onnxruntime",
                    Engine("onnxruntime", "onnxruntime's CPU engine (optional: the ort extra; CPU only)",
                           read_ort, ("cpu",), extra=ORT_EXTRA, quantized=True)),
    "openvino": (OV_EXTRA, "openvino",
                 Engine("openvino", "OpenVINO's CPU engine, precision pinned (optional: the openvino extra; CPU only)",
                        read_openvino, ("cpu",), extra=OV_EXTRA, precisions=("f32", "bf16"), quantized=True)),
}


def detect_engines() -> dict[str, Engine]:
    """The engines this OpenCV has, in order of preference when nothing was measured."""
    dnn = cv2.dnn
    if not hasattr(dnn, "ENGINE_CLASSIC"):  # OpenCV 4.x: one engine of its own, readNetFromONNX(src)
        engines = {"classic": Engine("classic", "OpenCV's DNN engine (the only one before OpenCV 5)",
                                     partial(_read_onnx, None), tuple(BACKENDS))}
    else:
        engines = {"classic": Engine("classic", "OpenCV 5's classic engine (that of 4.x; every backend)",
                                     partial(_read_onnx, dnn.ENGINE_CLASSIC), tuple(BACKENDS))}
    if hasattr(dnn, "ENGINE_NEW"):
        engines["new"] = Engine("new", "OpenCV 5's new engine (CPU only)", partial(_read_onnx, dnn.ENGINE_NEW), ("cpu",))
    if hasattr(dnn, "ENGINE_ORT") and _build_has("ONNX Runtime"):
        engines["ort"] = Engine("ort", "OpenCV 5's ONNX Runtime engine (CPU only)", partial(_read_onnx, dnn.ENGINE_ORT),
                                ("cpu",))
    for name, (_, module, engine) in OPTIONAL_ENGINES.items():
        if importlib.util.find_spec(module) is not None:  # finds it without importing it
            engines[name] = engine
    return engines


ENGINES = detect_engines()


def engine_choices() -> list[str]:
    """What --engine accepts here: auto, the engines available, then optional ones whose extra is missing
    (choosing one of those says what to install)."""
    return [AUTO, *ENGINES, *(name for name in OPTIONAL_ENGINES if name not in ENGINES)]


def engines_for(backend: str, extras: bool = True) -> list[str]:
    """The available engines that can use ``backend``, in order of preference (``extras=False``: OpenCV's only)."""
    return [name for name, e in ENGINES.items() if backend in e.backends and (extras or e.extra is None)]


def available_backends() -> list[str]:
    """The BACKENDS this box can run: their target is in ``cv2.dnn.getAvailableTargets(backend)``."""
    names = []
    for name, (backend, target) in BACKENDS.items():
        try:
            targets = [int(t) for t in np.ravel(cv2.dnn.getAvailableTargets(backend))]
        except cv2.error:
            targets = []
        if int(target) in targets:
            names.append(name)
    return names


def check_choices(engine: str, backend: str) -> None:
    """Raise ConfigError for an engine or backend that this OpenCV does not have, or a pair that cannot go together."""
    if backend not in BACKENDS:
        raise ConfigError(f"unknown backend {backend!r}; choose one of {list(BACKENDS)}")
    if engine == AUTO:
        return
    if engine in OPTIONAL_ENGINES and engine not in ENGINES:
        extra, module, _ = OPTIONAL_ENGINES[engine]
        raise MissingExtraError(extra, module, f"engine {engine!r}")
    if engine not in ENGINES:
        known = f" (it is in {KNOWN_ENGINES[engine]})" if engine in KNOWN_ENGINES else ""
        raise ConfigError(f"engine {engine!r} is not available in OpenCV {cv2.__version__}{known}; "
                          f"this one has {list(ENGINES)}: choose one of {engine_choices()}")
    if backend not in ENGINES[engine].backends:
        raise ConfigError(f"backend {backend!r} needs an engine that runs on it ({engines_for(backend)}); "
                          f"the {engine} engine runs on {list(ENGINES[engine].backends)} only")
