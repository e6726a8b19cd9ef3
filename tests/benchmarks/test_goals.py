"""benchmarks.goals: the project's speed goals, shown on the project's results page and never in a user's report."""
import json
from pathlib import Path

from medge.benchmarks import bench, goals, report

ROOT = Path(__file__).resolve().parents[2]
RECORD = ROOT / "benchmarks/results/cpu-2core/bench.json"  # the results page's medge bench record


def test_the_users_report_has_no_goals_and_the_results_page_keeps_them():
    rec = json.loads(RECORD.read_text())
    rec.pop("goals", None)  # older records kept them; the page computes them from the end-to-end figures
    text = bench.markdown(rec).lower()
    assert "goal" not in text and "target" not in text and "end to end" in text
    page = report.render([rec])
    assert "| medge (cv2.dnn) vs sequential cv2.dnn loop | 1.35x | 1.30x | yes |" in page
    assert "| with 1 core(s) busy: medge (cv2.dnn) vs sequential cv2.dnn loop | 1.18x | 1.00x | yes |" in page
    assert "The box was busy during this run (latency rows flagged" in page  # its 2-thread rows: p50 up to 1.8x min


def test_goal_ratios_are_ratios_of_the_end_to_end_figures():
    e2e = {"images_per_s": {"medge": 6.0, "sequential": 4.0, "onnxruntime": 5.0},
           "under_load": {"busy_cores": 1, "images_per_s": {"medge": 3.0, "sequential": 4.0}}}
    by_name = {g["goal"]: g for g in goals.goal_ratios(e2e)}
    assert by_name["medge (cv2.dnn) vs sequential cv2.dnn loop"] == {
        "goal": "medge (cv2.dnn) vs sequential cv2.dnn loop", "ratio": 1.5, "target": 1.3, "met": True}
    unmeasured = by_name["medge (onnxruntime) vs sequential onnxruntime loop"]
    assert unmeasured["ratio"] is None and unmeasured["met"] is None
    assert by_name["with 1 core(s) busy: medge (cv2.dnn) vs sequential cv2.dnn loop"]["met"] is False
    assert goals.goal_ratios(None) == [] and goals.markdown({"latency": []}) == ""


def test_the_fast_goal_compares_with_the_pipeline_as_it_was():
    fast = goals.GOALS[-1][0]
    before = {"medge": 10.0, "medge (before)": 8.0, "medge (auto)": 24.0}
    assert {g["goal"]: g for g in goals.goal_ratios({"images_per_s": before})}[fast]["ratio"] == 3.0
    without_png_extra = {"medge": 10.0, "medge (auto)": 24.0}  # medge is then the pipeline as it was
    assert {g["goal"]: g for g in goals.goal_ratios({"images_per_s": without_png_extra})}[fast]["ratio"] == 2.4
