"""medge.edge.system: the one environment record, whose keys check, the engine choice, export and the benchmarks share."""
import os

import cv2

from medge.edge import system
from medge.edge.runtime.choice import record_key


def test_environment_is_machine_and_software_with_disjoint_keys():
    machine, software = system.machine(), system.software()
    assert not set(machine) & set(software)
    env = system.environment()
    assert env.keys() == machine.keys() | software.keys()
    assert env["opencv"] == cv2.__version__ and env["opencv_threads"] == cv2.getNumThreads()
    assert env["cores"] == os.cpu_count() and 1 <= env["usable_cores"] <= env["cores"]
    assert env["cpu"] == system.cpu_model() and env["opencv_build"] == system.opencv_build()


def test_the_engine_choice_record_uses_the_same_keys():
    env, key = system.environment(), record_key("ab" * 32, "cpu", threads=3)
    assert key["opencv_threads"] == 3 and "threads" not in key
    assert {k: key[k] for k in ("cpu", "cores", "opencv")} == {k: env[k] for k in ("cpu", "cores", "opencv")}


def test_simd_features_split_the_line_into_available_and_missing():
    s = system.simd_features()
    assert s["line"] == cv2.getCPUFeaturesLine()
    tokens = s["line"].split()
    assert len(s["available"]) + len(s["missing"]) == len(tokens)
    assert set(s["missing"]) == {t.strip("*?") for t in tokens if t.endswith("?")}


def test_opencv_build_keeps_only_the_known_keys_present_in_the_build():
    build = system.opencv_build()
    assert set(build) <= set(system.BUILD_KEYS)
    info = cv2.getBuildInformation()
    assert all(k in info for k in build)
