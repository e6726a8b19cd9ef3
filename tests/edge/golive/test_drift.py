"""medge monitor and edge.golive.drift: records of a box against the bundle's validation scores and training profile."""
import json
from pathlib import Path

import numpy as np
import pytest

from medge.edge import golive as ev
from medge.edge.apps.cli import main
from medge.edge.golive import drift
from medge.edge.model import Model
from medge.train.synth import SynthConfig, generate
from tests.edge.calibrated import calibrated_copy, synth_split


@pytest.fixture(scope="module")
def setup(bundle, tmp_path_factory):
    """A calibrated bundle with the profile of its 8-bit 64 px validation images, and a maker of record files."""
    root = tmp_path_factory.mktemp("drift")
    val, _ = synth_split(root / "d", n=160)
    b = calibrated_copy(bundle, root / "b", val)
    model = Model.load(b)

    made: dict[str, Path] = {}

    def records(name: str, **kw) -> Path:  # one record file per set, made once per module
        if name in made:
            return made[name]
        cfg = {"n": 80, "size": 64, "bits": "8", "val_fraction": 0.0, "test_fraction": 0.0, "seed": 7, **kw}
        generate(root / name, SynthConfig(**cfg))
        paths = sorted(str(p) for p in (root / name).rglob("*.png"))
        out = root / f"{name}.jsonl"
        out.write_text("".join(json.dumps(p.to_record(model.sha256)) + "\n" for p in model.predict(paths, workers=0)))
        made[name] = out
        return out

    return b, model, records


def _monitor(b, tmp_path, *files, extra=()):
    rc = main(["monitor", "--model", str(b), *map(str, files), "--out", str(tmp_path / "m/drift.json"), *extra])
    return rc, json.loads((tmp_path / "m/drift.json").read_text())


def test_records_of_the_same_distribution_are_stable(setup, tmp_path):
    b, model, records = setup
    rc, report = _monitor(b, tmp_path, records("same", seed=9))
    assert (rc, report["verdict"], report["reasons"]) == (0, "stable", [])
    assert report["records"] == 80 and report["files"] == 1
    assert {c["check"] for c in report["checks"]} >= {"score distribution", "positive share", "warning share",
                                                      "bit depth", "image size", "gray_mean"}
    for name in ("md", "scores.png"):
        assert (tmp_path / f"m/drift.{name}").stat().st_size > 0


@pytest.mark.parametrize("shift, check", [({"bits": "16"}, "bit depth"), ({"size": 128}, "image size")])
def test_records_of_a_shifted_set_are_flagged(setup, tmp_path, capsys, shift, check):
    b, model, records = setup
    rc, report = _monitor(b, tmp_path, records("shift_" + "_".join(map(str, shift.values())), **shift))
    assert rc == 1 and report["verdict"] == "drift"
    flagged = {c["check"] for c in report["checks"] if c["drift"]}
    assert check in flagged and "warning share" in flagged
    assert any(check in r or "never seen" in r or "outside" in r for r in report["reasons"])
    assert "verdict: drift" in capsys.readouterr().err


def test_other_models_errors_and_torn_lines_are_left_out_and_counted(setup, tmp_path):
    b, model, records = setup
    lines = records("same", seed=9).read_text().splitlines()
    folder = tmp_path / "box"
    folder.mkdir()
    (folder / "results.jsonl").write_text("\n".join(lines) + "\n")
    other = json.loads(lines[0]) | {"model_sha256": "0" * 64}
    failed = json.loads(lines[1]) | {"error": "x.png: truncated PNG", "label": None, "probabilities": None}
    skipped = json.loads(lines[2]) | {"status": "skipped"}
    malformed = json.loads(lines[3]) | {"probabilities": [0.2, 0.8]}
    (folder / "mixed.jsonl").write_text("\n".join(
        [json.dumps(other), json.dumps(failed), json.dumps(skipped), '{"torn', "[1, 2]", json.dumps({"a": 1}),
         json.dumps(malformed), "x" * (3 << 20)]) + "\n")
    rc, report = _monitor(b, tmp_path, folder, folder / "mixed.jsonl")  # mixed.jsonl given twice: read once
    assert report["records"] == 80 and report["files"] == 2
    assert report["left_out"] == {"another model (model_sha256 differs)": 1, "an error record": 2, "node: skipped": 1,
                                  "not JSON (a torn or foreign line)": 1, "not a record": 1,
                                  "not a medge prediction record": 1, "not a record (a line over 1 MB)": 1}


