"""The house: one version from one place, product text that says what is, functions that read as steps."""
import ast
import re
import subprocess
import sys
from pathlib import Path

import medge
from tests.helpers import installed_distribution

ROOT = Path(__file__).resolve().parents[1]


def changelog_top_version() -> str:
    """The version of CHANGELOG.md's first ``## [x.y.z]`` entry."""
    match = re.search(r"^## \[(\d+\.\d+\.\d+)\]", (ROOT / "CHANGELOG.md").read_text(encoding="utf-8"), re.M)
    assert match, "CHANGELOG.md has no '## [x.y.z]' entry"
    return match.group(1)


def test_one_version_for_the_command_the_distribution_and_the_changelog():
    res = subprocess.run([sys.executable, "-m", "medge", "--version"], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == f"medge {medge.__version__}"
    assert installed_distribution().version == medge.__version__ == changelog_top_version()


PRODUCT_FOLDERS = ("edge", "train", "export", "benchmarks", "pkg", "docs")
ISSUE_NUMBER = re.compile(r"issue ?#?[0-9]", re.I)


def product_text_files():
    """Python files, docs and result records of the product (what a user reads), not the tests."""
    for folder in PRODUCT_FOLDERS:
        for path in sorted((ROOT / folder).rglob("*")):
            if path.suffix in (".py", ".md", ".txt", ".rst", ".json", ".toml") and "__pycache__" not in path.parts:
                yield path


def test_product_text_names_no_issue_numbers():
    """Docs and product text say what is; how it came to be belongs in the history (git, CHANGELOG.md)."""
    files = list(product_text_files())
    assert len(files) > 50  # the folders were found
    hits = [f"{path.relative_to(ROOT)}:{n}: {line.strip()}" for path in files
            for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1) if ISSUE_NUMBER.search(line)]
    assert not hits, "\n".join(hits)


MAX_FUNCTION_LINES = 60
CODE_FOLDERS = ("edge", "train", "export", "benchmarks", "pkg")


def test_no_function_is_longer_than_60_lines():
    """A long function hides its steps: the top function should read as a list of named steps.
    Lines from ``def`` to the function's last line, docstring included."""
    files = [p for folder in CODE_FOLDERS for p in sorted((ROOT / folder).rglob("*.py"))]
    assert len(files) > 50
    long = []
    for path in files:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    long.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name}: {lines} lines")
    assert not long, "\n".join(long)
