import csv
import json
import subprocess
import sys

import pytest

from medge.edge.apps.cli import main
from medge.edge.image import write_image
from tests.conftest import xray_like
from tests.edge.apps.test_cli import BLOCK_TORCH


@pytest.fixture
def folder(tmp_path):
    d = tmp_path / "scans"
    (d / "sub").mkdir(parents=True)
    write_image(d / "a.png", xray_like(80, 70, seed=1))
    write_image(d / "sub" / "b.tif", xray_like(90, 60, seed=2, bits=12))
    (d / "sub" / "c.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    write_image(d / "z.jpg", xray_like(50, 50, seed=3))
    (d / "notes.txt").write_text("not an image; ignored by extension")
    return d


def test_jsonl_records_complete_in_order_exit_1_on_failure(bundle, folder, tmp_path, capsys):
    extra = tmp_path / "missing.png"
    rc = main(["predict", "--model", str(bundle), str(folder), str(extra), "--batch-size", "2"])
    assert rc == 1
    out, err = capsys.readouterr()
    recs = [json.loads(ln) for ln in out.splitlines()]
    assert [r["path"] for r in recs] == [str(folder / "a.png"), str(folder / "sub/b.tif"), str(folder / "sub/c.png"),
                                         str(folder / "z.jpg"), str(extra)]
    sha = json.loads((bundle / "model.json").read_text())["model"]["sha256"]
    for r in recs:
        assert set(r) == {"path", "label", "probabilities", "model_sha256", "timings_ms", "error", "warnings", "input"}
        assert r["model_sha256"] == sha
        assert (r["error"] is None) == (r["label"] is not None)
    assert "truncated PNG" in recs[2]["error"] and "file not found" in recs[4]["error"]
    assert "5 input(s), 3 classified (2 with warnings), 2 failed; 1 skipped: 1 not images" in err


def test_all_good_exits_0_and_out_file_is_not_overwritten(bundle, folder, tmp_path, capsys):
    (folder / "sub" / "c.png").unlink()
    out = tmp_path / "results.jsonl"
    assert main(["predict", "--model", str(bundle), str(folder), "--out", str(out)]) == 0
    assert len(out.read_text().splitlines()) == 3
    assert main(["predict", "--model", str(bundle), str(folder), "--out", str(out)]) == 2
    assert "exists already" in capsys.readouterr().err
    assert main(["predict", "--model", str(bundle), str(folder), "--out", str(out), "--overwrite"]) == 0


def test_csv_format(bundle, folder, tmp_path):
    out = tmp_path / "r.csv"
    main(["predict", "--model", str(bundle), str(folder), "--out", str(out), "--format", "csv"])
    rows = list(csv.DictReader(out.open()))
    assert [r["path"] for r in rows][0] == str(folder / "a.png") and len(rows) == 4
    assert set(rows[0]) >= {"label", "p_disease", "p_normal", "inference_ms", "model_sha256", "error"}
    assert rows[2]["error"] and not rows[2]["label"]
    assert abs(float(rows[0]["p_disease"]) + float(rows[0]["p_normal"]) - 1) < 1e-9


def test_bad_bundle_exits_2_with_a_message(tmp_path, capsys):
    assert main(["predict", "--model", str(tmp_path), str(tmp_path)]) == 2
    assert "no model.json manifest" in capsys.readouterr().err


def test_edge_cli_end_to_end_without_torch_or_onnx(bundle, folder, tmp_path):
    out = tmp_path / "r.jsonl"
    res = subprocess.run([sys.executable, "-c", BLOCK_TORCH, "predict", "--model", str(bundle), str(folder),
                          "--out", str(out), "--threads", "1"], capture_output=True, text=True, timeout=120)
    assert res.returncode == 1, res.stderr  # one broken input in the folder
    recs = [json.loads(ln) for ln in out.read_text().splitlines()]
    assert len(recs) == 4 and sum(r["error"] is None for r in recs) == 3
    assert "Traceback" not in res.stderr
