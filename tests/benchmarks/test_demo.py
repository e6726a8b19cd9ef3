import json
import subprocess
import sys
from pathlib import Path

from medge.edge.apps.cli import main
from tests.helpers import BLOCK_TORCH


def test_quick_demo_end_to_end(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--quick", "--out", str(out), "--device", "cpu"]) == 0
    text = capsys.readouterr().out
    for k in range(1, 8):
        assert f"[{k}/7]" in text
    assert "medge demo finished" in text and "parity PyTorch vs cv2.dnn" in text and "latency p50, batch 1" in text

    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["paths"]) == {"data", "run", "checkpoint", "bundle", "predictions", "validation",
                                     "validation_report", "roc_plot", "bench", "bench_table",
                                     "bench_plot", "parity", "summary", "report", "preprocess_cache"}
    files_listed = text.split("\nfiles:\n")[1].splitlines()
    assert [ln.split()[0] for ln in files_listed] == list(summary["paths"])  # the demo ends with every output path
    for name, path in summary["paths"].items():
        assert Path(path).exists(), name
        assert path in text
    report = (out / "summary.md").read_text()
    assert report.startswith("# medge demo report") and "## Parity" in report and "| pytorch_vs_cv2.dnn |" in report
    assert "![latency per forward pass](bench.png)" in report and "| val |" in report and "| test |" in report
    # export --data chose an operating point on the val split; medge validate judged it on the test split
    op = json.loads((out / "bundle" / "model.json").read_text())["operating_point"]
    # the quick demo's 10 validation positives support 0.7 at 95% confidence (0.95 would need 59): it chose 0.7
    assert op["criterion"] == "sensitivity=0.7" and op["positive"] == "disease" and 0 <= op["threshold"] <= 1
    assert op["guarantee"]["supported"] and op["guarantee"]["n"] == 10 and op["guarantee"]["bound"] >= 0.7
    assert "operating point: sensitivity >= 0.7 with 95% confidence (lower bound" in text
    assert "the demo chose sensitivity=0.7: the highest of" in text and "Why this target: the demo chose" in report
    assert summary["operating_point"]["threshold"] == op["threshold"]
    validation = json.loads((out / "validation.json").read_text())
    assert validation["decision"]["threshold"] == op["threshold"] and validation["counts"]["cases"] == len(
        list((out / "data" / "test").rglob("*.png")))
    assert validation["counts"]["problems"] == {} and validation["problems"] == []  # synth's class folders: images only
    assert "## Validation at the operating point" in report and "![ROC with the operating point](validation.roc.png)" in report
    assert "validate: " in text and "AUC" in summary["validate"]["line"]
    assert summary["parity"]["top1_agreement"] == 1.0 and summary["parity"]["max_abs_logit"] < 1e-3
    assert {"cv2.dnn batch 1", "pytorch batch 1"} <= set(summary["latency_p50_ms"])

    # The bundle loads and predicts in a subprocess where torch and onnx cannot be imported.
    held_out = sorted((out / "data" / "test").rglob("*.png"))
    res = subprocess.run([sys.executable, "-c", BLOCK_TORCH, "predict", "--model", str(out / "bundle"),
                          str(out / "data" / "test")], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert len(res.stdout.splitlines()) == len(held_out) > 0

    preds = [json.loads(ln) for ln in (out / "predictions.jsonl").read_text().splitlines()]
    assert sorted(p["path"] for p in preds) == sorted(map(str, held_out))
    assert all(p["error"] is None and p["label"] in ("disease", "normal") for p in preds)
    bench = json.loads((out / "bench.json").read_text())
    assert bench["latency"] and bench["env"]["opencv"] and bench["end_to_end"]["outputs_identical"]
    parity = json.loads((out / "parity.json").read_text())
    assert parity["passed"] and parity["images"] == 100
    assert (out / "run" / "best.pt").exists() and (out / "summary.md").exists()


def test_demo_stops_with_a_clear_message_at_the_failing_stage(tmp_path, capsys):
    assert main(["demo", "--quick", "--out", str(tmp_path / "d"), "--data", str(tmp_path / "nothing")]) == 1
    err = capsys.readouterr().err
    assert "demo failed at stage 2 (train)" in err and "data folder not found" in err


def test_demo_refuses_a_non_empty_folder(tmp_path, capsys):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "keep.txt").write_text("mine")
    assert main(["demo", "--quick", "--out", str(tmp_path / "d")]) == 2
    assert "is not empty" in capsys.readouterr().err
    assert main(["demo", "--quick", "--out", str(tmp_path / "d" / "keep.txt")]) == 2
    assert "is a file: give a folder for the demo" in capsys.readouterr().err
