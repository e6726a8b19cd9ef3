"""The README is a front door: short, the two commands first, and every relative link in it and in docs/ resolves."""
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), ROOT / "benchmarks" / "results" / "README.md"]
LINK = re.compile(r"\]\(([^)\s]+)\)")


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation other than - and _ dropped, spaces to -."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    text = page.read_text(encoding="utf-8")
    found = {slug(m.group(1)) for m in re.finditer(r"^#+ (.+)$", text, re.MULTILINE)}
    return found | set(re.findall(r'<a id="([^"]+)"></a>', text))


def test_readme_is_short_with_the_main_job_and_the_tests_first():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert len(readme.splitlines()) <= 300
    blocks = [b.split("```")[0] for b in readme.split("```bash")[1:3]]
    assert blocks[0].strip().endswith("medge demo") and "python -m pytest" in blocks[1]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_resolves(page):
    text = re.sub(r"```.*?```", "", page.read_text(encoding="utf-8"), flags=re.DOTALL)  # not links inside code
    broken = []
    for target in LINK.findall(text):
        if re.match(r"^[a-z]+:", target):  # http:, https:, mailto:
            continue
        path, _, anchor = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        if not dest.exists():
            broken.append(f"{target}: no such file")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            broken.append(f"{target}: no heading #{anchor} in {dest.relative_to(ROOT)}")
    assert not broken, broken


def _resolve(dotted: str):
    """The object a dotted name names: the longest importable module prefix, then attributes."""
    import importlib

    parts = dotted.split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ImportError:
            continue
        for attr in parts[i:]:
            obj = getattr(obj, attr)
        return obj
    raise ImportError(dotted)


def architecture_names(text: str) -> tuple[set[str], set[str]]:
    """(dotted medge names, repository paths) in backticks on the architecture page."""
    ticks = set(re.findall(r"`([^`\s]+)`", text))
    dotted = {t.rstrip("()") for t in ticks if re.fullmatch(r"medge(\.\w+)+(\(\))?", t)}
    paths = {t for t in ticks if re.fullmatch(r"(edge|train|export|benchmarks|tests|pkg)/[\w/.]*", t)}
    return dotted, paths


def test_every_name_on_the_architecture_page_exists():
    text = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    dotted, paths = architecture_names(text)
    assert len(dotted) > 40 and len(paths) > 5  # the page was read
    groups = set(re.findall(r'^\[project\.entry-points\."([\w.]+)"\]', (ROOT / "pyproject.toml").read_text(), re.M))
    assert "medge.commands" in groups
    missing = []
    for name in sorted(dotted - groups):
        try:
            _resolve(name)
        except (ImportError, AttributeError):
            missing.append(name)
    missing += [p for p in sorted(paths) if not (ROOT / p).exists()]
    # the module names in its package table are the package's modules
    rows = re.findall(r"^\| `(medge\.edge(?:\.\w+)?)`(?: \(flat\))? \| ([^|]+) \|", text, re.M)
    assert len(rows) >= 6  # the layers table and the packages table
    for row in rows:
        package = ROOT / row[0].replace("medge.", "", 1).replace(".", "/")
        for module in re.findall(r"`(\w+)`", row[1]):
            if not ((package / f"{module}.py").exists() or (package / module / "__init__.py").exists()):
                missing.append(f"{row[0]}.{module}")
    assert not missing, "names on docs/architecture.md that the code does not have: " + ", ".join(missing)


def test_the_architecture_check_sees_a_wrong_name():
    dotted, paths = architecture_names("`medge.edge.runtime.verify.open_bundle` and `medge.edge.nowhere.thing` "
                                       "in `edge/runtime/` and `edge/gone.py`")
    assert dotted == {"medge.edge.runtime.verify.open_bundle", "medge.edge.nowhere.thing"}
    assert paths == {"edge/runtime/", "edge/gone.py"}
    _resolve("medge.edge.runtime.verify.open_bundle")
    with pytest.raises(ImportError):
        _resolve("nowhere.at_all")
    with pytest.raises(AttributeError):
        _resolve("medge.edge.nowhere_thing")
    assert not (ROOT / "edge/gone.py").exists()
