"""``medge check``: the acceptance test of an edge box."""
import json
import os
import shutil
import subprocess
import sys

import cv2
import pytest

from medge.edge.apps import check
from medge.edge.apps.cli import main
from medge.edge.model import Model
from medge.edge.runtime.engines import ENGINES
from tests.helpers import BLOCK_TORCH


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    """Recorded engine choices go to a temporary cache, never the user's; one timed end-to-end run is enough here."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(check, "E2E_RUNS", 1)
    return tmp_path / "cache"


@pytest.fixture
def copy(bundle, tmp_path):
    target = tmp_path / "b"
    shutil.copytree(bundle, target)
    return target


def test_check_verifies_times_records_and_runs_end_to_end(bundle, capsys):
    assert main(["check", "--model", str(bundle), "--json", "--repeats", "3"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["software"]["opencv"] == cv2.__version__ and r["machine"]["cores"] >= 1
    assert r["machine"]["simd"]["line"] == cv2.getCPUFeaturesLine() and r["machine"]["parallel_framework"]
    assert list(r["engines"]) == list(ENGINES) and "cpu" in r["backends"]["available"]
    v = r["verification"]
    assert v["hash_ok"] and v["sha256"] == Model.open(bundle).sha256 and v["error"] is None
    assert set(v["engines"]) == set(ENGINES)
    assert all(t["ok"] and t["self_test_max_abs"] <= v["tolerance"] for t in v["engines"].values())
    f = r["forward"]
    threads = sorted({1, cv2.getNumThreads()})
    assert {(row["engine"], row["variant"], row["threads"]) for row in f["rows"]} == \
        {(e, "fp32", t) for e in ENGINES for t in threads}  # a bundle without fast variants: fp32 on every engine
    assert all(row["n"] == 3 and row["p50_ms"] <= row["p90_ms"] for row in f["rows"])
    for t, chosen in f["fastest"].items():
        rows = {row["engine"]: row["p50_ms"] for row in f["rows"] if row["threads"] == int(t)}
        assert chosen == {"engine": min(rows, key=rows.get), "variant": "fp32", "why": None}
    verified = Model.open(bundle).manifest["runtime"]["verified_engines"]
    assert f["exporting_machine"]["forward_ms"].keys() == set(verified)  # the export recorded its timings
    assert len(r["choice"]["recorded"]) == len(threads) and all(os.path.isfile(p) for p in r["choice"]["recorded"])
    e2e = r["end_to_end"]
    assert e2e["ok"] and abs(sum(e2e["probabilities"].values()) - 1) < 1e-9
    assert e2e["engine"] == f["fastest"][str(cv2.getNumThreads())]["engine"] and e2e["variant"] == "fp32"
    assert e2e["engine_choice"]["reason"] == "recorded by medge check on this box"
    assert r["verdict"] == {"ok": True, "exit_status": 0, "reason": f"verified and runs on this box; Model.load picks "
                                                                    f"the {e2e['engine']} engine, fp32 variant"}
    m = Model.load(bundle)  # what predict and watch will run
    assert (m.engine, m.engine_choice.reason) == (e2e["engine"], "recorded by medge check on this box")


def test_check_table(bundle, capsys):
    assert main(["check", "--model", str(bundle), "--repeats", "2"]) == 0
    out = capsys.readouterr().out
    for needle in ("machine ", "SIMD OpenCV uses:", f"OpenCV {cv2.__version__}", "self-test   classic", "p50 ms",
                   "(the fastest correct)", "end to end  2048x2048 16-bit PNG", "verdict     OK"):
        assert needle in out, needle


def test_tampered_bundle_fails_with_exit_2_and_still_describes_the_box(copy, capsys):
    data = bytearray((copy / "model.onnx").read_bytes())
    data[len(data) // 2] ^= 1
    (copy / "model.onnx").write_bytes(bytes(data))
    assert main(["check", "--model", str(copy)]) == 2
    out, err = capsys.readouterr()
    assert "machine " in out and "verdict     FAIL" in out and "does not match the manifest" in out
    assert "does not match the manifest" in err and "Traceback" not in err


def test_failed_self_test_exits_2_naming_each_engine(copy, capsys):
    m = json.loads((copy / "model.json").read_text())
    m["golden"]["expected_logits"][0][0] += 0.01
    (copy / "model.json").write_text(json.dumps(m))
    assert main(["check", "--model", str(copy), "--json"]) == 2
    r = json.loads(capsys.readouterr().out)
    assert r["verification"]["hash_ok"] and not r["verdict"]["ok"] and "forward" not in r
    assert all("golden self-test failed" in t["error"] for t in r["verification"]["engines"].values())
    assert "no engine of OpenCV" in r["verdict"]["reason"]


def test_missing_bundle_and_old_opencv_exit_2(tmp_path, bundle, monkeypatch, capsys):
    assert main(["check", "--model", str(tmp_path / "nothing")]) == 2
    assert "bundle folder not found" in capsys.readouterr().err
    monkeypatch.setattr(cv2, "__version__", "4.5.4")
    assert main(["check", "--model", str(bundle), "--json"]) == 2
    r = json.loads(capsys.readouterr().out)
    assert r["verification"]["opencv_supported"] is False and "older than 4.5.5" in r["verdict"]["reason"]


def test_an_end_to_end_failure_exits_1(bundle, monkeypatch, capsys):
    monkeypatch.setattr(check, "write_image", lambda path, image: open(path, "wb").write(b"\x89PNG\r\n\x1a\n"))
    assert main(["check", "--model", str(bundle), "--repeats", "1"]) == 1
    assert "end-to-end run failed" in capsys.readouterr().err


def test_bad_repeats_is_a_usage_error(bundle, capsys):
    assert main(["check", "--model", str(bundle), "--repeats", "0"]) == 2
    assert "--repeats must be at least 1" in capsys.readouterr().err


def test_check_runs_without_torch(bundle, tmp_path):
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path / "cache")}
    res = subprocess.run([sys.executable, "-c", BLOCK_TORCH, "check", "--model", str(bundle), "--json", "--repeats", "1"],
                         capture_output=True, text=True, timeout=120, env=env)
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["verdict"]["ok"]


def test_a_bundle_asking_for_a_missing_engine_fails_as_predict_would(copy, capsys):
    m = json.loads((copy / "model.json").read_text())
    m["runtime"]["engine"] = "warp"
    (copy / "model.json").write_text(json.dumps(m))
    assert main(["check", "--model", str(copy)]) == 2
    assert "the bundle asks for an engine this OpenCV lacks" in capsys.readouterr().err


def test_check_shows_each_variant_pair_and_why_not_the_others(variant_bundle, capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    for name in ("onnxruntime", "openvino"):  # the base install: the variants' engines are missing
        monkeypatch.delitem(ENGINES, name, raising=False)
    assert main(["check", "--model", str(variant_bundle[0]), "--json", "--repeats", "2"]) == 0
    r = json.loads(capsys.readouterr().out)
    pairs = r["verification"]["variants"]
    assert pairs["onnxruntime/int8"]["error"].startswith("the onnxruntime engine is not installed here")
    assert pairs["openvino/bf16"]["error"].startswith("the openvino engine is not installed here")
    assert {row["variant"] for row in r["forward"]["rows"]} == {"fp32"} and r["end_to_end"]["variant"] == "fp32"
    monkeypatch.undo()
    pytest.importorskip("onnxruntime", reason="the onnxruntime extra is not installed")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert main(["check", "--model", str(variant_bundle[0]), "--repeats", "2"]) == 0
    out = capsys.readouterr().out
    assert "variant     onnxruntime/int8 self-test against its gated outputs" in out and "<- runs" in out


def test_check_lists_the_input_formats_this_install_reads(monkeypatch):
    """Images OpenCV decodes here, DICOM and its transfer syntaxes by the decoders installed, and what to install."""
    import importlib.util

    from medge.edge.inputs import dicom

    support = check.input_support()
    assert support["images"] == ["PNG", "JPEG", "TIFF", "BMP"]
    real_find = importlib.util.find_spec

    def find(name, *args, hidden=frozenset()):  # pydicom "installed" (the base install has none), gdcm as told
        if name in hidden:
            return None
        return real_find(name, *args) or (object() if name == "pydicom" else None)

    for hidden, expected in (({"pydicom", "gdcm", "libjpeg"}, 'DICOM: not on this install (pip install "medge[dicom]"'),
                             ({"gdcm"}, "not readable without python-gdcm: JPEG baseline, JPEG extended, JPEG lossless")):
        monkeypatch.setattr(dicom.importlib.util, "find_spec", lambda name, *a, hidden=hidden: find(name, *a,
                                                                                                    hidden=hidden))
        text = "\n".join(check._input_lines(check.input_support()))
        assert text.startswith("inputs      PNG, JPEG, TIFF, BMP (OpenCV); PNG ") and expected in text, text
    monkeypatch.setattr(dicom.importlib.util, "find_spec", real_find)
    d = dicom.decoder_support()
    if d["pydicom"] is None:  # the base install: no DICOM, and the report says how to add it
        assert not any(t["installed"] for t in d["transfer_syntaxes"])
    else:
        uncompressed = {t["uid"]: t["installed"] for t in d["transfer_syntaxes"]}
        assert uncompressed["1.2.840.10008.1.2.1"] and len(d["transfer_syntaxes"]) == len(dicom.DECODERS)


def test_check_says_what_inflates_pngs(monkeypatch):
    from medge.edge.inputs import png

    if png.available():
        line = check._input_lines(check.input_support())[0]
        assert line.endswith("; PNG inflated by " + png.decoder_name("numpy").split(" + ")[0]), line
    if png.installed():
        monkeypatch.setenv("MEDGE_PNG_DECODER", "opencv")
        assert check._input_lines(check.input_support())[0].endswith("; PNG decoded by OpenCV (MEDGE_PNG_DECODER=opencv)")
    monkeypatch.setattr(png, "_deflate", lambda: None)
    support = check.input_support()
    assert support["png_inflate"] is None
    assert check._input_lines(support)[0].endswith('; PNG faster with pip install "medge[png]"')


def test_check_lists_a_multilabel_bundles_findings(multilabel_bundle, capsys):
    assert main(["check", "--model", str(multilabel_bundle), "--json", "--repeats", "2"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["verification"]["task"] == "multilabel" and r["verification"]["calibrated"] is True
    assert r["verification"]["thresholds"] == {"Effusion": 0.4, "Nodule": None}
    assert r["end_to_end"]["decisions"]["Nodule"] is None
    assert main(["check", "--model", str(multilabel_bundle), "--repeats", "2"]) == 0
    out = capsys.readouterr().out
    assert "findings    multi-label, calibrated: Effusion threshold 0.4, Nodule not decided: unsupported" in out
    assert "            findings: Effusion " in out and "Nodule" in out
