"""What this box and its OpenCV offer: CPU, SIMD, threads, versions, OpenCV's build.

The one environment record, with one set of keys, for ``medge check`` (the acceptance test of a new edge
box), the engine choice's record, the export's engine timings and every benchmark record: ``machine()``
and ``software()``, or both flat in ``environment()``. The thread count is always ``opencv_threads``.
Standard library, numpy and cv2 only. Tested by tests/edge/test_system.py.
"""
from __future__ import annotations

import os
import platform

import cv2
import numpy as np

# Lines of cv2.getBuildInformation() worth reporting (those this build has).
BUILD_KEYS = ("Version control", "Baseline", "Dispatched code generation", "Parallel framework", "Lapack",
              "DNN MLAS", "Protobuf", "OpenCL", "CUDA", "ONNX Runtime", "Inference Engine")


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (Linux), else what ``platform`` says."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def usable_cores() -> int:
    """Cores this process may run on (its CPU affinity; a container's limit shows here)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def opencv_build() -> dict[str, str]:
    """The BUILD_KEYS lines of ``cv2.getBuildInformation()`` that this build has (first occurrence of each)."""
    found: dict[str, str] = {}
    for line in cv2.getBuildInformation().splitlines():
        key, sep, value = line.partition(":")
        key = key.strip()
        if sep and key in BUILD_KEYS and key not in found:
            found[key] = value.strip()
    return found


def simd_features() -> dict:
    """The CPU features OpenCV uses: ``cv2.getCPUFeaturesLine()`` lists the baseline ones,
    then the dispatched ones marked ``*``, each marked ``?`` when this CPU lacks it.

    Returns:
        {"line": the raw line, "available": features OpenCV can use here, "missing": built for but not on this CPU}.
    """
    line = cv2.getCPUFeaturesLine()
    available, missing = [], []
    for token in line.split():
        name = token.strip("*?")
        (missing if token.endswith("?") else available).append(name)
    return {"line": line, "available": available, "missing": missing}


def machine() -> dict:
    """CPU model, logical and usable cores, the SIMD features OpenCV sees, its parallel framework and thread count."""
    return {"cpu": cpu_model(), "cores": os.cpu_count(), "usable_cores": usable_cores(), "arch": platform.machine(),
            "simd": simd_features(), "parallel_framework": opencv_build().get("Parallel framework", "unknown"),
            "opencv_threads": cv2.getNumThreads()}


def software() -> dict:
    """Python, numpy, OpenCV (with where it comes from and its build summary), medge, the OS."""
    from medge import __version__

    return {"medge": __version__, "python": platform.python_version(), "numpy": np.__version__,
            "opencv": cv2.__version__, "opencv_module": getattr(cv2, "__file__", None), "opencv_build": opencv_build(),
            "platform": platform.platform()}


def environment() -> dict:
    """``machine()`` and ``software()`` in one flat record (their keys never overlap)."""
    return {**machine(), **software()}
