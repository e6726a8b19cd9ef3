import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from medge.edge.apps.cli import main
from medge.edge.runtime.engines import ENGINES
from medge.train.checkpoint import (
    load_checkpoint,
    model_from_checkpoint,
    save_model_checkpoint,
)

ROOT = Path(__file__).resolve().parents[2]


def test_bench_smoke_produces_a_complete_record(bundle, tmp_path, capsys):
    out = tmp_path / "new" / "bench.json"  # parent folders are created
    assert main(["bench", "--model", str(bundle), "--checkpoint", str(bundle.parent / "ck.pt"), "--smoke",
                 "--out", str(out)]) == 0
    rec = json.loads(out.read_text())
    assert sorted(p.name for p in out.parent.iterdir()) == ["bench.json", "bench.png"]
    assert rec["checkpoint_link"]["matches"] is True
    runtimes = {r["runtime"] for r in rec["latency"]}
    assert {"cv2.dnn", "pytorch"} <= runtimes
    for row in rec["latency"]:
        assert row["n"] == 3 and len(row["samples_ms"]) == 3
        assert row["min_ms"] <= row["p50_ms"] <= row["p90_ms"] <= row["p99_ms"] <= row["max_ms"]
        assert row["images_per_s"] > 0 and row["achieved_gflops"] > 0
    peak = rec["compute"]["peak"]["by_threads"]["1"]
    assert peak["gflops"] > 0 and peak["kernel"] in ("numpy", "torch", "onnxruntime")
    for row in rec["latency"]:  # a % of peak only where the peak held: never above 100 %
        assert (row["fraction_of_peak"] is None) == (not peak["reliable"]) and (row["fraction_of_peak"] or 0) <= 1
    assert {(r["batch"], r["threads"]) for r in rec["latency"]} == {(1, 1), (2, 1)}
    assert set(rec["cold_start_ms"]) == runtimes == set(rec["first_calls_ms"]) and rec["peak_rss_mb"] > 0
    assert rec["compute"]["model_gflops"] > 0 and set(rec["figures"]) >= {"latency", "end_to_end", "peak"}
    assert {"png8", "png16"} <= set(rec["preprocessing"])
    e2e = rec["end_to_end"]
    assert {"medge", "sequential", "pytorch"} <= set(e2e["images_per_s"]) and e2e["outputs_identical"]
    assert max(e2e["max_abs_logit_vs_sequential"].values()) < 1e-3
    assert e2e["under_load"]["busy_cores"] == 1 and set(e2e["under_load"]["images_per_s"]) == {"medge", "sequential"}
    assert "goals" not in rec  # the project's goals are not the user's figures (benchmarks.goals renders them)
    for when in ("before", "after"):  # the box's load around the run
        assert set(rec["load"][when]) == {"loadavg", "others_cores", "window_s"}
    for row in rec["latency"]:  # each row's spread, load and flags, whatever the box did
        assert set(row["spread"]) == {"p50_over_min", "p90_over_p50"} and isinstance(row["busy"], list)
        assert row["attempts"] == 1 + len(row["earlier"]) <= 1 + rec["config"]["max_repeats"]
    env = rec["env"]
    assert env["cores"] and env["opencv"] and env["torch"] and "Parallel framework" in env["opencv_build"]
    table, err = capsys.readouterr()
    assert "| cv2.dnn | 1 | 1 |" in table and "| pytorch | 1 | 2 |" in table and "End to end" in table
    assert err.splitlines()[0].endswith(f"the weights bundle {bundle} was exported from")  # said first
    assert f"wrote record: {out}" in err and f"wrote plot: {out.with_suffix('.png')}" in err
    assert "FP32 peak" in table and "goal" not in table.lower() and "goal" not in err.lower()
    assert table.splitlines()[0] == rec["headline"] and rec["headline"] in err


@pytest.mark.parametrize("command", ["bench", "parity"])
def test_existing_output_is_refused_before_any_measuring(bundle, tiny_data, tmp_path, capsys, monkeypatch, command):
    from medge.benchmarks import bench, parity

    out = tmp_path / "r.json"
    out.write_text("mine")
    monkeypatch.setattr(bench, "run_bench", lambda *a, **k: pytest.fail("measured before checking --out"))
    monkeypatch.setattr(parity, "run_parity", lambda *a, **k: pytest.fail("compared before checking --out"))
    argv = [command, "--model", str(bundle), "--checkpoint", str(bundle.parent / "ck.pt"), "--out", str(out)]
    assert main(argv + (["--data", str(tiny_data)] if command == "parity" else [])) == 2
    assert "exists already (use --overwrite" in capsys.readouterr().err and out.read_text() == "mine"
    if command == "bench":  # the plot beside the record is an output too
        out.unlink()
        out.with_suffix(".png").write_text("mine")
        assert main(argv) == 2 and "r.png: exists already" in capsys.readouterr().err


