"""Study records: once no instance of a study has arrived for ``--study-timeout`` seconds, one file per study.

``DIR/studies/<h>.json`` (``<h>`` = ``uid_hash`` of the Study Instance UID) lists the
study's instances with their status and label, and the study-level label: that of
the instance with the highest disease probability (the probability of the bundle's
positive class; for several disease classes, the highest of them). Of a multi-label
bundle (``edge.findings``) the record also lists the study's positive findings (those
of any of its instances, in the bundle's order) and its exam-level flag
``any_positive``, and its label is those findings joined by ``|`` (``No Finding``),
as an instance's is. A late instance
rewrites the record (atomically), with ``updated`` counting the versions. At start
the node rebuilds its view from results.jsonl, so a study cut short by a restart is
written too.
"""
from __future__ import annotations

import datetime
import json
import threading
import time
from pathlib import Path

from medge.edge.apps.node.spool import private_dir, uid_hash
from medge.edge.findings import MULTILABEL, label_of
from medge.edge.outputs import atomic_write_text
from medge.edge.paths import to_json


def disease_classes(classes: list[str]) -> list[str]:
    """The classes that count as disease: all but one named "normal" (all of them if none is)."""
    others = [c for c in classes if c.lower() != "normal"]
    return others or list(classes)


def disease_probability(record: dict, diseases: list[str]) -> float | None:
    probs = record.get("probabilities") or {}
    values = [probs[c] for c in diseases if c in probs]
    return max(values) if values else None


class Studies:
    """Collects each study's results and writes its record when the study has been quiet long enough."""

    def __init__(self, out_dir: Path, classes: list[str], timeout_s: float, log=print):
        self.dir = Path(out_dir) / "studies"
        self.classes, self.diseases = list(classes), disease_classes(classes)
        self.timeout_s, self.log = timeout_s, log
        self._lock = threading.Lock()
        self._records: dict[str, dict[str, dict]] = {}  # study UID -> SOP UID -> record
        self._last: dict[str, float] = {}  # study UID -> monotonic time of its latest result
        self._dirty: set[str] = set()
        self._versions: dict[str, int] = {}
        self.written = 0

    def load(self, records) -> None:
        """The results of earlier runs; studies whose file lists fewer instances are written again."""
        for rec in records:
            self._add(rec, dirty=False)
        for study, instances in self._records.items():
            path = self.dir / f"{uid_hash(study)}.json"
            if not path.exists() or _instances_in(path) != len(instances):
                self._dirty.add(study)
                self._last[study] = 0.0  # quiet for long already

    def _add(self, rec: dict, dirty: bool = True) -> None:
        study = rec.get("study_instance_uid")
        if not study:
            return
        with self._lock:
            self._records.setdefault(study, {})[rec["sop_instance_uid"]] = rec
            self._last[study] = time.monotonic()
            if dirty:
                self._dirty.add(study)

    def add(self, rec: dict) -> None:
        """One new result."""
        self._add(rec)

    def flush(self, now: float | None = None, everything: bool = False) -> int:
        """Write the records of the studies quiet for ``timeout_s`` (all changed ones with ``everything``)."""
        now = time.monotonic() if now is None else now
        with self._lock:
            due = [s for s in self._dirty if everything or now - self._last[s] >= self.timeout_s]
            for s in due:
                self._dirty.discard(s)
            snapshot = {s: dict(self._records[s]) for s in due}
        for study, instances in snapshot.items():
            self._write(study, instances)
        return len(due)

    def _write(self, study: str, instances: dict[str, dict]) -> None:
        self._versions[study] = self._versions.get(study, 0) + 1
        rows = sorted(instances.values(), key=lambda r: r.get("received_at") or "")
        scored = [(disease_probability(r, self.diseases), r) for r in rows if r.get("status") == "classified"]
        scored = [(p, r) for p, r in scored if p is not None]
        top = max(scored, key=lambda pr: pr[0]) if scored else None
        record = {
            "study_instance_uid": study,
            "label": top[1]["label"] if top else None,
            "disease_probability": top[0] if top else None,
            "disease_classes": self.diseases,
            "deciding_instance": top[1]["sop_instance_uid"] if top else None,
            "instances": [{k: r.get(k) for k in ("sop_instance_uid", "series_instance_uid", "status", "label",
                                                 "probabilities", "reason", "sr")} for r in rows],
            "counts": {s: sum(r.get("status") == s for r in rows) for s in ("classified", "skipped", "error")},
            "updated": self._versions[study],
            "written_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        }
        if any(r.get("task") == MULTILABEL for r in rows):
            record.update(self._findings(rows))
            for row, r in zip(record["instances"], rows, strict=True):
                row["positive_findings"] = r.get("positive_findings")
        private_dir(self.dir)
        atomic_write_text(self.dir / f"{uid_hash(study)}.json", to_json(record, indent=2) + "\n")
        self.written += 1
        self.log(f"study {uid_hash(study)[:12]}: {len(rows)} instance(s), label {record['label']}" + _log_tail(record))

    def _findings(self, rows: list[dict]) -> dict:
        """A multi-label study's positive findings (any instance's, in the bundle's order), its label and flag; the
        flag is None while no instance is classified."""
        classified = [r for r in rows if r.get("status") == "classified"]
        found = {f for r in classified for f in r.get("positive_findings") or ()}
        positive = [c for c in self.classes if c in found]
        undecided = [c for c in self.classes if any((r.get("thresholds") or {}).get(c, 0) is None for r in classified)]
        # the single-label study's disease fields say nothing of findings with their own thresholds
        return {"label": label_of(positive, undecided) if classified else None, "positive_findings": positive,
                "any_positive": bool(positive) if classified else None, "disease_probability": None,
                "disease_classes": None, "deciding_instance": None}


def _instances_in(path: Path) -> int:
    try:
        return len(json.loads(path.read_text(encoding="utf-8")).get("instances", []))
    except (OSError, ValueError, AttributeError):
        return -1


def _log_tail(record: dict) -> str:
    """What the study's log line says after its label: the highest disease probability (single-label), or the count of
    positive findings (multi-label: the highest probability of any finding is no probability of the label, each
    finding having its own threshold)."""
    if "positive_findings" in record:
        return f" ({len(record['positive_findings'])} positive finding(s))" if record["label"] is not None else ""
    if record["disease_probability"] is None:
        return ""
    return f" (probability of {', '.join(record['disease_classes'])}: {record['disease_probability']:.3f})"
