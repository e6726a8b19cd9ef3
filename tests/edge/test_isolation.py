"""medge.edge is the edge runtime: it must import without torch, torchvision or onnx, and
the layers import downward only (edge <- train <- export <- benchmarks).

The import graph is read from the sources: every module under a folder (sub-packages included,
a package's ``__init__.py`` as the package itself), every import form resolved to the module it
loads (``from medge.edge.golive import drift`` is an edge to ``medge.edge.golive.drift``,
``from medge.edge.golive import NAME`` to the package). Each check runs on a tree planted with
the fault it guards against, so that it is seen to fail.
"""
import ast
import pkgutil
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

from medge import edge

ROOT = Path(__file__).resolve().parents[2]
EDGE_MODULES = sorted(m.name for m in pkgutil.walk_packages(edge.__path__, "medge.edge."))
# Optional extras the edge may import inside the functions that need them (never at module level).
LAZY_EXTRAS = {"pydicom", "pylibjpeg", "openjpeg", "libjpeg", "gdcm", "onnxruntime", "fastapi", "uvicorn", "gradio",
               "starlette", "multipart", "python_multipart", "fastapi_offline", "pynetdicom", "highdicom", "ray", "pyarrow",
               "openvino", "deflate"}
# The installed name of each folder, and what each layer may import from medge (its own layer and those below).
FOLDERS = {"pkg": "medge", "edge": "medge.edge", "train": "medge.train", "export": "medge.export",
           "benchmarks": "medge.benchmarks"}
LAYERS = {"edge": {"edge"}, "train": {"edge", "train"}, "export": {"edge", "train", "export"},
          "benchmarks": {"edge", "train", "export", "benchmarks"}}
APPS = "medge.edge.apps"
# Modules of medge.edge.apps that the commands share (options, records) or that dispatch to them (cli).
SHARED_APPS = {f"{APPS}.cli", f"{APPS}.options", f"{APPS}.records"}


# -- reading the graph ----------------------------------------------------------------------------------------------

def read_tree(folder: Path, package: str) -> dict[str, str]:
    """Module name -> source of every ``.py`` under ``folder``, installed as ``package``."""
    sources = {}
    for path in sorted(folder.rglob("*.py")):
        parts = path.relative_to(folder).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        sources[".".join((package, *parts))] = path.read_text(encoding="utf-8")
    return sources


def read_layers(root: Path) -> dict[str, str]:
    """read_tree of every layer's folder under ``root`` (those that exist)."""
    sources = {}
    for folder, package in FOLDERS.items():
        if (root / folder).is_dir():
            sources.update(read_tree(root / folder, package))
    return sources


@dataclass(frozen=True)
class Import:
    module: str  # what the statement loads, resolved: a module or package of the tree where it is one
    line: int
    in_function: bool  # runs when a function is called, not when the module is imported
    typing_only: bool  # under ``if TYPE_CHECKING:``: never runs


def imports(name: str, sources: dict[str, str]) -> list[Import]:
    """Every import statement of module ``name`` (its source in ``sources``), resolved.

    ``from P import N`` is ``P.N`` where that is a module of ``sources`` (a file or a sub-package),
    ``P`` otherwise; relative imports are resolved against the module's package.
    """
    found = []
    is_package = any(m.startswith(name + ".") for m in sources)
    own_package = name if is_package else name.rpartition(".")[0]

    def visit(node, in_function, typing_only):
        if isinstance(node, ast.Import):
            found.extend(Import(a.name, node.lineno, in_function, typing_only) for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = own_package.split(".")[: len(own_package.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, *([node.module] if node.module else [])])
            for alias in node.names:
                target = f"{base}.{alias.name}"
                found.append(Import(target if target in sources else base, node.lineno, in_function, typing_only))
        inner = in_function or isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
        for child in ast.iter_child_nodes(node):
            guarded = isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test) and child in node.body
            visit(child, inner, typing_only or guarded)

    visit(ast.parse(sources[name]), False, False)
    return found


