"""One installed top-level name, medge, that a user's own files cannot shadow (issue 10)."""
import importlib.metadata
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import medge
from tests.helpers import installed_distribution


def _installed_top_level_names() -> set[str]:
    dist = installed_distribution()
    names = set()
    for f in dist.files or []:
        first = f.parts[0]
        if first.endswith((".dist-info", ".pth")) or first == ".." or first == "__pycache__":
            continue
        if first.startswith("__editable__"):  # the editable finder: read the names it maps
            text = Path(f.locate()).read_text()
            mapping = re.search(r"MAPPING[^=]*=\s*(\{.*?\})", text, re.S)
            names |= {k.split(".")[0] for k in eval(mapping.group(1))}  # noqa: S307 (a dict literal setuptools wrote)
            continue
        names.add(first.removesuffix(".py"))
    return names


def test_the_distribution_installs_only_medge():
    assert _installed_top_level_names() == {"medge"}
    top_level = installed_distribution().read_text("top_level.txt")
    assert top_level is None or top_level.split() == ["medge"]
    assert importlib.metadata.version("medge") == medge.__version__


def test_commands_run_from_a_folder_that_shadows_the_layer_names(user_folder):
    medge_script = Path(sys.executable).with_name("medge")
    for cmd in ([str(medge_script), "--version"], [sys.executable, "-m", "medge", "--help"],
                [sys.executable, "-m", "medge.train", "--help"]):
        res = subprocess.run(cmd, cwd=user_folder, capture_output=True, text=True, timeout=120)
        assert res.returncode == 0, (cmd, res.stderr)
        assert "the user" not in res.stderr + res.stdout
    res = subprocess.run([sys.executable, "-m", "medge", "--version"], cwd=user_folder, capture_output=True, text=True)
    assert res.stdout.strip() == f"medge {medge.__version__}"


def test_opencv_is_the_headless_build_only():
    """grad-cam (the tests' heatmap oracle) must not have brought opencv-python, whose cv2 would replace
    the headless one and need libGL: releases before 1.5.7 depend on it (constraints.txt pins 1.5.7)."""
    installed = {d.metadata["Name"].lower() for d in importlib.metadata.distributions()}
    assert "opencv-python-headless" in installed
    assert not installed & {"opencv-python", "opencv-contrib-python"}, "a non-headless OpenCV is installed"
    assert importlib.metadata.version("grad-cam") == "1.5.7"


def test_the_wheel_holds_no_tests(tmp_path):
    """Test files stay in the repository: the built wheel has no test_*.py and no conftest.py."""
    res = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path),
                          str(Path(__file__).resolve().parents[1])], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-2000:]
    (wheel,) = tmp_path.glob("medge-*.whl")
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
    assert "medge/edge/apps/serve/api.py" in names and "medge/benchmarks/bench.py" in names
    record = [n for n in names if n.endswith(".dist-info/RECORD")]
    assert record
    tests = [n for n in names if Path(n).name.startswith("test_") or Path(n).name == "conftest.py"]
    assert not tests, tests
