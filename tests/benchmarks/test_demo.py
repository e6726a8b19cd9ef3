"""medge demo, run once (the quick configuration) for the module: every stage, the report's story (each figure at
its decision rule), the user's speeds without medge's goals, and a file list that is the folder's."""
import contextlib
import io
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from medge.edge.apps.cli import main
from medge.edge.golive.wording import rules_differ_text
from tests.helpers import BLOCK_TORCH


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """(run folder, what the demo printed on stdout) of one quick demo, shared by this module's tests."""
    out = tmp_path_factory.mktemp("demo") / "demo"
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        rc = main(["demo", "--quick", "--out", str(out), "--device", "cpu"])
    assert rc == 0, printed.getvalue()[-3000:]
    return out, printed.getvalue()


def test_quick_demo_end_to_end(demo):
    out, text = demo
    for k in range(1, 8):
        assert f"[{k}/7]" in text
    assert "medge demo finished" in text and "parity PyTorch vs cv2.dnn" in text and "latency p50, batch 1" in text

    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["paths"]) == {"data", "run", "checkpoint", "bundle", "predictions", "validation",
                                     "validation_report", "roc_plot", "reliability_plot", "validation_cases", "bench",
                                     "bench_table", "bench_plot", "parity", "summary", "report", "preprocess_cache"}
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
    assert "chosen for sensitivity >= 0.7 with 95% confidence (lower bound" in text
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


def listed_files(text: str) -> dict[str, Path]:
    """The "files:" list the demo ends with: name -> path."""
    rows = [ln.split(None, 1) for ln in text.split("\nfiles:\n")[1].splitlines() if ln.strip()]
    return {name: Path(path.strip()) for name, path in rows}


def unlisted(out: Path, listed) -> set[str]:
    """Entries at the top of ``out`` (the documented depth: a folder is one entry) that no listed path is or is in."""
    named = {Path(p).relative_to(out).parts[0] for p in listed if Path(p).is_relative_to(out)}
    return {p.name for p in out.iterdir()} - named


def test_the_check_of_the_file_list_sees_a_file_left_out(tmp_path):
    for name in ("a.json", "a.md", "run/best.pt", "run/last.pt"):
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_text("x")
    assert unlisted(tmp_path, [tmp_path / "a.json", tmp_path / "run" / "best.pt"]) == {"a.md"}
    assert unlisted(tmp_path, [tmp_path / "a.json", tmp_path / "a.md", tmp_path / "run"]) == set()


def test_the_file_list_is_every_file_and_folder_the_demo_wrote(demo):
    out, text = demo
    files = listed_files(text)
    assert unlisted(out, files.values()) == set()  # validation.reliability.png and .cases.jsonl were left out once
    assert all(p.exists() for p in files.values())
    report = (out / "summary.md").read_text()
    table = re.findall(r"^\| (\w+) \| \[`([^`]+)`\]", report.split("## Files")[1], re.M)
    assert {name: out / rel for name, rel in table} == files  # the report's table is the same list
    assert {"validation.reliability.png", "validation.cases.jsonl"} <= {p.name for p in files.values()}