def library(sources: dict[str, str]) -> list[str]:
    """The modules of the edge library: medge.edge and its sub-packages, not the commands in medge.edge.apps."""
    return sorted(m for m in sources if (m == "medge.edge" or m.startswith("medge.edge."))
                  and m != APPS and not m.startswith(APPS + "."))


def function_level_imports(sources: dict[str, str]) -> list[str]:
    """Library modules importing medge.edge inside a function (how a cycle hides), TYPE_CHECKING aside."""
    return [f"{name}:{i.line} imports {i.module} inside a function" for name in library(sources)
            for i in imports(name, sources) if i.in_function and not i.typing_only
            and (i.module == "medge.edge" or i.module.startswith("medge.edge."))]


def import_graph(sources: dict[str, str], modules: list[str]) -> dict[str, set[str]]:
    """module -> the modules of ``modules`` it imports when it is imported (TYPE_CHECKING imports aside)."""
    keep = set(modules)
    return {name: {i.module for i in imports(name, sources) if not i.typing_only} & keep for name in modules}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """An import cycle as [a, b, ..., a], or None."""
    done, stack = set(), []

    def visit(node):
        if node in stack:
            return stack[stack.index(node):] + [node]
        if node in done:
            return None
        stack.append(node)
        for dep in sorted(graph[node]):
            if cycle := visit(dep):
                return cycle
        stack.pop()
        done.add(node)
        return None

    for node in sorted(graph):
        if cycle := visit(node):
            return cycle
    return None


def upward_imports(sources: dict[str, str]) -> list[str]:
    """Imports against the layering: a layer importing one above it, a bare layer name, the library importing a command."""
    found = []
    for name in sorted(sources):
        parts = name.split(".")
        layer = parts[1] if len(parts) > 1 and parts[1] in LAYERS else None
        for i in imports(name, sources):
            target = i.module.split(".")
            if layer and target[0] == "medge" and len(target) > 1 and target[1] not in LAYERS[layer]:
                found.append(f"{name}:{i.line} ({layer}) imports {i.module}")
            if target[0] in LAYERS:
                found.append(f"{name}:{i.line} imports the bare name {i.module}")
            if name in library(sources) and (i.module == APPS or i.module.startswith(APPS + ".")):
                found.append(f"{name}:{i.line} (the library) imports the command {i.module}")
    return found


def command_of(module: str) -> str | None:
    """The command a module of medge.edge.apps belongs to (a module directly in apps/, or a package there), or None."""
    if not module.startswith(APPS + ".") or any(module == s or module.startswith(s + ".") for s in SHARED_APPS):
        return None
    return ".".join(module.split(".")[:4])


def commands_importing_commands(sources: dict[str, str]) -> list[str]:
    """Imports from one command (its modules) of another command: what two commands share belongs in the library."""
    found = []
    for name in sorted(sources):
        if (command := command_of(name)) is None:
            continue
        for i in imports(name, sources):
            other = command_of(i.module)
            if other is not None and other != command:
                found.append(f"{name}:{i.line} imports {i.module}")
    return found


# -- the repository -------------------------------------------------------------------------------------------------

SOURCES = read_layers(ROOT)


def test_the_whole_tree_is_read():
    """Sub-packages included, each ``__init__`` as its package, and every module that Python finds."""
    edge_modules = {m for m in SOURCES if m.startswith("medge.edge.")}
    assert edge_modules == set(EDGE_MODULES)
    assert {"medge.edge", "medge.edge.golive", "medge.edge.golive.drift", "medge.edge.apps.serve.page"} <= set(SOURCES)
    assert "medge.edge.apps.check" not in library(SOURCES) and "medge.edge.inputs.image" in library(SOURCES)


def test_from_package_import_module_is_an_edge_to_the_module():
    monitor = {i.module for i in imports("medge.edge.apps.monitor", SOURCES)}
    assert "medge.edge.golive.drift" in monitor and "medge.edge.golive" not in monitor  # from medge.edge.golive import drift
    package = {i.module for i in imports("medge.edge", SOURCES)}  # the package's __init__: its imports are its edges
    assert {"medge.edge.errors", "medge.edge.inputs.image", "medge.edge.preprocess"} <= package


