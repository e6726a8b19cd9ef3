import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from medge.edge.apps.cli import main
from medge.edge.inputs.image import write_image
from tests.conftest import xray_like
from tests.helpers import BLOCK_TORCH

try:
    import pydicom
except ImportError:  # the dicom extra is optional
    pydicom = None


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
        assert set(r) == {"path", "label", "probabilities", "threshold", "calibrated", "logits", "model_sha256", "runtime",
                          "timings_ms", "error", "warnings", "input"}
        assert r["runtime"]["variant"] == "fp32" and r["runtime"]["engine"]  # what computed it, in every record
        assert r["model_sha256"] == sha
        assert (r["error"] is None) == (r["label"] is not None)
    assert "truncated PNG" in recs[2]["error"] and "file not found" in recs[4]["error"]
    assert "5 input(s), 3 classified (3 with warnings), 2 failed; 1 skipped: 1 not images" in err


def test_all_good_exits_0_and_out_file_is_not_overwritten(bundle, folder, tmp_path, capsys):
    (folder / "sub" / "c.png").unlink()
    out = tmp_path / "new" / "folders" / "results.jsonl"  # parent folders are created
    assert main(["predict", "--model", str(bundle), str(folder), "--out", str(out)]) == 0
    assert len(out.read_text().splitlines()) == 3
    assert f"wrote records: {out}" in capsys.readouterr().err
    out.write_text("mine")
    # refused before any work: even a bundle that does not exist is not looked at
    assert main(["predict", "--model", str(tmp_path / "nothing"), str(folder), "--out", str(out)]) == 2
    assert "exists already (use --overwrite" in capsys.readouterr().err and out.read_text() == "mine"
    assert main(["predict", "--model", str(bundle), str(folder), "--out", str(out), "--overwrite"]) == 0
    assert len(out.read_text().splitlines()) == 3
    assert [p.name for p in out.parent.iterdir()] == ["results.jsonl"]  # no temporary file left


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


NON_UTF8 = os.fsdecode(b"Thorax_M\xfcller_\xff.png")  # Latin-1 bytes from a Windows share: not UTF-8
SHIPPED = None if pydicom is None else Path(pydicom.__file__).parent / "data" / "test_files"


def _hospital_folder(tmp_path) -> Path:
    """What a hospital folder holds: PNG/JPEG, compressed and extension-less DICOM (pydicom's shipped files, real
    scanner output), a non-UTF-8 name, a PNG named .dcm, a FIFO, a dangling link, a DICOMDIR, a text file."""
    d = tmp_path / "pacs"
    (d / "series").mkdir(parents=True)
    write_image(d / "chest.png", xray_like(300, 256, seed=1))
    write_image(d / "chest16.png", xray_like(300, 256, seed=2, bits=12))
    write_image(d / "film.jpg", xray_like(280, 240, seed=3))
    write_image(d / NON_UTF8, xray_like(300, 256, seed=4))
    write_image(d / "x.png", xray_like(256, 256, seed=5))
    os.rename(d / "x.png", d / "mislabelled.dcm")  # a PNG named .dcm is a PNG
    for name, target in [("MR_small_jp2klossless.dcm", "j2k.dcm"), ("MR_small_jpeg_ls_lossless.dcm", "jpegls.dcm"),
                         ("MR_small_RLE.dcm", "rle.dcm"), ("JPEG2000.dcm", "series/1.2.826.0.1.3680043.8.498.1"),
                         ("MR_small.dcm", "series/IM000001"), ("dicomdirtests/TINY_ALPHA/DICOMDIR", "DICOMDIR")]:
        shutil.copy(SHIPPED / name, d / target)
    (d / "notes.txt").write_text("report to follow\n")
    os.mkfifo(d / "pipe")
    os.symlink(d / "gone.png", d / "dangling.png")
    return d


@pytest.mark.skipif(pydicom is None, reason="the dicom extra is not installed")
def test_a_hospital_folder_gives_one_record_per_entry(bundle, tmp_path):
    """The issue's done-when: every readable image classified, one record per entry, exit 1, nothing silent."""
    d = _hospital_folder(tmp_path)
    res = subprocess.run([sys.executable, "-m", "medge", "predict", "--model", str(bundle), str(d), "--verbose"],
                         capture_output=True, timeout=300)  # stdout: a real pipe, as in a shell
    assert res.returncode == 1, res.stderr.decode(errors="replace")
    recs = [json.loads(line) for line in res.stdout.decode("utf-8").splitlines()]
    by_name = {os.path.relpath(r["path"], d): r for r in recs}
    assert sorted(by_name) == sorted([NON_UTF8, "chest.png", "chest16.png", "dangling.png", "film.jpg", "j2k.dcm",
                                      "jpegls.dcm", "mislabelled.dcm", "pipe", "rle.dcm",
                                      "series/1.2.826.0.1.3680043.8.498.1", "series/IM000001"])
    failed = {name for name, r in by_name.items() if r["error"]}
    assert failed == {"dangling.png", "pipe"}
    assert "broken link" in by_name["dangling.png"]["error"] and "named pipe" in by_name["pipe"]["error"]
    assert by_name["mislabelled.dcm"]["input"]["format"] == "png"
    assert by_name["series/IM000001"]["input"]["format"] == "dicom"
    assert by_name["j2k.dcm"]["input"]["decoder"].startswith("python-gdcm")
    assert by_name["rle.dcm"]["input"]["decoder"].startswith("pydicom")
    assert os.fsencode(by_name[NON_UTF8]["path"]).endswith(b"Thorax_M\xfcller_\xff.png")  # exactly the bytes
    assert all(r["label"] for n, r in by_name.items() if n not in failed)
    assert any("tiny image (64x64" in w for w in by_name["series/IM000001"]["warnings"])
    err = res.stderr.decode("utf-8")
    assert "12 input(s), 10 classified (4 with warnings), 2 failed; 2 skipped: " in err
    assert "1 a DICOMDIR (the index of a PACS export or CD)" in err and "1 not images" in err
    assert "skipped " in err and "notes.txt: not an image" in err and "Traceback" not in err


