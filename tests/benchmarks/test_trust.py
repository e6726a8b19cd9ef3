"""benchmarks.trust: the busy rule on synthetic timings, the bounded repeat with an injected measurement source,
and what a run with flagged rows says in its headline, its report and its plot. No real load, no timing limit."""
import copy
import json
from pathlib import Path

import numpy as np
import pytest

from medge.benchmarks import bench, trust
from medge.benchmarks.trust import MAX_REPEATS, OTHERS_SLACK, P50_OVER_MIN, busy_reasons, judge, measure_until_quiet
from medge.edge.numeric import latency_summary

ROOT = Path(__file__).resolve().parents[2]
RNG = np.random.default_rng(0)
QUIET = list(10.0 + RNG.exponential(0.3, 50))  # a quiet row: p50 ~2 % above min, p90 ~6 % above p50
QUIET_TORCH = list(11.0 + RNG.exponential(0.3, 50))
BUSY = [14.8, 15.2] + list(380.0 + RNG.exponential(20.0, 48))  # the shape a hog gave PyTorch: p50 26x its min
TAIL = [10.0] * 40 + [30.0] * 10  # a steady p50 but a tenth of the calls 3x slower


def row(samples, runtime="x", threads=2, batch=1, others=None) -> dict:
    return {"runtime": runtime, "threads": threads, "batch": batch, **latency_summary(samples, batch),
            "samples_ms": list(samples), "others_cores": others}


def test_quiet_rows_are_not_flagged():
    assert busy_reasons(row(QUIET), cores=2) == []
    assert busy_reasons(row(QUIET, threads=1, others=1.0 + OTHERS_SLACK), cores=2) == []  # others on the idle core


@pytest.mark.parametrize("samples, threads, others, reason", [
    (BUSY, 2, None, "is 2"),  # p50 / min: "is 26.4x its min"
    (TAIL, 2, None, "p90 is 3.0x p50"),
    (QUIET, 2, 0.6, "other processes kept 0.60 core(s) busy, 0 idle"),  # spreads quiet, but a core was taken
    (QUIET, 1, 1.6, "other processes kept 1.60 core(s) busy, 1 idle"),
])
def test_busy_shaped_rows_are_flagged(samples, threads, others, reason):
    reasons = busy_reasons(row(samples, threads=threads, others=others), cores=2)
    assert len(reasons) == 1 and reason in reasons[0]


def test_the_rule_at_its_edges():
    at_limit = [1.0, P50_OVER_MIN, P50_OVER_MIN]  # p50 exactly k x min: not above it
    assert busy_reasons(row(at_limit), 2) == []
    assert busy_reasons(row([1.0, P50_OVER_MIN * 1.01, P50_OVER_MIN * 1.01]), 2) != []
    assert busy_reasons(row(QUIET, others=OTHERS_SLACK), 2) == []  # others' load exactly at the slack
    assert busy_reasons(row([5.0]), 2) == []  # one call: no spread to judge
    assert busy_reasons(row([]), 2) == []  # no call: NaN figures are not a flag (and no error)
    assert busy_reasons(row(QUIET, others=None), 2) == []  # /proc/stat unreadable: rule 3 not applied
    assert len(busy_reasons(row(BUSY, others=1.0), 2)) == 2  # every reason is given


def scripted(shapes: dict):
    """An injected measurement source: case -> the pytorch shape of each attempt (the last one repeats); cv2.dnn
    quiet. Returns (measure, the cases in the order measured)."""
    calls = []

    def measure(case):
        calls.append(case)
        attempt = calls.count(case) - 1
        shape = shapes[case][min(attempt, len(shapes[case]) - 1)]
        threads, batch = case
        return judge([row(QUIET, "cv2.dnn", threads, batch), row(shape, "pytorch", threads, batch)], 2, 0.0)

    return measure, calls


def test_a_flagged_case_is_measured_again_after_the_others_and_keeps_every_attempt():
    measure, calls = scripted({(1, 1): [QUIET_TORCH], (2, 1): [BUSY, QUIET_TORCH]})
    rows = measure_until_quiet([(1, 1), (2, 1)], measure, cores=2, log=lambda m: None)
    assert calls == [(1, 1), (2, 1), (2, 1)]  # only the flagged case again, after the others
    torch = {r["threads"]: r for r in rows if r["runtime"] == "pytorch"}
    assert torch[1]["attempts"] == 1 and torch[1]["earlier"] == []
    assert torch[2]["attempts"] == 2 and torch[2]["busy"] == [] and torch[2]["p50_ms"] == pytest.approx(np.median(QUIET_TORCH))
    first = torch[2]["earlier"][0]
    assert first["busy"] and first["p50_ms"] == pytest.approx(np.median(BUSY)) and first["samples_ms"] == BUSY
    cv2_2 = next(r for r in rows if (r["runtime"], r["threads"]) == ("cv2.dnn", 2))
    assert cv2_2["attempts"] == 2  # the whole case again: its ratio comes from one interleaved measurement
    expected = np.median(QUIET) / np.median(QUIET_TORCH)
    assert f"cv2.dnn / pytorch = {expected:.2f}" in bench.headline(_record(rows))


