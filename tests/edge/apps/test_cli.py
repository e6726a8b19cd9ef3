import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from medge.edge.apps.cli import main
from medge.edge.inputs.image import read_image, write_image
from tests.conftest import xray_like
from tests.helpers import medge_without_torch


def test_help_lists_subcommands(capsys):
    with pytest.raises(SystemExit) as info:
        main(["--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert "preview" in out


def test_every_command_has_a_help_page(capsys):
    """Each subcommand's --help renders (a '%' in a help text once broke medge validate --help)."""
    from medge.edge.apps.cli import build_parser

    sub = next(a for a in build_parser()._actions if isinstance(a, __import__("argparse")._SubParsersAction))
    assert {"predict", "validate", "check"} <= set(sub.choices)
    for name in sub.choices:
        with pytest.raises(SystemExit) as info:
            main([name, "--help"])
        assert info.value.code == 0, name
        assert f"usage: medge {name}" in capsys.readouterr().out, name


def test_console_script_help():
    medge = Path(sys.executable).with_name("medge")  # the venv's script, active or not
    out = subprocess.run([str(medge), "--help"], capture_output=True, text=True, check=True).stdout
    assert "preview" in out and "usage: medge" in out


def test_preview_writes_one_picture_per_input(tmp_path, capsys):
    src = tmp_path / "in"
    (src / "sub").mkdir(parents=True)
    write_image(src / "a.png", xray_like(300, 200))
    write_image(src / "sub" / "a.png", xray_like(120, 160, bits=12))  # same name, 16-bit
    out = tmp_path / "out"
    assert main(["preview", str(src), "--out", str(out)]) == 0
    files = sorted(p.name for p in out.iterdir())
    assert files == ["a.1.preview.png", "a.preview.png"]
    pic = read_image(out / "a.preview.png")
    assert pic.dtype == np.uint8 and pic.shape[0] == 320 + 28
    # four panels: original (aspect kept) + three more, with gaps between them
    assert pic.shape[1] > 320 * 3
    # Running again refuses before any work (exit 2, files untouched), naming the files; --overwrite replaces them.
    before = {p: p.stat().st_mtime_ns for p in out.iterdir()}
    assert main(["preview", str(src), "--out", str(out)]) == 2
    assert "would overwrite a.preview.png, a.1.preview.png (use --overwrite" in capsys.readouterr().err
    assert {p: p.stat().st_mtime_ns for p in out.iterdir()} == before
    assert main(["preview", str(src), "--out", str(out), "--overwrite"]) == 0


def test_preview_goes_on_past_a_bad_input(tmp_path, capsys):
    good = tmp_path / "good.png"
    write_image(good, xray_like(64, 64))
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n")
    out = tmp_path / "out"
    assert main(["preview", str(bad), str(good), str(tmp_path / "missing.png"), "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert f"{bad}: truncated PNG" in err and "missing.png: file not found" in err and "2 input(s) failed" in err
    assert [p.name for p in out.iterdir()] == ["good.preview.png"]


def test_preview_with_a_model_adds_its_heatmap_panel(heat_bundle, bundle, tmp_path, capsys):
    import cv2

    from medge.edge.model import Model
    from medge.edge.preview import render_preview

    write_image(tmp_path / "a.png", xray_like(300, 200))
    out = tmp_path / "out"
    assert main(["preview", str(tmp_path / "a.png"), "--out", str(out), "--model", str(heat_bundle[0])]) == 0
    pic = cv2.imdecode(np.frombuffer((out / "a.preview.png").read_bytes(), np.uint8), cv2.IMREAD_UNCHANGED)
    model = Model.load(heat_bundle[0])
    plain = render_preview(xray_like(300, 200), model.preprocess_config)
    assert pic.shape == (348, plain.shape[1] + 8 + 320, 3)  # one more panel, in colour
    np.testing.assert_array_equal(pic, render_preview(xray_like(300, 200), model.preprocess_config, model=model))
    # a bundle without heatmaps: the four panels of its preprocessing, and a note
    old = tmp_path / "old"
    shutil.copytree(bundle, old)
    m = json.loads((old / "model.json").read_text())
    del m["explain"]
    (old / "model.json").write_text(json.dumps(m))
    assert main(["preview", str(tmp_path / "a.png"), "--out", str(tmp_path / "o2"), "--model", str(old)]) == 0
    assert "has no heatmaps" in capsys.readouterr().err
    assert read_image(tmp_path / "o2" / "a.preview.png").shape == plain.shape


def test_help_works_without_torch():
    res = medge_without_torch("--help")
    assert res.returncode == 0 and "train" in res.stdout and "preview" in res.stdout
    res = medge_without_torch("train", "--help")
    assert res.returncode == 0 and "--arch" in res.stdout


def test_train_without_torch_exits_2_naming_the_extra(tmp_path):
    res = medge_without_torch("train", "--data", str(tmp_path), "--out", str(tmp_path / "run"))
    assert res.returncode == 2, res.stderr
    assert "needs the 'train' extra" in res.stderr and "pip install" in res.stderr
    assert "Traceback" not in res.stderr


def test_edge_commands_work_without_torch(tmp_path):
    write_image(tmp_path / "a.png", xray_like(50, 60))
    res = medge_without_torch("preview", str(tmp_path / "a.png"), "--out", str(tmp_path / "out"))
    assert res.returncode == 0, res.stderr
    assert (tmp_path / "out" / "a.preview.png").exists()


def test_an_unexpected_exception_exits_3_with_its_traceback(monkeypatch, capsys):
    from medge.edge.apps import preview

    def broken(args):
        raise ZeroDivisionError("boom")

    monkeypatch.setattr(preview, "run", broken)
    assert main(["preview", "x.png", "--out", "o"]) == 3
    err = capsys.readouterr().err
    assert "Traceback" in err and "internal error (ZeroDivisionError: boom)" in err and "bug in medge" in err


def test_version_and_exit_status_help(capsys):
    from medge import __version__

    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0 and capsys.readouterr().out.strip() == f"medge {__version__}"
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    assert "exit status:" in out and "3  unexpected internal error" in out


def test_preview_with_a_bundle_uses_its_preprocessing_and_labels_its_size(bundle, tmp_path, capsys):
    from medge.edge.model import Model
    from medge.edge.preprocess import PreprocessConfig
    from medge.edge.preview import render_preview

    write_image(tmp_path / "a.png", xray_like(300, 200))
    assert main(["preview", str(tmp_path / "a.png"), "--out", str(tmp_path / "deep" / "er"), "--model", str(bundle)]) == 0
    import cv2

    data = (tmp_path / "deep" / "er" / "a.preview.png").read_bytes()  # parent folders created
    pic = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)  # BGR: the bundle has heatmaps
    model = Model.load(bundle)
    assert model.preprocess_config == PreprocessConfig(size=32)
    np.testing.assert_array_equal(pic, render_preview(xray_like(300, 200), model.preprocess_config, model=model))
    four = render_preview(xray_like(300, 200), PreprocessConfig(size=32))  # its panels, before the heatmap's
    np.testing.assert_array_equal(pic[:, : four.shape[1], 0], four)
    assert not np.array_equal(four, render_preview(xray_like(300, 200)))  # the title says 32x32, not 224x224
    assert "input 32x32" in capsys.readouterr().err
    assert main(["preview", str(tmp_path / "a.png"), "--out", str(tmp_path / "o"), "--model",
                 str(bundle / "model.onnx")]) == 2
    assert "is a file: give the bundle folder that holds it" in capsys.readouterr().err


def test_a_subcommand_error_shows_that_subcommands_usage(capsys):
    for argv in (["predict", "--model", "b", "x.png", "--bogus"], ["predict", "--batch-size", "x"]):
        with pytest.raises(SystemExit) as info:
            main(argv)
        assert info.value.code == 2
        err = capsys.readouterr().err
        assert err.startswith("usage: medge predict") and "--model BUNDLE" in err and "medge predict: error:" in err


@pytest.mark.parametrize("command", ["preview", "predict"])
def test_output_of_the_wrong_kind_is_refused_before_any_work(bundle, tmp_path, capsys, command):
    write_image(tmp_path / "a.png", xray_like(64, 64))
    (tmp_path / "file").write_text("x")
    (tmp_path / "folder").mkdir()
    wrong = tmp_path / ("file" if command == "preview" else "folder")
    argv = [command, str(tmp_path / "a.png"), "--out", str(wrong)] + (["--model", str(bundle)] if command == "predict" else [])
    assert main(argv) == 2
    kind = "is a file: give a folder" if command == "preview" else "is a folder: give a file name"
    assert kind in capsys.readouterr().err
MEMORY_LIMITED = (  # run medge with its address space capped: an allocation beyond it fails instead of the machine
    "import resource, sys\n"
    "cap = int(sys.argv.pop(1)) << 20\n"
    "resource.setrlimit(resource.RLIMIT_AS, (cap, cap))\n"
    "from medge.edge.apps.cli import main\n"
    "rc = main(sys.argv[1:])\n"
    "hwm = [ln for ln in open('/proc/self/status') if ln.startswith('VmHWM:')][0].split()[1]  # this process only\n"
    "print('peak_rss_mb', int(hwm) // 1024, file=sys.stderr)\n"
    "sys.exit(rc)\n"
)


def _under_memory_cap(*args, cap_mb=1500):
    env = {**os.environ, "MALLOC_ARENA_MAX": "2", "OMP_NUM_THREADS": "1"}
    res = subprocess.run([sys.executable, "-c", MEMORY_LIMITED, str(cap_mb), *args], capture_output=True, text=True,
                         timeout=300, env=env)
    peak = int(res.stderr.rsplit("peak_rss_mb", 1)[1].split()[0]) if "peak_rss_mb" in res.stderr else None
    return res, peak


@pytest.mark.parametrize("shape", [(1, 100_000), (100_000, 1)], ids=["1x100000", "100000x1"])
def test_extreme_aspect_images_stay_small_in_memory(tmp_path, bundle, shape):
    """A 177-byte 1 x 100000 PNG made medge preview allocate 22 GB; now every command stays within a few hundred MB."""
    img = (np.arange(shape[0] * shape[1]) % 251).astype(np.uint8).reshape(shape)
    write_image(tmp_path / "line.png", img)
    res, peak = _under_memory_cap("preview", str(tmp_path / "line.png"), "--out", str(tmp_path / "out"))
    assert res.returncode == 0, res.stderr
    pic = read_image(tmp_path / "out" / "line.preview.png")
    assert pic.shape[0] == 320 + 28 and pic.shape[1] <= 4 * (4 * 320) + 3 * 8  # a bounded canvas
    assert peak < 400, f"preview peaked at {peak} MB"
    res, peak = _under_memory_cap("predict", "--model", str(bundle), str(tmp_path / "line.png"), "--workers", "0",
                                  "--threads", "1")
    assert res.returncode == 0, res.stderr
    assert any("extreme aspect ratio" in w for w in json.loads(res.stdout)["warnings"])
    assert peak < 500, f"predict peaked at {peak} MB"