def test_non_utf8_names_never_crash_any_output(bundle, tmp_path, capsys):
    d = tmp_path / "share"
    d.mkdir()
    write_image(d / NON_UTF8, xray_like(80, 70))
    write_image(d / "z_after.png", xray_like(80, 70, seed=2))
    assert main(["predict", "--model", str(bundle), str(d)]) == 0
    recs = [json.loads(ln) for ln in capsys.readouterr().out.splitlines()]
    assert os.fsencode(recs[0]["path"]).endswith(b"/Thorax_M\xfcller_\xff.png") and recs[1]["path"].endswith("z_after.png")
    for fmt in ("jsonl", "csv"):
        out = tmp_path / f"r.{fmt}"
        assert main(["predict", "--model", str(bundle), str(d), "--out", str(out), "--format", fmt]) == 0
        text = out.read_text(encoding="utf-8")  # valid UTF-8: the undecodable bytes are \udcXX escapes
        assert "Thorax_M\\udcfcller_\\udcff.png" in text and "z_after.png" in text


def test_empty_folder_and_strict_and_internal_errors(bundle, tmp_path, capsys, monkeypatch):
    (tmp_path / "empty").mkdir()
    assert main(["predict", "--model", str(bundle), str(tmp_path / "empty")]) == 1
    (rec,) = [json.loads(ln) for ln in capsys.readouterr().out.splitlines()]
    assert rec["error"].endswith("empty: the folder is empty")
    write_image(tmp_path / "small.png", xray_like(40, 40))
    assert main(["predict", "--model", str(bundle), str(tmp_path / "small.png")]) == 0  # labelled, with a warning
    assert "tiny image" in json.loads(capsys.readouterr().out)["warnings"][0]
    assert main(["predict", "--model", str(bundle), str(tmp_path / "small.png"), "--strict"]) == 1
    assert "refused (strict mode): tiny image" in json.loads(capsys.readouterr().out)["error"]

    from medge.edge.execution import run as execution

    def broken(path, max_pixels):
        raise ZeroDivisionError("boom")

    monkeypatch.setattr(execution, "load_image", broken)  # where predict reads files
    assert main(["predict", "--model", str(bundle), str(tmp_path / "small.png")]) == 3  # a bug, not a bad input
    out, err = capsys.readouterr()
    assert "internal error (ZeroDivisionError: boom); this is a bug in medge" in json.loads(out)["error"]
    assert "hit an internal error" in err
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
    from medge.edge.inputs.image import read_image
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
    assert f"{tmp_path / 'file'}: is a file: give a folder for the heatmaps" in capsys.readouterr().err
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
    real = predict.write_image

    def full_disk(path, image):
        if path.name.startswith("b."):
            raise ImageError(path, "cannot write: No space left on device")
        real(path, image)

    monkeypatch.setattr(predict, "write_image", full_disk)
    rc = main(["predict", "--model", str(heat_bundle[0]), str(folder), "--heatmaps", str(tmp_path / "h")])
    out, err = capsys.readouterr()
    recs = [json.loads(ln) for ln in out.splitlines()]
    assert rc == 1 and [r["heatmap"] is None for r in recs] == [False, True, False]
    assert recs[1]["label"] and "No space left" in recs[1]["heatmap_error"]  # the classification is kept
    assert "3 classified (3 with warnings), 0 failed" in err and "2 heatmap(s) in" in err and "(1 could not be written)" in err


def test_ctrl_c_says_how_many_records_were_kept_where_and_how_to_finish(bundle, folder, tmp_path, capsys, monkeypatch):
    from medge.edge.apps import predict as predict_app

    real = predict_app.predictions

    def cut_short(*args, **kwargs):  # Ctrl-C after the second record
        for i, pred in enumerate(real(*args, **kwargs)):
            if i == 2:
                raise KeyboardInterrupt
            yield pred

    monkeypatch.setattr(predict_app, "predictions", cut_short)
    out = tmp_path / "r.jsonl"
    assert main(["predict", "--model", str(bundle), str(folder), "--out", str(out)]) == 130
    err = capsys.readouterr().err
    partial = tmp_path / ".r.jsonl.partial"
    assert not out.exists() and len(partial.read_text().splitlines()) == 2  # nothing lost, nothing passed as complete
    assert "medge predict: interrupted" in err and f"what was written so far is in {partial}" in err
    assert "2 of 4 record(s) were written before the interrupt" in err and "medge batch --out FILE" in err