def test_importing_every_edge_module_loads_no_heavy_library():
    code = (
        "import importlib, sys\n"
        f"for m in {EDGE_MODULES!r}: importlib.import_module(m)\n"
        "heavy = sorted(m for m in ('torch', 'torchvision', 'onnx', 'onnxsim', 'onnxruntime', 'openvino', 'ray', 'pyarrow',\n"
        "                           'pandas')\n"
        "               if m in sys.modules)\n"
        "print(','.join(heavy))\n"
    )
    assert "medge.edge.apps.cli" in EDGE_MODULES and "medge.edge.model" in EDGE_MODULES
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"edge imported {out.stdout.strip()}"


def test_edge_sources_import_only_stdlib_numpy_cv2_and_medge_edge():
    allowed = set(sys.stdlib_module_names) | {"numpy", "cv2"}
    edge_modules = [m for m in SOURCES if m == "medge.edge" or m.startswith("medge.edge.")]
    assert len(edge_modules) > 10
    wrong = []
    for name in edge_modules:
        for i in imports(name, SOURCES):
            root = i.module.split(".")[0]
            lazy = i.in_function or i.typing_only
            if root not in ("medge", "__future__") and not (root in allowed or (lazy and root in LAZY_EXTRAS)):
                wrong.append(f"{name}:{i.line} imports {i.module}{'' if lazy else ' at module level'}")
    assert not wrong, "\n".join(wrong)


def test_layers_import_downward_only_and_the_library_never_imports_its_commands():
    """edge/ is a library (inputs, runtime, execution, golive, model, ...); edge/apps/ holds the commands on it."""
    assert len(library(SOURCES)) > 10
    wrong = upward_imports(SOURCES)
    assert not wrong, "\n".join(wrong)


def test_the_library_has_no_import_cycles_hidden_in_functions():
    """Modules of the edge library import each other at module level only, and without a cycle: a
    function-level import is how a cycle hides (image <-> dicom, runtime <-> ort_engine were two)."""
    wrong = function_level_imports(SOURCES)
    assert not wrong, "\n".join(wrong)
    cycle = find_cycle(import_graph(SOURCES, library(SOURCES)))
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_commands_never_import_commands():
    """A command (a module directly in edge/apps/, or the package serve or node) imports the library and the
    shared option and record modules, never another command: what two commands share is library code."""
    assert {command_of(m) for m in SOURCES} - {None} >= {f"{APPS}.{c}" for c in ("check", "predict", "serve", "node")}
    wrong = commands_importing_commands(SOURCES)
    assert not wrong, "\n".join(wrong)


def test_serve_and_node_are_packages_of_the_commands():
    """A command of several modules is one package (its command in ``__init__``), not loose files beside the others."""
    apps = ROOT / "edge" / "apps"
    for command in ("serve", "node"):
        assert (apps / command / "__init__.py").is_file() and f"medge.edge.apps.{command}" in EDGE_MODULES
        assert not sorted(apps.glob(f"{command}_*.py")), f"loose {command}_*.py files beside the {command} package"
    assert {"medge.edge.apps.serve.api", "medge.edge.apps.serve.page", "medge.edge.apps.serve.guard",
            "medge.edge.apps.serve.texts"} <= set(EDGE_MODULES)


# -- the checks fail on a tree with the fault planted ---------------------------------------------------------------

def plant(root: Path, files: dict[str, str]) -> dict[str, str]:
    """Write ``files`` (path -> source) under ``root``, with empty ``__init__.py`` where missing; read the layers back."""
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text), encoding="utf-8")
    for folder in {p.parent for p in root.rglob("*.py")}:
        if not (folder / "__init__.py").exists():
            (folder / "__init__.py").write_text("", encoding="utf-8")
    return read_layers(root)


def test_a_planted_cycle_across_a_sub_package_is_found(tmp_path):
    clean = {"edge/a.py": "from medge.edge.sub import b\n", "edge/sub/b.py": "X = 1\n"}
    sources = plant(tmp_path / "clean", clean)
    assert find_cycle(import_graph(sources, library(sources))) is None
    # a -> sub.b -> a, each edge written as ``from package import module``
    sources = plant(tmp_path / "cycle", {**clean, "edge/sub/b.py": "from medge.edge import a\n"})
    assert find_cycle(import_graph(sources, library(sources))) == ["medge.edge.a", "medge.edge.sub.b", "medge.edge.a"]