def test_parity_passes_for_the_exported_model(bundle, tiny_data, tmp_path, capsys):
    out = tmp_path / "a" / "b" / "parity.json"
    assert main(["parity", "--model", str(bundle), "--checkpoint", str(bundle.parent / "ck.pt"),
                 "--data", str(tiny_data), "--out", str(out)]) == 0
    rec = json.loads(out.read_text())
    assert rec["checkpoint_link"]["matches"] is True
    assert rec["passed"] and rec["images"] == 40 and not rec["skipped"]
    c = rec["comparisons"]["pytorch_vs_cv2.dnn"]
    assert c["n"] == 40 and c["top1_agreement"] == 1.0 and c["logits"]["max_abs"] < 1e-3 and not c["label_flips"]
    out = capsys.readouterr().out
    assert "| pytorch_vs_cv2.dnn |" in out
    if "onnxruntime" in ENGINES:  # edge-engine parity: the same bundle on both engines of the edge
        engines = rec["comparisons"]["cv2.dnn_vs_edge-onnxruntime"]
        assert engines["n"] == 40 and engines["passed"] and engines["logits"]["max_abs"] < 1e-3
        assert "| cv2.dnn_vs_edge-onnxruntime |" in out and "pytorch_vs_edge-onnxruntime" in rec["comparisons"]


def _perturbed_checkpoint(bundle, path):
    ck = load_checkpoint(bundle.parent / "ck.pt")
    model = model_from_checkpoint(ck)
    with torch.no_grad():
        head = [m for m in model.modules() if isinstance(m, torch.nn.Linear)][-1]
        head.bias += torch.tensor([0.5, -0.5])
    return save_model_checkpoint(path, model, ck["arch"], ck["classes"], ck.preprocess)


def test_parity_names_a_checkpoint_that_is_not_the_bundles_own(bundle, tiny_data, tmp_path, capsys):
    other = _perturbed_checkpoint(bundle, tmp_path / "other.pt")
    assert main(["parity", "--model", str(bundle), "--checkpoint", str(other), "--data", str(tiny_data),
                 "--out", str(tmp_path / "p.json")]) == 2  # a mismatch, not a parity failure (exit 1)
    out, err = capsys.readouterr()
    assert f"checkpoint {other} (epoch 0" in err and f"is NOT the checkpoint bundle {bundle} was exported from" in err
    assert str(bundle.parent / "ck.pt") in err and "FAIL" not in out + err and not (tmp_path / "p.json").exists()
    # bench measures anyway (latency does not depend on the weights) and says so first, and in the record
    from medge.benchmarks.bench import BenchConfig, run_bench

    said = []
    tiny = BenchConfig(batch_sizes=(1,), threads=(1,), warmup=0, repeats=1, preprocess_repeats=1, e2e_images=0,
                       image_size=64)
    rec = run_bench(str(bundle), str(other), None, tiny, log=said.append)
    assert "is NOT the checkpoint" in said[0] and "measuring anyway" in said[0]
    assert rec["checkpoint_link"]["matches"] is False and any("not the one the bundle" in n for n in rec["notes"])


def test_parity_fails_beyond_tolerance(bundle, tiny_data, tmp_path, capsys, monkeypatch):
    from medge.benchmarks.runners import TorchRunner

    real = TorchRunner.infer
    monkeypatch.setattr(TorchRunner, "infer", lambda self, blob: real(self, blob) + np.float32([0.5, -0.5]))
    assert main(["parity", "--model", str(bundle), "--checkpoint", str(bundle.parent / "ck.pt"), "--data",
                 str(tiny_data), "--out", str(tmp_path / "p.json")]) == 1
    rec = json.loads((tmp_path / "p.json").read_text())
    c = rec["comparisons"]["pytorch_vs_cv2.dnn"]
    assert not rec["passed"] and not c["passed"] and c["logits"]["max_abs"] == pytest.approx(0.5, abs=1e-3)
    assert "FAIL" in capsys.readouterr().out


