"""Prediction records as JSON lines or CSV rows: one format for every command that writes them.

``medge predict`` writes them to a file or stdout; ``medge serve`` offers the same
files as downloads from its batch tab. Written once so that a CSV from the page and
a CSV from the command line have the same columns.

A multi-label bundle's CSV (``edge.findings``) has, per finding, ``p_<finding>`` (its
calibrated probability), ``positive_<finding>`` (1 present, 0 absent, empty when the
finding is undecided: no threshold, or an error) and ``threshold_<finding>`` (empty
when unsupported), then ``positive_findings`` (the present ones joined by ``|``) and
``any_positive`` (the exam-level flag, 1/0) in place of the single ``threshold``
column; a single-label CSV is unchanged.
"""
from __future__ import annotations

import csv
from collections import Counter

from medge.edge.findings import SEPARATOR
from medge.edge.paths import to_json


def _flag(value) -> str | int:
    """A decision or flag as a CSV cell: 1 / 0, or empty for None (undecided, or an error record)."""
    return "" if value is None else int(bool(value))


class RecordWriter:
    """Writes ``Prediction.to_record`` dicts to a text stream as JSON lines or CSV (header first).

    ``multilabel``: the bundle's classes are findings (``edge.findings``): the CSV gets the per-finding columns of the
    module docstring. ``heatmap_findings``: with heatmaps of a multi-label bundle, one ``heatmap_<finding>`` column per
    finding named (``medge predict --heatmap-finding``), else the single ``heatmap`` column (and ``heatmap_finding``
    for a multi-label bundle).
    """

    def __init__(self, stream, fmt: str, classes: list[str], heatmaps: bool = False, multilabel: bool = False,
                 heatmap_findings: list[str] | None = None):
        self.stream, self.fmt, self.classes, self.heatmaps = stream, fmt, classes, heatmaps
        self.multilabel, self.heatmap_findings = multilabel, heatmap_findings
        if fmt == "csv":
            self.csv = csv.writer(stream, lineterminator="\n")
            decision = (["threshold"] if not multilabel else
                        [*[f"positive_{c}" for c in classes], *[f"threshold_{c}" for c in classes], "positive_findings",
                         "any_positive"])
            self.csv.writerow(["path", "label", *[f"p_{c}" for c in classes], *decision, "calibrated", "read_ms",
                               "preprocess_ms", "inference_ms", "model_sha256", "engine", "variant",
                               "error", "warnings", "decoder", *self._heatmap_header()])

    def _heatmap_header(self) -> list[str]:
        if not self.heatmaps:
            return []
        if self.heatmap_findings:
            return [f"heatmap_{c}" for c in self.heatmap_findings]
        return ["heatmap", "heatmap_finding"] if self.multilabel else ["heatmap"]

    def _heatmap_cells(self, rec: dict) -> list:
        if not self.heatmaps:
            return []
        if self.heatmap_findings:
            maps = rec.get("heatmaps") or {}
            return [maps.get(c) or "" for c in self.heatmap_findings]
        return [rec.get("heatmap") or "", *([rec.get("heatmap_finding") or ""] if self.multilabel else [])]

    def _decision_cells(self, rec: dict) -> list:
        if not self.multilabel:
            return ["" if rec.get("threshold") is None else rec["threshold"]]
        d, t, positive = rec.get("decisions") or {}, rec.get("thresholds") or {}, rec.get("positive_findings")
        return [*[_flag(d.get(c)) for c in self.classes], *["" if t.get(c) is None else t[c] for c in self.classes],
                "" if positive is None else SEPARATOR.join(positive), _flag(rec.get("any_positive"))]

    def write(self, rec: dict) -> None:
        if self.fmt == "jsonl":
            self.stream.write(to_json(rec) + "\n")  # a non-UTF-8 file name as \\udcXX escapes (edge.paths)
        else:
            p, t = rec["probabilities"] or {}, rec["timings_ms"]
            self.csv.writerow([rec["path"], rec["label"] or "", *[p.get(c, "") for c in self.classes],
                               *self._decision_cells(rec), bool(rec.get("calibrated")),
                               *[round(t[k], 3) if k in t else "" for k in ("read", "preprocess", "inference")],
                               rec["model_sha256"], *[(rec.get("runtime") or {}).get(k) or "" for k in ("engine", "variant")],
                               rec["error"] or "", "; ".join(rec.get("warnings") or []),
                               (rec.get("input") or {}).get("decoder") or "", *self._heatmap_cells(rec)])
        self.stream.flush()


class FindingCounts:
    """How many classified records of a multi-label bundle found each finding, were undecided on it, and were flagged
    (``any_positive``): the summary line of ``medge predict`` and ``medge batch``."""

    def __init__(self, findings: list[str]):
        self.findings, self.positive, self.undecided, self.flagged = findings, Counter(), Counter(), 0

    def add(self, rec: dict) -> None:
        """Count one record (error records, which decide nothing, are not counted)."""
        if rec.get("error") is not None or rec.get("decisions") is None:
            return
        for name, decided in rec["decisions"].items():
            self.positive[name] += decided is True
            self.undecided[name] += decided is None
        self.flagged += bool(rec.get("any_positive"))

    def summary(self) -> str:
        """E.g. "findings: Effusion 3 positive, Nodule not decided (unsupported) on 5; 3 exam(s) with a positive
        finding"."""
        parts = [f"{n} not decided (no threshold) on {self.undecided[n]}" if self.undecided[n] else
                 f"{n} {self.positive[n]} positive" for n in self.findings]
        return f"findings: {', '.join(parts)}; {self.flagged} exam(s) with a positive finding"


def findings_text(probabilities: dict[str, float], decisions: dict[str, bool | None]) -> str:
    """A multi-label result in a log line: each finding's probability and decision.

    Args:
        probabilities: a record's ``probabilities`` ({finding: calibrated probability}).
        decisions: its ``decisions`` ({finding: True, False or None}).

    Returns:
        e.g. "Effusion 0.623 present, Nodule 0.312 not decided".
    """
    said = {True: "present", False: "absent", None: "not decided"}
    return ", ".join(f"{name} {probabilities[name]:.3f} {said[decisions.get(name)]}" for name in probabilities)
