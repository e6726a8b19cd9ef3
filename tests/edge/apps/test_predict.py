import csv
import json
import subprocess
import sys

import numpy as np
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
        assert set(r) == {"path", "label", "probabilities", "model_sha256", "timings_ms", "error"}
        assert r["model_sha256"] == sha
        assert (r["error"] is None) == (r["label"] is not None)
    assert "truncated PNG" in recs[2]["error"] and "file not found" in recs[4]["error"]
    assert "5 input(s), 3 classified, 2 failed" in err


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
                          "--out", str(out), "--threads", "1", "--heatmaps", str(tmp_path / "h")],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 1, res.stderr  # one broken input in the folder
    recs = [json.loads(ln) for ln in out.read_text().splitlines()]
    assert len(recs) == 4 and sum(r["error"] is None for r in recs) == 3
    assert len(list((tmp_path / "h").glob("*.heatmap.png"))) == 3
    assert "Traceback" not in res.stderr


def test_heatmaps_for_a_folder(heat_bundle, folder, tmp_path, capsys):
    bundle, _ = heat_bundle
    heat = tmp_path / "deep" / "heat"  # created with its parents
    (folder / "other").mkdir()
    write_image(folder / "other" / "a.png", xray_like(70, 70, seed=9))  # the same name in another folder
    out = tmp_path / "r.jsonl"
    rc = main(["predict", "--model", str(bundle), str(folder), "--heatmaps", str(heat), "--out", str(out)])
    assert rc == 1  # the broken input fails; the others get heatmaps
    recs = [json.loads(ln) for ln in out.read_text().splitlines()]
    assert [r["heatmap"] for r in recs] == [str(heat / n) if n else None for n in
                                            ["a.heatmap.png", "a.1.heatmap.png", "b.heatmap.png", None, "z.heatmap.png"]]
    assert all(r["heatmap_error"] is None for r in recs) and recs[3]["error"]
    assert sorted(p.name for p in heat.iterdir()) == ["a.1.heatmap.png", "a.heatmap.png", "b.heatmap.png", "z.heatmap.png"]
    from medge.edge.image import read_image
    from medge.edge.model import Model

    overlay = read_image(heat / "a.heatmap.png")  # gray when read back; the file itself is colour
    assert overlay.shape == (96, 96)
    import cv2

    colour = cv2.imdecode(np.frombuffer((heat / "a.heatmap.png").read_bytes(), np.uint8), cv2.IMREAD_COLOR)
    np.testing.assert_array_equal(colour, Model.load(bundle).explain(str(folder / "a.png")).overlay())
    assert "4 heatmap(s) in" in capsys.readouterr().err
    before = {p.name: p.read_bytes() for p in heat.iterdir()}
    # never overwriting: the second run stops before any work, the files untouched
    assert main(["predict", "--model", str(bundle), str(folder), "--heatmaps", str(heat)]) == 2
    err = capsys.readouterr().err
    assert "would overwrite a.heatmap.png, a.1.heatmap.png, b.heatmap.png and 1 more" in err and "--overwrite" in err
    assert {p.name: p.read_bytes() for p in heat.iterdir()} == before
    assert main(["predict", "--model", str(bundle), str(folder), "--heatmaps", str(heat), "--overwrite"]) == 1
    assert not [p for p in heat.iterdir() if p.name.startswith(".")]  # no temporary file left


def test_heatmaps_csv_and_clear_errors(heat_bundle, bundle, folder, tmp_path, capsys):
    (folder / "sub" / "c.png").unlink()
    out = tmp_path / "r.csv"
    assert main(["predict", "--model", str(heat_bundle[0]), str(folder), "--heatmaps", str(tmp_path / "h"),
                 "--out", str(out), "--format", "csv"]) == 0
    rows = list(csv.DictReader(out.open()))
    assert [r["heatmap"] for r in rows] == [str(tmp_path / "h" / f"{n}.heatmap.png") for n in "abz"]
    (tmp_path / "file").write_text("a file, not a folder")
    assert main(["predict", "--model", str(heat_bundle[0]), str(folder), "--heatmaps", str(tmp_path / "file")]) == 2
    assert f"--heatmaps {tmp_path / 'file'}: exists and is not a folder" in capsys.readouterr().err
    # a bundle exported before heatmaps: exit 2 before any work
    old = tmp_path / "old"
    import shutil

    shutil.copytree(bundle, old)
    m = json.loads((old / "model.json").read_text())
    del m["explain"]
    (old / "model.json").write_text(json.dumps(m))
    assert main(["predict", "--model", str(old), str(folder), "--heatmaps", str(tmp_path / "h2")]) == 2
    assert "has no heatmaps" in capsys.readouterr().err and not (tmp_path / "h2").exists()


def test_a_heatmap_that_cannot_be_written_is_reported(heat_bundle, folder, tmp_path, capsys, monkeypatch):
    from medge.edge.apps import predict
    from medge.edge.errors import ImageError

    (folder / "sub" / "c.png").unlink()
    real = predict.write_image_atomic

    def full_disk(path, image):
        if path.name.startswith("b."):
            raise ImageError(path, "cannot write: No space left on device")
        real(path, image)

    monkeypatch.setattr(predict, "write_image_atomic", full_disk)
    rc = main(["predict", "--model", str(heat_bundle[0]), str(folder), "--heatmaps", str(tmp_path / "h")])
    out, err = capsys.readouterr()
    recs = [json.loads(ln) for ln in out.splitlines()]
    assert rc == 1 and [r["heatmap"] is None for r in recs] == [False, True, False]
    assert recs[1]["label"] and "No space left" in recs[1]["heatmap_error"]  # the classification is kept
    assert "3 classified, 0 failed, 2 heatmap(s) in" in err and "(1 could not be written)" in err