def test_parity_reports_unreadable_images(bundle, tiny_data, tmp_path):
    import shutil

    data = tmp_path / "d"
    shutil.copytree(tiny_data, data)
    (data / "val" / "normal" / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    out = tmp_path / "p.json"
    assert main(["parity", "--model", str(bundle), "--checkpoint", str(bundle.parent / "ck.pt"), "--data", str(data),
                 "--out", str(out)]) == 0
    rec = json.loads(out.read_text())
    assert rec["images"] == 40 and [s["path"].endswith("bad.png") for s in rec["skipped"]] == [True]


def test_pytest_benchmark_suite_runs(tmp_path):
    env = {**os.environ, "MEDGE_BENCH_SIZE": "64", "MEDGE_BENCH_IMAGE": "256"}
    res = subprocess.run([sys.executable, "-m", "pytest", str(ROOT / "tests/benchmarks/speed"), "-q", "--benchmark-disable",
                          "-p", "no:cacheprovider", "--rootdir", str(ROOT)], capture_output=True, text=True,
                         env=env, timeout=300, cwd=tmp_path)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-2000:]
    assert "13 passed" in res.stdout  # read 2, preprocess 2, forward 3 runtimes x 2 batches, cold start 3


def test_bench_and_parity_cover_every_engine_and_gated_variant(variant_bundle, tmp_path, capsys, monkeypatch):
    pytest.importorskip("openvino", reason="the openvino extra is not installed")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    bundle, ck = variant_bundle
    out = tmp_path / "bench.json"
    assert main(["bench", "--model", str(bundle), "--checkpoint", str(ck), "--smoke", "--busy-cores", "0",
                 "--out", str(out)]) == 0
    rec = json.loads(out.read_text())
    runtimes = {r["runtime"] for r in rec["latency"]}
    assert {"cv2.dnn", "edge-openvino", "edge-onnxruntime-int8", "edge-openvino-int8"} <= runtimes
    assert set(rec["decisions"]) == runtimes and rec["decisions"]["cv2.dnn"] == {
        "inputs": rec["decisions"]["cv2.dnn"]["inputs"], "max_abs_logit": 0.0, "flips": 0}
    assert rec["variants"]["int8"]["onnxruntime"]["passed"] and rec["arch"] == "resnet18"
    e2e = rec["end_to_end"]
    bound = e2e["decode_bound"]
    assert bound["ideal_images_per_s"] > 0 and set(bound["fraction"]) == set(e2e["images_per_s"])
    if "medge (auto)" in e2e["images_per_s"]:  # the fastest gated pair here, when it is not cv2.dnn fp32
        assert (e2e["auto"]["engine"], e2e["auto"]["variant"]) != ("classic", "fp32")
    from medge.benchmarks.bench import variant_summary

    table = variant_summary([rec])
    assert "| edge-onnxruntime-int8 |" in table and "offered (" in table and "decode-bound ideal" in table
    capsys.readouterr()
    assert main(["parity", "--model", str(bundle), "--checkpoint", str(ck), "--data", str(ck.parent / "data" / "val")]) == 0
    text = capsys.readouterr().out
    assert "| cv2.dnn_vs_edge-openvino-int8 |" in text and "judged by their gate" in text


def test_parity_judges_a_multi_label_variant_finding_by_finding(multilabel_export_bundle, tmp_path):
    """medge parity of a multi-label bundle with a variant: its flips are (image, finding) decisions at each finding's
    threshold, the same the edge's own decisions give, and the gate's probability bound applies."""
    pytest.importorskip("openvino", reason="the openvino extra is not installed")
    pytest.importorskip("onnxruntime", reason="the ort extra is not installed")
    import shutil

    from medge.benchmarks.parity import run_parity
    from medge.edge.model import Model
    from medge.export.variants import VariantConfig, add_variants

    source, ck = multilabel_export_bundle
    bundle = shutil.copytree(source, tmp_path / "ml")
    add_variants(bundle, str(source.parent / "data" / "index.csv"),
                 VariantConfig(variants=("int8",), max_flips=1000, max_probability_change=1.0, calibration_images=16,
                               timing_rounds=2), log=lambda *a: None)
    images = tmp_path / "images"
    images.mkdir()
    for p in sorted((source.parent / "data").glob("*.png"))[16:]:  # the val images
        shutil.copy(p, images / p.name)
    rep = run_parity(str(bundle), str(ck), str(images), log=lambda *a: None)
    fp32 = {p.path: p for p in Model.load(bundle, engine="classic", variant="fp32").predict(sorted(images.glob("*.png")))}
    for engine in ("onnxruntime", "openvino"):
        c = rep["comparisons"][f"cv2.dnn_vs_edge-{engine}-int8"]
        other = Model.load(bundle, engine=engine, variant="int8").predict(sorted(images.glob("*.png")))
        expected = sorted(f"{p.path} ({f})" for p in other for f in ("Effusion", "Nodule")
                          if p.decisions[f] != fp32[p.path].decisions[f])
        assert sorted(c["operating_point_flips"]) == expected
        assert 0 < c["max_abs_probability_change"] <= 1.0 and c["passed"]
