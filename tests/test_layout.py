"""The layout: every library module of edge/ has its tests where a reader looks for them, and every
package folder is installed (and every installed package has its folder)."""
import ast
import re
from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib", reason="tomllib is in the standard library from Python 3.11")

ROOT = Path(__file__).resolve().parents[1]
TESTED_BY = re.compile(r"^\s*Tested by (tests/[\w/]+?\.py)\b", re.M)
PACKAGE_FOLDERS = ("edge", "train", "export", "benchmarks", "pkg")


def library_modules(root: Path) -> list[Path]:
    """Every module of the edge library: the ``.py`` files under edge/, not ``__init__.py`` nor the commands in edge/apps/."""
    edge = root / "edge"
    return [p for p in sorted(edge.rglob("*.py"))
            if p.name != "__init__.py" and p.relative_to(edge).parts[0] != "apps" and "__pycache__" not in p.parts]


def mirrored_test(root: Path, module: Path) -> Path:
    """edge/inputs/image.py -> tests/edge/inputs/test_image.py."""
    rel = module.relative_to(root)
    return root / "tests" / rel.parent / f"test_{rel.name}"


def untested_modules(root: Path) -> list[str]:
    """Library modules with neither a test module at the mirrored path nor a ``Tested by tests/...py`` line
    (naming a file that exists) in their docstring."""
    missing = []
    for module in library_modules(root):
        if mirrored_test(root, module).is_file():
            continue
        doc = ast.get_docstring(ast.parse(module.read_text(encoding="utf-8"))) or ""
        named = [m for m in TESTED_BY.findall(doc) if (root / m).is_file()]
        if not named:
            missing.append(str(module.relative_to(root)))
    return missing


def package_problems(root: Path) -> list[str]:
    """Package folders (an ``__init__.py``) that pyproject.toml's ``[tool.setuptools] packages`` does not list
    under their installed name (``package-dir`` maps names to folders), and listed packages without a folder."""
    setuptools = tomllib.loads((root / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["setuptools"]
    listed, folders = set(setuptools["packages"]), setuptools.get("package-dir", {})

    def folder_of(name: str) -> Path:
        parts = name.split(".")
        for n in range(len(parts), 0, -1):  # the longest mapped name that starts this one
            if (mapped := ".".join(parts[:n])) in folders:
                return root / folders[mapped] / Path(*parts[n:])
        return root / Path(*parts)

    on_disk = {}
    for top in PACKAGE_FOLDERS:
        for init in sorted((root / top).rglob("__init__.py")):
            on_disk[init.parent] = init.parent
    installed = {folder_of(name).resolve(): name for name in listed}
    problems = [f"{p.relative_to(root)}/ is a package that pyproject.toml does not list" for p in sorted(on_disk)
                if p.resolve() not in installed]
    problems += [f"{name} is listed in pyproject.toml but {folder_of(name).relative_to(root)}/__init__.py does not exist"
                 for name in sorted(listed) if not (folder_of(name) / "__init__.py").is_file()]
    return problems


def test_every_library_module_has_its_tests():
    assert len(library_modules(ROOT)) > 20 and ROOT / "edge" / "inputs" / "image.py" in library_modules(ROOT)
    missing = untested_modules(ROOT)
    assert not missing, "no tests/<mirrored path>/test_<module>.py nor a 'Tested by tests/...py' line: " + ", ".join(missing)


def test_every_package_is_installed_and_every_installed_package_exists():
    problems = package_problems(ROOT)
    assert not problems, "\n".join(problems)


def _plant(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text, encoding="utf-8")
    return root


def test_a_planted_module_without_tests_is_found(tmp_path):
    root = _plant(tmp_path, {
        "edge/__init__.py": "", "edge/apps/predict.py": "",  # neither needs a test module of its own
        "edge/model.py": "", "tests/edge/test_model.py": "",
        "edge/inputs/image.py": "", "tests/edge/test_image.py": "",  # at the wrong place: not mirrored
        "edge/paths.py": '"""Paths.\n\nTested by tests/edge/test_outputs.py\n"""\n', "tests/edge/test_outputs.py": "",
        "edge/system.py": '"""System.\n\nTested by tests/edge/test_gone.py\n"""\n',  # names a file that is not there
        "edge/config.py": "# Tested by tests/edge/test_outputs.py (a comment, not the docstring)\n",
    })
    assert untested_modules(root) == ["edge/config.py", "edge/inputs/image.py", "edge/system.py"]


def test_planted_package_mismatches_are_found(tmp_path):
    root = _plant(tmp_path, {
        "pyproject.toml": '[tool.setuptools]\npackages = ["medge", "medge.edge", "medge.edge.gone"]\n'
                          '[tool.setuptools.package-dir]\nmedge = "pkg"\n"medge.edge" = "edge"\n',
        "pkg/__init__.py": "", "edge/__init__.py": "", "edge/inputs/__init__.py": "", "edge/inputs/image.py": "",
        "edge/notes/readme.md": "",  # a folder without __init__.py is no package
    })
    assert package_problems(root) == [
        "edge/inputs/ is a package that pyproject.toml does not list",
        "medge.edge.gone is listed in pyproject.toml but edge/gone/__init__.py does not exist",
    ]
