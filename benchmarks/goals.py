"""The project's speed goals: ratios of a ``medge bench`` record's end-to-end figures, against targets.

Usage: python -m medge.benchmarks.goals bench.json     # the goals of one record, met or not

They are the project's own yardstick, shown where the project tracks its progress: in
benchmarks/results/README.md, which ``benchmarks.report`` generates from records. A user's
``medge bench`` report and record hold the user's figures only, never these targets. Goals are ratios
of figures measured in one interleaved run, never timed pass/fail tests.
"""
from __future__ import annotations

import json
from pathlib import Path

# The goals, as ratios of end-to-end images/s: (name, numerator, denominators (the first measured), target).
# The last: the pipeline as it was before fast variants and the png extra is "medge (before)" where the png extra
# is installed (PNGs decoded by OpenCV alone), else "medge" (the same pipeline).
GOALS = (
    ("medge (cv2.dnn) vs sequential cv2.dnn loop", "medge", ("sequential",), 1.3),
    ("medge (cv2.dnn) vs sequential onnxruntime loop", "medge", ("onnxruntime",), 1.1),
    ("medge (onnxruntime) vs sequential onnxruntime loop", "medge (onnxruntime)", ("onnxruntime",), 1.25),
    ("medge (auto: the fastest gated engine and variant, PNGs by libdeflate) vs medge as it was (cv2.dnn fp32, "
     "PNGs by OpenCV)", "medge (auto)", ("medge (before)", "medge"), 2.5),
)
LOAD_GOAL = ("with {n} core(s) busy: medge (cv2.dnn) vs sequential cv2.dnn loop", 1.0)


def goal_ratios(e2e: dict | None) -> list[dict]:
    """The goals as ratios of end-to-end images/s (a contender that was not measured: ratio None)."""
    if not e2e:
        return []
    ips = e2e["images_per_s"]
    goals = []
    for name, num, dens, target in GOALS:
        den = next((d for d in dens if d in ips), None)
        ratio = ips[num] / ips[den] if num in ips and den else None
        goals.append({"goal": name, "ratio": ratio, "target": target, "met": None if ratio is None else ratio >= target})
    load = e2e.get("under_load")
    if load:
        ratio = load["images_per_s"]["medge"] / load["images_per_s"]["sequential"]
        goals.append({"goal": LOAD_GOAL[0].format(n=load["busy_cores"]), "ratio": ratio, "target": LOAD_GOAL[1],
                      "met": ratio >= LOAD_GOAL[1]})
    return goals


def markdown(record: dict) -> str:
    """The goals table of a ``medge bench`` record ("" without end-to-end figures)."""
    goals = goal_ratios(record.get("end_to_end"))
    if not goals:
        return ""
    from medge.benchmarks.trust import flagged, record_cores

    fmt = lambda v: "-" if v is None else f"{v:.2f}x"
    lines = ["Goals (ratios of end-to-end images/s in this run):", "",
             "| goal | ratio | target | met |", "| --- | ---: | ---: | --- |"]
    for g in goals:
        met = "-" if g["met"] is None else "yes" if g["met"] else "**no**"
        lines.append(f"| {g['goal']} | {fmt(g['ratio'])} | {fmt(g['target'])} | {met} |")
    if flagged(record.get("latency") or [], record_cores(record)):
        lines += ["", "The box was busy during this run (latency rows flagged by benchmarks.trust's rule): these "
                      "end-to-end ratios come from the same run; judge a goal on a quiet run."]
    return "\n".join(lines)


def main(argv=None) -> int:
    from medge.benchmarks.common import research_parser

    p = research_parser(__doc__, "python -m medge.benchmarks.goals")
    p.add_argument("record", help="a medge bench record (JSON)")
    a = p.parse_args(argv)
    print(markdown(json.loads(Path(a.record).read_text())) or "no end-to-end figures in this record")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
