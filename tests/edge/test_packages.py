"""The sub-packages of medge.edge: each ``__init__`` says how its modules divide the work and re-exports the
defining modules' own objects, and every library module imports first in a fresh interpreter (no import cycle
that only one import order hides)."""
import importlib
import subprocess
import sys
from pathlib import Path

import pytest

import medge.edge

EDGE = Path(medge.edge.__file__).resolve().parent
PACKAGES = ("inputs", "runtime", "execution")


@pytest.mark.parametrize("name", PACKAGES)
def test_a_package_init_names_its_modules_and_re_exports_their_own_objects(name):
    package = importlib.import_module(f"medge.edge.{name}")
    modules = sorted(p.stem for p in (EDGE / name).glob("*.py") if p.stem != "__init__")
    missing = [m for m in modules if f"\n- ``{m}``: " not in package.__doc__]  # one line each
    assert not missing, f"medge.edge.{name}'s docstring does not say what {missing} do"
    assert package.__all__ and len(set(package.__all__)) == len(package.__all__)
    for attr in package.__all__:
        obj = getattr(package, attr)
        owners = [m for m in modules if getattr(importlib.import_module(f"medge.edge.{name}.{m}"), attr, None) is obj]
        assert owners, f"medge.edge.{name}.{attr} is not a name of its modules"


def test_model_and_prediction_from_medge_edge():
    from medge.edge.model import Model
    from medge.edge.prediction import Prediction

    assert medge.edge.Model is Model and medge.edge.Prediction is Prediction
    assert {"Model", "Prediction"} <= set(medge.edge.__all__)


def test_every_library_module_imports_first_in_a_fresh_interpreter():
    library = sorted(p for p in EDGE.rglob("*.py") if "apps" not in p.relative_to(EDGE).parts)
    names = [".".join(("medge", "edge", *p.relative_to(EDGE).with_suffix("").parts)).removesuffix(".__init__")
             for p in library]
    assert "medge.edge.runtime.verify" in names and "medge.edge.inputs" in names
    failed = {}
    for name in names:
        run = subprocess.run([sys.executable, "-c", f"import {name}"], capture_output=True, text=True)
        if run.returncode:
            failed[name] = run.stderr.strip().splitlines()[-1]
    assert not failed, failed