def test_repeats_are_bounded_and_a_run_still_flagged_states_no_ratio():
    measure, calls = scripted({(1, 1): [QUIET_TORCH], (2, 1): [BUSY]})
    rows = measure_until_quiet([(1, 1), (2, 1)], measure, cores=2, max_repeats=MAX_REPEATS, log=lambda m: None)
    assert calls == [(1, 1)] + [(2, 1)] * (1 + MAX_REPEATS)
    torch = next(r for r in rows if (r["runtime"], r["threads"]) == ("pytorch", 2))
    assert torch["busy"] and torch["attempts"] == 1 + MAX_REPEATS and len(torch["earlier"]) == MAX_REPEATS
    rec = _record(rows)
    text = bench.headline(rec)
    assert text.startswith("The box was busy during this run: ratios not reported; rerun on a quiet box.")
    assert "cv2.dnn /" not in text and " = " not in text and "pytorch, batch 1, 2 thread(s)" in text
    md = bench.markdown(rec)
    assert md.splitlines()[0] == text and "| pytorch | 2 | 1 |" in md and f"**yes** ({1 + MAX_REPEATS}) |" in md


class FakeRunner:
    def __init__(self, name):
        self.name, self.threads = name, []

    def set_threads(self, n):
        self.threads.append(n)

    def infer(self, blob):
        return blob


def test_measure_latency_measures_a_busy_case_again_with_every_runtime(monkeypatch):
    """bench's own wiring (measure_case, judge, measure_until_quiet) with the timings and the load injected."""
    script = iter([{"cv2.dnn": QUIET, "pytorch": QUIET_TORCH},  # 1 thread
                   {"cv2.dnn": QUIET, "pytorch": BUSY},  # 2 threads: flagged
                   {"cv2.dnn": QUIET, "pytorch": QUIET_TORCH}])  # 2 threads again
    monkeypatch.setattr(bench, "interleave", lambda runners, blob, cfg, tick: next(script))
    monkeypatch.setattr(trust, "others_cores", lambda start, end: 0.0)
    monkeypatch.setattr("medge.edge.system.usable_cores", lambda: 2)
    runners = [FakeRunner("cv2.dnn"), FakeRunner("pytorch")]
    cfg = bench.BenchConfig(threads=(1, 2), batch_sizes=(1,), warmup=0, repeats=3, max_repeats=2)
    rows = bench.measure_latency(runners, np.zeros((1, 1, 4, 4), np.float32), cfg, log=lambda m: None)
    assert runners[1].threads == [1, 2, 2]
    assert [(r["runtime"], r["threads"], r["attempts"], bool(r["busy"])) for r in rows] == [
        ("cv2.dnn", 1, 1, False), ("pytorch", 1, 1, False), ("cv2.dnn", 2, 2, False), ("pytorch", 2, 2, False)]
    assert rows[3]["earlier"][0]["spread"]["p50_over_min"] > P50_OVER_MIN and rows[3]["others_cores"] == 0.0


def _record(rows: list[dict]) -> dict:
    """A full medge bench record (the one of the results page) with these latency rows."""
    rec = json.loads((ROOT / "benchmarks/results/cpu-2core/bench.json").read_text())
    rec["latency"] = copy.deepcopy(rows)
    rec["config"]["max_repeats"] = MAX_REPEATS
    return rec


def test_plot_labels_never_overlap_with_eight_runtimes():
    pytest.importorskip("matplotlib")
    import matplotlib.pyplot as plt

    names = ["cv2.dnn", "pytorch", "onnxruntime", "edge-onnxruntime", "edge-openvino", "edge-onnxruntime-int8",
             "edge-openvino-int8", "edge-openvino-bf16"]
    rows = [row([ms * b * (1 + 0.01 * i) for i in range(20)] if name != "pytorch" else BUSY, name, 2, b, 0.0)
            for b in (1, 8) for name, ms in zip(names, [30, 27, 20, 20, 18, 4, 2.1, 2.0], strict=True)]
    fig = bench.latency_figure(_record(judge(rows, 2, 0.0)))
    fig.canvas.draw()
    renderer, ax = fig.canvas.get_renderer(), fig.axes[0]
    labels = sorted((t for t in ax.get_yticklabels() if t.get_text()), key=lambda t: t.get_window_extent(renderer).y0)
    boxes = [t.get_window_extent(renderer) for t in labels]
    assert len(boxes) == 16
    assert all(a.y1 <= b.y0 for a, b in zip(boxes[:-1], boxes[1:], strict=True)), "tick labels overlap"
    outer = fig.bbox
    assert all(b.x0 >= outer.x0 and b.x1 <= outer.x1 for b in boxes + [ax.title.get_window_extent(renderer)])
    assert sum("(busy)" in t.get_text() for t in labels) == 2 and "busy" in ax.get_title()
    plt.close(fig)