def test_each_figure_of_the_report_names_its_decision_rule(demo):
    out, text = demo
    summary = json.loads((out / "summary.json").read_text())
    report = (out / "summary.md").read_text()
    op = json.loads((out / "bundle" / "model.json").read_text())["operating_point"]
    at_op = f"the operating point (disease when its calibrated probability >= {op['threshold']:.3f})"
    argmax = "argmax (the class with the highest probability)"
    why = rules_differ_text("disease", op["threshold"])
    assert summary["rules"] == {"positive": "disease", "training": argmax, "edge": at_op, "why_they_differ": why}
    training = report.split("## Training, at argmax")[1].split("## Export")[0]
    assert f"each image counted at {argmax}" in training and "| test | 10 |" in training
    edge = report.split("## Edge predictions at the operating point")[1].split("## Validation")[0]
    assert f"Each held-out image labelled as the bundle labels it, at {at_op}." in edge
    both = re.findall(r"^\| (training: .+|the bundle on the edge: .+) \| ([\d.]+) \| ([\d.]+) \| ([\d.]+) \|$", edge, re.M)
    t, v = summary["test"], summary["validate"]
    assert both == [(f"training: {argmax}", f"{t['accuracy']:.3f}", f"{t['sensitivity']['disease']:.3f}",
                     f"{t['specificity']['disease']:.3f}"),
                    (f"the bundle on the edge: {at_op}", f"{v['accuracy']['value']:.3f}",
                     f"{v['sensitivity']['value']:.3f}", f"{v['specificity']['value']:.3f}")]
    assert summary["predict"]["correct"] / summary["predict"]["images"] == v["accuracy"]["value"]  # one edge story
    assert f"Why the two differ: {why}" in edge
    validation = report.split("## Validation at the operating point")[1].split("## Parity")[0]
    assert f"each counted at {at_op}:" in validation
    assert "| positive predictive value |" in validation and "| ppv |" not in validation
    assert re.search(r"^\| sensitivity \| \d\.\d{3} \(\d\.\d{3} to \d\.\d{3}\) \|$", validation, re.M)
    # the printed summary tells the same story
    assert f"  training, each image at {argmax}:" in text and f"at {at_op}: " in text
    assert f"  why training and the edge differ: {why}" in text


def test_the_users_report_shows_their_speeds_not_medges_goals(demo):
    from medge.benchmarks import goals

    out, text = demo
    bench = json.loads((out / "bench.json").read_text())
    assert "goals" not in bench and goals.goal_ratios(bench.get("end_to_end"))  # the project computes its own
    assert re.search(r"\bgoals?\b", goals.markdown(bench), re.I)  # the project's page shows them; the user's not
    report, table = (out / "summary.md").read_text(), (out / "bench.md").read_text()
    for shown in (report, table, text):
        assert not re.search(r"\bgoals?\b", shown, re.I) and "target >=" not in shown
    cpu = bench["env"]["cpu"]
    assert f"latency p50, batch 1, on {cpu} ({bench['env']['cores']} cores): cv2.dnn " in text
    speed = report.split("## Speed of your model on this machine")[1].split("## Files")[0]
    assert f"measured in this run on {cpu}" in speed and "| cv2.dnn |" in speed and "images/s" in speed


def test_the_report_says_the_model_was_trained_on_synthetic_images(demo):
    """The demo trains on `medge synth` data: every edge record warns so, and the report and the summary say how
    many images carry it."""
    out, text = demo
    records = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    warning = "trained on synthetic images: not for real patients"
    assert records and all(warning in r["warnings"] for r in records)
    n = len(records)
    assert f"- {warning}: {n} of {n}" in (out / "summary.md").read_text()
    assert f"warning on {n} of {n}: {warning}" in text
    assert json.loads((out / "summary.json").read_text())["predict"]["warnings"][warning] == n


@pytest.mark.parametrize("busy", [False, True])
def test_the_printed_speeds_state_no_ratio_when_bench_found_the_box_busy(busy):
    from medge.benchmarks.demo import speed_lines

    headline = ("The box was busy during this run: ratios not reported; rerun on a quiet box. 1 of 4 latency rows"
                if busy else "Forward pass p50, batch 1, 2 thread(s): cv2.dnn 10.0 ms; pytorch 12.5 ms")
    s = {"parity": {"images": 4, "max_abs_logit": 1e-6, "max_abs_prob": 1e-7, "top1_agreement": 1.0},
         "machine": {"cpu": "Xeon", "cores": 2}, "bench_headline": headline,
         "latency_p50_ms": {"cv2.dnn batch 1": 10.0, "pytorch batch 1": 12.5}}
    text = "\n".join(speed_lines(s))
    assert ("cv2.dnn / PyTorch = 0.80" in text) is not busy
    assert (headline in text) is busy
