"""The README's Quick start must be what CI runs."""
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _ci_commands():
    lines = (ROOT / ".ci" / "run").read_text().splitlines()
    marks = [i for i, ln in enumerate(lines) if ln.startswith("# --- README:")]
    assert len(marks) == 2, "expected the install and test markers in .ci/run"
    return [lines[i + 1] for i in marks]


def test_ci_runs_the_readme_commands():
    readme = (ROOT / "README.md").read_text()
    install, test = _ci_commands()
    blocks = [b.split("```")[0].strip() for b in readme.split("```bash")[1:3]]
    assert blocks[0].startswith(install), "first Quick-start command must install as CI does"
    assert blocks[1] == f"{install} && {test}", "second Quick-start command must be CI's install + test"