def test_too_few_records_is_not_called_stable(setup, tmp_path):
    b, model, records = setup
    few = tmp_path / "few.jsonl"
    few.write_text("\n".join(records("same", seed=9).read_text().splitlines()[:20]) + "\n")
    rc, report = _monitor(b, tmp_path, few)
    assert (rc, report["verdict"]) == (0, "too few records") and "at least 50" in report["reasons"][0]


def test_since_keeps_dated_records_and_leaves_undated_ones_out(setup, tmp_path):
    b, model, records = setup
    lines = [json.loads(ln) for ln in records("same", seed=9).read_text().splitlines()]
    dated = tmp_path / "dated.jsonl"
    dated.write_text("".join(json.dumps(r | {"processed_at": f"2026-11-{1 + i % 20:02d}T08:00:00+00:00"}) + "\n"
                             for i, r in enumerate(lines)))
    undated = tmp_path / "undated.jsonl"
    undated.write_text("".join(json.dumps(r) + "\n" for r in lines[:5]))
    rc, report = _monitor(b, tmp_path, dated, undated, extra=("--since", "2026-11-11"))
    assert report["records"] == sum(1 + i % 20 >= 11 for i in range(len(lines)))
    assert report["left_out"]["before --since"] == len(lines) - report["records"]
    assert report["left_out"]["undated (predict records carry no time; --since needs watch or node records)"] == 5


@pytest.mark.parametrize("argv, message", [
    (["--since", "last week"], "--since 'last week'"),
    (["--out", "{tmp}/m/drift.txt"], "give a .json file name"),
])
def test_usage_errors_exit_2(setup, tmp_path, capsys, argv, message):
    b, model, records = setup
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    out = [] if "--out" in argv else ["--out", str(tmp_path / "m/drift.json")]
    assert main(["monitor", "--model", str(b), str(records("same", seed=9)), *out, *argv]) == 2
    assert message in capsys.readouterr().err
    assert main(["monitor", "--model", str(b), str(tmp_path / "missing.jsonl"), "--out", str(tmp_path / "x.json")]) == 2
    assert "no such file or folder of records" in capsys.readouterr().err


def test_an_existing_report_is_not_replaced(setup, tmp_path, capsys):
    b, model, records = setup
    f = records("same", seed=9)
    assert _monitor(b, tmp_path, f)[0] == 0
    before = (tmp_path / "m/drift.json").read_bytes()
    assert main(["monitor", "--model", str(b), str(f), "--out", str(tmp_path / "m/drift.json")]) == 2
    assert "exists already" in capsys.readouterr().err and (tmp_path / "m/drift.json").read_bytes() == before


# -- the score check's statistics ---------------------------------------------------------------------------


def test_chi2_quantile_is_close_to_scipy():
    chi2 = pytest.importorskip("scipy.stats").chi2
    for df in (3, 5, 9, 20, 60):
        for p in (0.9, 0.99, 0.999, 0.9999):
            assert ev.chi2_quantile(p, df) == pytest.approx(chi2.ppf(p, df), rel=0.04 if df < 9 else 0.013)


def _score_check(ref: np.ndarray, cur: np.ndarray) -> dict:
    op = {"positive": "disease", "validation": {"scores": ref.tolist(), "score_of": "disease"}}
    return drift.score_checks([{"probabilities": {"disease": float(s)}} for s in cur], op)[0]


def test_score_drift_rarely_fires_on_small_samples_of_one_distribution_and_fires_on_a_shift():
    """PSI alone (>= 0.25) calls 48 validation cases against 80 records of the same distribution a shift about
    60 % of the time; with the noise floor the whole check (PSI or KS) fires rarely, and still on a real shift."""
    rng = np.random.default_rng(0)
    draws = 300
    same = sum(_score_check(rng.beta(2, 2, 48), rng.beta(2, 2, 80))["drift"] for _ in range(draws))
    psi_alone = sum(ev.psi(rng.beta(2, 2, 48), rng.beta(2, 2, 80))["psi"] >= drift.PSI_DRIFT for _ in range(draws))
    shifted = sum(_score_check(rng.beta(2, 2, 48), rng.beta(5, 2, 80))["drift"] for _ in range(draws))
    assert psi_alone / draws > 0.3  # the problem the floor solves
    assert same / draws < 0.03
    assert shifted / draws > 0.9
