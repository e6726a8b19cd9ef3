"""The OpenCV-versions benchmark: its worker protocol, run here, and the summary and tables it renders."""
import sys
from pathlib import Path

import numpy as np

from medge.benchmarks import opencv_versions as ov
from medge.edge.model import Model
from medge.edge.runtime.engines import ENGINES


def test_workers_answer_interleaved_blocks_with_their_logits(bundle, tmp_path):
    m = Model.open(bundle)
    x = m.golden_inputs()
    np.save(tmp_path / "x.npy", x)
    here = Path(sys.executable)
    results = ov.measure_arch("resnet18", str(bundle), tmp_path / "x.npy", {"a": here, "b": here}, rounds=2, block=2,
                              warmup=1, threads=1)
    for name in ("a", "b"):
        r = results[name]
        assert r["threads"] == 1 and set(r["engines"]) == set(ENGINES)
        for engine, e in r["engines"].items():
            assert e["error"] is None and len(r["times"][engine]) == 4  # 2 rounds of 2 passes
            expected = np.asarray(m.manifest["golden"]["expected_logits"], np.float32)
            np.testing.assert_allclose(np.asarray(e["logits"], np.float32), expected, atol=1e-3)


def _cell(logits, p50):
    return {"opencv": "x", "engines": {"classic": {"error": None, "batched": True, "logits": logits}},
            "times": {"classic": [p50, p50]}}


def test_summary_ratios_parity_and_the_fastest_that_passes():
    ref = np.array([[1.0, 0.0], [0.0, 1.0]], np.float32)
    models = {"m1": {"torch_logits": ref}, "m2": {"torch_logits": ref}}
    results = {
        "m1": {"old": _cell(ref.tolist(), 10.0), "new": _cell(ref.tolist(), 20.0), "bad": _cell((ref + 0.1).tolist(), 5.0)},
        "m2": {"old": _cell(ref.tolist(), 40.0), "new": _cell(ref.tolist(), 20.0), "bad": _cell((ref + 0.1).tolist(), 5.0)},
    }
    s = ov.summarize(models, results, reference="old")
    assert s["rows"]["m1"]["old classic"]["ratio_to_fastest"] == 2.0  # "bad" is fastest, 5 ms
    assert s["rows"]["m1"]["bad classic"]["parity_passed"] is False
    assert s["by_version"]["old"]["geomean_ratio"] == np.sqrt(2.0 * 8.0)
    assert s["by_version"]["new"]["geomean_ratio"] == 4.0 and s["fastest_passing"] == "old"
    assert s["rows"]["m2"]["new classic"]["max_abs_prob_vs_reference"] == 0.0
    record = {"summary": s, "environment": {"cpu": "cpu", "cores": 2}, "threads_note": "2 threads", "exported_with": "5.0.0",
              "rounds": 1, "block": 2, "inputs": 2, "reference": "old"}
    text = ov.markdown(record)
    assert "| m1 | 10.00 (2.00) | 20.00 (4.00) | 5.00 (1.00) |" in text
    assert "| bad | 1.000 | FAIL |" in text and "**old**" in text


def test_readme_section_is_replaced_between_its_markers(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{ov.START}\nold\n{ov.END}\nrest\n")
    ov.update_readme(readme, "| table |", "python -m medge.benchmarks.opencv_versions --smoke")
    text = readme.read_text()
    assert text.startswith("intro\n") and text.endswith(f"{ov.END}\nrest\n") and "| table |" in text and "old" not in text
