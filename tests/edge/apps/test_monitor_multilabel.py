"""medge monitor of a multi-label bundle's records: no shift stays quiet, a shift in one finding flags that finding
(the report, the summary and the per-finding histograms)."""
import json

import cv2
import numpy as np
import pytest

from medge.edge.apps.cli import main
from medge.edge.model import Model
from tests.edge.multilabel import finding_entry, multilabel_copy

FINDINGS = ("Effusion", "Nodule")


def _probabilities(rng, n, nodule_shift=0.0):
    z = rng.normal(0, 1, (n, 2)) + np.array([-1.0, -0.5 + nodule_shift])
    return 1 / (1 + np.exp(-z))


@pytest.fixture(scope="module")
def watched(multilabel_bundle, tmp_path_factory):
    """A copy of the multi-label bundle whose sealed section holds 300 validation scores per finding, and a maker of
    record files of that bundle (synthetic probabilities: monitor reads records, it runs no model)."""
    root = tmp_path_factory.mktemp("mlmon")
    ref = _probabilities(np.random.default_rng(0), 300)
    entries = [{**finding_entry("Effusion", 1.5, 0.4), "validation": {"scores": ref[:, 0].tolist()}},
               {**finding_entry("Nodule", threshold=None), "validation": {"scores": ref[:, 1].tolist()}}]
    b = multilabel_copy(multilabel_bundle, root / "bundle", entries)
    sha = Model.open(b).sha256

    def records(name, seed, nodule_shift=0.0):
        p = _probabilities(np.random.default_rng(seed), 300, nodule_shift)
        lines = [json.dumps({"path": f"{i}.png", "label": "x", "probabilities": dict(zip(FINDINGS, map(float, row), strict=True)),
                             "model_sha256": sha, "error": None, "warnings": [], "input": {"bits": 8}, "task": "multilabel"})
                 for i, row in enumerate(p)]
        (root / f"{name}.jsonl").write_text("\n".join(lines) + "\n")
        return root / f"{name}.jsonl"

    return b, records


def _monitor(b, files, tmp_path):
    rc = main(["monitor", "--model", str(b), *map(str, files), "--out", str(tmp_path / "m/drift.json")])
    return rc, json.loads((tmp_path / "m/drift.json").read_text())


def test_no_shift_stays_quiet(watched, tmp_path):
    b, records = watched
    rc, rep = _monitor(b, [records("same", 1)], tmp_path)
    assert rc == 0 and rep["verdict"] != "drift" and rep["records"] == 300
    per = {(c.get("finding"), c["check"]) for c in rep["checks"]}
    assert {("Effusion", "score distribution"), ("Effusion", "positive share"), ("Nodule", "score distribution")} <= per
    assert ("Nodule", "positive share") not in per  # no threshold: no share to compare
    assert rep["multiplicity"]["findings"] == 2 and not any(c["drift"] for c in rep["checks"])
    assert "Bonferroni" in (tmp_path / "m/drift.md").read_text()
    png = cv2.imread(str(tmp_path / "m/drift.scores.png"))
    assert png.shape[1] > png.shape[0]  # two histograms side by side


def test_a_shift_in_one_finding_flags_that_finding(watched, tmp_path, capsys):
    b, records = watched
    rc, rep = _monitor(b, [records("shifted", 2, nodule_shift=1.0)], tmp_path)
    assert rc == 1 and rep["verdict"] == "drift"
    assert {c["finding"] for c in rep["checks"] if c["drift"]} == {"Nodule"}
    assert "the scores of Nodule moved" in capsys.readouterr().err
    assert "score distribution of Nodule | " in (tmp_path / "m/drift.md").read_text()
