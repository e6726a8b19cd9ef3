"""medge.edge.system: what this box and its OpenCV offer, read from /proc/cpuinfo, the affinity and OpenCV's own lines."""
import os
import platform

import cv2
import numpy as np

import medge
from medge.edge import system
from medge.edge.runtime.choice import record_key

BUILD_INFO = """
General configuration for OpenCV 4.10.0 =====================================
  Version control:               4.10.0-dirty
  Platform:
    Timestamp:                   2024-06-17T17:58:32Z
  CPU/HW features:
    Baseline:                    SSE SSE2 SSE3
    Dispatched code generation:  SSE4_1 AVX2 AVX512_SKX
  Parallel framework:            pthreads
  Other third-party libraries:
    Lapack:                      NO
    Version control:             not the first occurrence
"""


def test_opencv_build_keeps_the_reported_keys_first_occurrence_only(monkeypatch):
    monkeypatch.setattr(system.cv2, "getBuildInformation", lambda: BUILD_INFO)
    assert system.opencv_build() == {"Version control": "4.10.0-dirty", "Baseline": "SSE SSE2 SSE3",
                                     "Dispatched code generation": "SSE4_1 AVX2 AVX512_SKX",
                                     "Parallel framework": "pthreads", "Lapack": "NO"}


def test_simd_features_split_what_this_cpu_has_from_what_it_lacks(monkeypatch):
    monkeypatch.setattr(system.cv2, "getCPUFeaturesLine", lambda: "SSE SSE2 SSE3 *SSE4_1 *AVX2 *AVX512_SKX?")
    assert system.simd_features() == {"line": "SSE SSE2 SSE3 *SSE4_1 *AVX2 *AVX512_SKX?",
                                      "available": ["SSE", "SSE2", "SSE3", "SSE4_1", "AVX2"], "missing": ["AVX512_SKX"]}


def test_cpu_model_from_cpuinfo_else_from_platform(monkeypatch, tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nvendor_id\t: GenuineIntel\nmodel name\t: Intel(R) Xeon(R) Gold 6338 CPU\n")
    real_open = open
    monkeypatch.setattr(system, "open", lambda path, *a, **k: real_open(cpuinfo, *a, **k), raising=False)
    assert system.cpu_model() == "Intel(R) Xeon(R) Gold 6338 CPU"

    def unreadable(*_a, **_k):
        raise PermissionError("no /proc here")

    monkeypatch.setattr(system, "open", unreadable, raising=False)
    monkeypatch.setattr(platform, "processor", lambda: "")
    monkeypatch.setattr(platform, "machine", lambda: "aarch64")
    assert system.cpu_model() == "aarch64"


def test_usable_cores_is_the_affinity_else_the_core_count(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 2, 5}, raising=False)
    assert system.usable_cores() == 3
    monkeypatch.delattr(os, "sched_getaffinity")  # macOS, Windows
    monkeypatch.setattr(os, "cpu_count", lambda: 12)
    assert system.usable_cores() == 12
    monkeypatch.setattr(os, "cpu_count", lambda: None)
    assert system.usable_cores() == 1


def test_machine_and_software_records():
    m = system.machine()
    assert set(m) == {"cpu", "cores", "usable_cores", "arch", "simd", "parallel_framework", "opencv_threads"}
    assert m["opencv_threads"] == cv2.getNumThreads() and 1 <= m["usable_cores"] <= os.cpu_count()
    s = system.software()
    assert (s["medge"], s["numpy"], s["opencv"], s["opencv_module"]) == (medge.__version__, np.__version__,
                                                                          cv2.__version__, cv2.__file__)


def test_environment_is_machine_and_software_with_disjoint_keys():
    machine, software = system.machine(), system.software()
    assert not set(machine) & set(software)
    env = system.environment()
    assert env.keys() == machine.keys() | software.keys()
    assert env["opencv"] == cv2.__version__ and env["opencv_threads"] == cv2.getNumThreads()
    assert env["cpu"] == system.cpu_model() and env["opencv_build"] == system.opencv_build()


def test_the_engine_choice_record_uses_the_same_keys():
    env, key = system.environment(), record_key("ab" * 32, "cpu", threads=3)
    assert key["opencv_threads"] == 3 and "threads" not in key
    assert {k: key[k] for k in ("cpu", "cores", "opencv")} == {k: env[k] for k in ("cpu", "cores", "opencv")}
