"""edge/ is the edge runtime: it must import without torch, torchvision or onnx."""
import pkgutil
import subprocess
import sys
from pathlib import Path

import edge

EDGE_MODULES = sorted(f"edge.{m.name}" for m in pkgutil.iter_modules(edge.__path__) if m.name != "__main__")


def test_importing_every_edge_module_loads_no_heavy_library():
    code = (
        "import importlib, sys\n"
        f"for m in {EDGE_MODULES!r}: importlib.import_module(m)\n"
        "heavy = sorted(m for m in ('torch', 'torchvision', 'onnx', 'onnxsim', 'onnxruntime') if m in sys.modules)\n"
        "print(','.join(heavy))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"edge imported {out.stdout.strip()}"


def test_edge_sources_import_only_stdlib_numpy_cv2_and_edge():
    allowed = set(sys.stdlib_module_names) | {"numpy", "cv2", "edge", "pydicom"}  # pydicom: optional, lazily
    for path in Path(edge.__path__[0]).glob("*.py"):
        for line in path.read_text(encoding="utf-8").splitlines():
            words = line.strip().split()
            if len(words) >= 2 and words[0] in ("import", "from"):
                root = words[1].split(".")[0]
                assert root in allowed, f"{path.name} imports {root}"