def test_a_planted_cycle_through_a_package_init_is_found(tmp_path):
    # from medge.edge.sub import NAME (not a module): an edge to the package, whose __init__ imports a
    sources = plant(tmp_path, {"edge/a.py": "from medge.edge.sub import NAME\n",
                               "edge/sub/__init__.py": "from medge.edge.a import X as NAME\n"})
    assert find_cycle(import_graph(sources, library(sources))) == ["medge.edge.a", "medge.edge.sub", "medge.edge.a"]


def test_a_planted_relative_import_is_resolved(tmp_path):
    sources = plant(tmp_path, {"edge/sub/a.py": "from . import b\nfrom ..c import Y\n", "edge/sub/b.py": "",
                               "edge/c.py": "import medge.edge.sub.a\n"})
    assert {i.module for i in imports("medge.edge.sub.a", sources)} == {"medge.edge.sub.b", "medge.edge.c"}
    assert find_cycle(import_graph(sources, library(sources))) == ["medge.edge.c", "medge.edge.sub.a", "medge.edge.c"]


def test_planted_upward_imports_are_found(tmp_path):
    sources = plant(tmp_path, {
        "edge/sub/a.py": "from medge.train import engine\n",  # the edge importing a layer above it
        "edge/sub/b.py": "def f():\n    import medge.export.cli\n",  # inside a function too
        "edge/c.py": "from medge.edge import apps\n",  # the library importing the commands' package
        "edge/d.py": "from medge.edge.apps.predict import run\n",
        "edge/apps/predict.py": "from medge.edge.sub import a\n",  # a command importing the library: fine
        "train/engine.py": "from medge.edge.sub import a\nfrom medge.benchmarks import bench\n",
        "benchmarks/bench.py": "import edge\n",
    })
    assert upward_imports(sources) == [
        "medge.benchmarks.bench:1 imports the bare name edge",
        "medge.edge.c:1 (the library) imports the command medge.edge.apps",
        "medge.edge.d:1 (the library) imports the command medge.edge.apps.predict",
        "medge.edge.sub.a:1 (edge) imports medge.train.engine",
        "medge.edge.sub.b:2 (edge) imports medge.export.cli",
        "medge.train.engine:2 (train) imports medge.benchmarks.bench",
    ]


def test_a_planted_function_level_import_is_found(tmp_path):
    sources = plant(tmp_path, {
        "edge/sub/a.py": """\
            from typing import TYPE_CHECKING

            if TYPE_CHECKING:
                from medge.edge.b import B  # never runs: allowed
            def f():
                from medge.edge import b
                return b
            """,
        "edge/b.py": "def g():\n    import numpy\n",
        "edge/apps/watch.py": "def run():\n    from medge.edge.b import g\n",  # commands may import lazily
    })
    assert function_level_imports(sources) == ["medge.edge.sub.a:6 imports medge.edge.b inside a function"]


def test_a_planted_command_importing_a_command_is_found(tmp_path):
    sources = plant(tmp_path, {
        "edge/apps/cli.py": "from medge.edge.apps import predict, serve\n",  # the dispatcher: not a command
        "edge/apps/options.py": "from medge.edge import model\n",
        "edge/apps/predict.py": "from medge.edge.apps.options import X\n",
        "edge/apps/watch.py": "from medge.edge.apps import predict\n",
        "edge/apps/serve/__init__.py": "from medge.edge.apps.serve.page import build\n",  # inside one command: fine
        "edge/apps/serve/page.py": "def build():\n    from medge.edge.apps.node.scp import self_test\n",
        "edge/apps/node/scp.py": "from medge.edge.apps.records import Writer\n",
        "edge/model.py": "",
    })
    assert commands_importing_commands(sources) == [
        "medge.edge.apps.serve.page:2 imports medge.edge.apps.node.scp",
        "medge.edge.apps.watch:1 imports medge.edge.apps.predict",
    ]
