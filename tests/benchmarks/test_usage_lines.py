"""Each research script's docstring says how to run it, and that Usage runs as written: the module exists,
``--help`` shows it, and the arguments of every usage line parse with the script's own parser."""
import argparse
import importlib
import re
import shlex
import subprocess
import sys

import pytest

# The research scripts: run as python -m medge.benchmarks.NAME (bench, parity and demo are medge subcommands).
RESEARCH = ["scaling", "opencv_versions", "recipe", "pointing_game", "heatmap_cost", "serve_load", "train_throughput",
            "edge_throughput", "peak", "node_load", "report", "decode_cost", "trust", "goals"]
USAGE = re.compile(r"^\s*(?:Usage:)?\s*(python -m medge\.benchmarks\.\w+[^\n]*)$", re.M)


class Parsed(Exception):
    """Raised instead of running the script once its arguments parsed."""


def usage_lines(doc: str) -> list[list[str]]:
    """Every ``python -m medge.benchmarks.X ...`` line of a docstring's Usage section, as argv (comments and
    ``(explanations)`` dropped, ``[optional]`` parts kept)."""
    section = doc[doc.index("Usage"):].split("\n\n")[0]
    lines = []
    for match in USAGE.finditer(section):
        text = re.sub(r"\s+\(.*\)\s*$", "", match.group(1)).replace("[", "").replace("]", "")
        lines.append(shlex.split(text, comments=True))
    return lines


@pytest.mark.parametrize("name", RESEARCH)
def test_usage_lines_parse_as_written(name, monkeypatch):
    module = importlib.import_module(f"medge.benchmarks.{name}")
    lines = usage_lines(module.__doc__)
    assert lines, f"{name}: no 'python -m medge.benchmarks.{name}' usage line"
    real_parse = argparse.ArgumentParser.parse_args

    def parse_then_stop(self, args=None, namespace=None):
        raise Parsed(real_parse(self, args, namespace))

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", parse_then_stop)
    for argv in lines:
        assert argv[:3] == ["python", "-m", f"medge.benchmarks.{name}"], argv
        with pytest.raises(Parsed):
            module.main(argv[3:])


@pytest.mark.parametrize("name", ["scaling", "peak", "train_throughput"])
def test_help_shows_the_usage_line(name):
    res = subprocess.run([sys.executable, "-m", f"medge.benchmarks.{name}", "--help"], capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 0, res.stderr
    assert f"python -m medge.benchmarks.{name} " in res.stdout
