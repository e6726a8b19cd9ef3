"""Prediction records as JSON lines or CSV rows: one format for every command that writes them.

``medge predict`` writes them to a file or stdout; ``medge serve`` offers the same
files as downloads from its batch tab. Written once so that a CSV from the page and
a CSV from the command line have the same columns.
"""
from __future__ import annotations

import csv

from medge.edge.paths import to_json


class RecordWriter:
    """Writes ``Prediction.to_record`` dicts to a text stream as JSON lines or CSV (header first)."""

    def __init__(self, stream, fmt: str, classes: list[str], heatmaps: bool = False):
        self.stream, self.fmt, self.classes, self.heatmaps = stream, fmt, classes, heatmaps
        if fmt == "csv":
            self.csv = csv.writer(stream, lineterminator="\n")
            self.csv.writerow(["path", "label", *[f"p_{c}" for c in classes], "threshold", "calibrated", "read_ms",
                               "preprocess_ms", "inference_ms", "model_sha256", "engine", "variant",
                               "error", "warnings", "decoder",
                               *(["heatmap"] if heatmaps else [])])

    def write(self, rec: dict) -> None:
        if self.fmt == "jsonl":
            self.stream.write(to_json(rec) + "\n")  # a non-UTF-8 file name as \\udcXX escapes (edge.paths)
        else:
            p, t = rec["probabilities"] or {}, rec["timings_ms"]
            self.csv.writerow([rec["path"], rec["label"] or "", *[p.get(c, "") for c in self.classes],
                               "" if rec.get("threshold") is None else rec["threshold"], bool(rec.get("calibrated")),
                               *[round(t[k], 3) if k in t else "" for k in ("read", "preprocess", "inference")],
                               rec["model_sha256"], *[(rec.get("runtime") or {}).get(k) or "" for k in ("engine", "variant")],
                               rec["error"] or "", "; ".join(rec.get("warnings") or []),
                               (rec.get("input") or {}).get("decoder") or "",
                               *([rec.get("heatmap") or ""] if self.heatmaps else [])])
        self.stream.flush()
