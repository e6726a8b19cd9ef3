"""medge.edge is the edge runtime: it must import without torch, torchvision or onnx, and
the layers import downward only (edge <- train <- export <- benchmarks)."""
import ast
import pkgutil
import subprocess
import sys
from pathlib import Path

from medge import edge

ROOT = Path(__file__).resolve().parents[2]
EDGE_MODULES = sorted(m.name for m in pkgutil.walk_packages(edge.__path__, "medge.edge."))
# Optional extras the edge may import inside the functions that need them (never at module level).
LAZY_EXTRAS = {"pydicom", "pylibjpeg", "openjpeg", "libjpeg", "gdcm", "onnxruntime", "fastapi", "uvicorn", "gradio",
               "starlette", "multipart", "python_multipart", "fastapi_offline", "pynetdicom", "highdicom", "ray", "pyarrow"}
# What each layer may import from medge (its own layer and those below it).
LAYERS = {"edge": {"edge"}, "train": {"edge", "train"}, "export": {"edge", "train", "export"},
          "benchmarks": {"edge", "train", "export", "benchmarks"}}


def _imports(path: Path):
    """(module, at_module_level) for every import statement of a source file."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    top = {id(n) for n in tree.body}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from ((a.name, id(node) in top) for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            yield node.module, id(node) in top


def test_importing_every_edge_module_loads_no_heavy_library():
    code = (
        "import importlib, sys\n"
        f"for m in {EDGE_MODULES!r}: importlib.import_module(m)\n"
        "heavy = sorted(m for m in ('torch', 'torchvision', 'onnx', 'onnxsim', 'onnxruntime', 'ray', 'pyarrow', 'pandas')\n"
        "               if m in sys.modules)\n"
        "print(','.join(heavy))\n"
    )
    assert "medge.edge.apps.cli" in EDGE_MODULES and "medge.edge.model" in EDGE_MODULES
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"edge imported {out.stdout.strip()}"


def test_edge_sources_import_only_stdlib_numpy_cv2_and_medge_edge():
    allowed = set(sys.stdlib_module_names) | {"numpy", "cv2"}
    files = sorted((ROOT / "edge").rglob("*.py"))
    assert len(files) > 10
    for path in files:
        for module, at_top in _imports(path):
            root = module.split(".")[0]
            if module.startswith("medge."):
                assert module.startswith("medge.edge"), f"{path.relative_to(ROOT)} imports {module}"
            elif root != "medge" and root != "__future__":
                ok = root in allowed or (not at_top and root in LAZY_EXTRAS)
                assert ok, f"{path.relative_to(ROOT)} imports {module}{' at module level' if at_top else ''}"


def test_layers_import_downward_only():
    for layer, may in LAYERS.items():
        for path in sorted((ROOT / layer).rglob("*.py")):
            for module, _ in _imports(path):
                parts = module.split(".")
                if parts[0] == "medge" and len(parts) > 1:
                    assert parts[1] in may, f"{path.relative_to(ROOT)} ({layer}) imports {module}"
                assert parts[0] not in LAYERS, f"{path.relative_to(ROOT)} imports the bare name {module}"


def test_the_library_never_imports_its_commands():
    """edge/ is a library (image, dicom, preprocess, bundle, runtime, model, ...); edge/apps/ holds the commands on it."""
    library = [p for p in sorted((ROOT / "edge").rglob("*.py")) if "apps" not in p.relative_to(ROOT / "edge").parts]
    assert len(library) > 10
    for path in library:
        for module, _ in _imports(path):
            assert not module.startswith("medge.edge.apps"), f"{path.relative_to(ROOT)} imports the command {module}"


def test_serve_and_node_are_packages_of_the_commands():
    """A command of several modules is one package (its command in ``__init__``), not loose files beside the others."""
    apps = ROOT / "edge" / "apps"
    for command in ("serve", "node"):
        assert (apps / command / "__init__.py").is_file() and f"medge.edge.apps.{command}" in EDGE_MODULES
        assert not sorted(apps.glob(f"{command}_*.py")), f"loose {command}_*.py files beside the {command} package"
    assert {"medge.edge.apps.serve.api", "medge.edge.apps.serve.page", "medge.edge.apps.serve.guard",
            "medge.edge.apps.serve.texts"} <= set(EDGE_MODULES)


def _runtime_imports(path: Path):
    """(module, in_a_function) of every medge.edge import that runs (not those under ``if TYPE_CHECKING:``)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    typing_only = {id(n) for node in tree.body if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
                   for n in ast.walk(node)}
    top = {id(n) for n in tree.body}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and id(node) not in typing_only \
                and (node.module or "").startswith("medge.edge"):
            yield node.module, id(node) not in top


def test_the_library_has_no_import_cycles_hidden_in_functions():
    """Modules of the edge library import each other at module level only, and without a cycle: a
    function-level import is how a cycle hides (image <-> dicom, runtime <-> ort_engine were two)."""
    library = {f"medge.edge.{p.stem}": p for p in sorted((ROOT / "edge").glob("*.py")) if p.stem != "__init__"}
    graph = {}
    for name, path in library.items():
        deps = set()
        for module, in_function in _runtime_imports(path):
            assert not in_function, f"{path.relative_to(ROOT)} imports {module} inside a function"
            deps.add(module)
        graph[name] = deps & set(library)
    done, stack = set(), []

    def visit(node):
        assert node not in stack, f"import cycle: {' -> '.join(stack[stack.index(node):] + [node])}"
        if node in done:
            return
        stack.append(node)
        for dep in sorted(graph[node]):
            visit(dep)
        stack.pop()
        done.add(node)

    for node in sorted(graph):
        visit(node)
