"""Classifying what the node received: off the association threads, through the spool, into ``Model.predict``.

One thread runs one ``Model.predict_iter`` pipeline for as long as instances keep
arriving: the pipeline's threads take each instance from the spool (arrival order) as
soon as one is free, read and infer it, while this thread, per instance that comes out:
  1. has it classified by the same ``Model.predict_iter`` as ``medge predict`` (each
     instance alone in its forward pass by default, so its probabilities do not
     depend on what arrived with it: they equal ``medge predict FILE``'s);
  2. decides its status: ``classified``; ``skipped`` with the reason when the model
     does not fit it (a modality the bundle was not made for, colour or multi-frame
     data, a mask or a uniform image, and with --strict any warning); ``error`` for a bug;
  3. writes the SR (and with --heatmap-sc the SC) to ``DIR/reports/`` and, with
     --forward or --forward-stow, to each outbox;
  4. appends the record to results.jsonl (the commit point, ``spool.Spool.commit``),
     then deletes the spooled image (or keeps it, --keep-images).
The pipeline ends when the spool has been empty for ``IDLE_S``, and the next arrival
starts another: under load, reading, inference and step 3 of different instances
overlap, with no pause between groups of arrivals.
A crash anywhere before step 4 redoes the instance at the next start, writing the
same result objects (their UIDs are derived from the source's).
"""
from __future__ import annotations

import datetime
import io
import threading
import time
from collections import deque
from pathlib import Path

from medge.edge.apps.node.config import NodeConfig
from medge.edge.apps.node.scp import SLICE_SOP_CLASSES
from medge.edge.apps.node.spool import Spool, Spooled, private_dir, uid_hash
from medge.edge.apps.node.studies import Studies
from medge.edge.model import Model
from medge.edge.prediction import Prediction

SWEEP_EVERY_S = 10.0
# What a bundle whose data profile names no modality takes (others are skipped, said so): radiographs (CR, DX, RG:
# film), and OT ("other", what most Secondary Captures of a radiograph say). A DICOM without Modality is classified.
RADIOGRAPH_MODALITIES = ("CR", "DX", "RG", "OT")
IDLE_S = 0.25  # a pipeline ends after this long without a new instance (and a lone instance waits this long more)
RETRY_S = 5.0  # after a failure that is not the instance's (a full disk): wait, then try again
ABANDONED_AFTER_S = 120.0  # untouched this long: the association is gone (its DIMSE timeout is 60 s)


def _iso(t: float) -> str:
    return datetime.datetime.fromtimestamp(t, datetime.timezone.utc).isoformat(timespec="milliseconds")


def bundle_modalities(model: Model) -> list[str]:
    """The DICOM modalities the bundle was made for (its data profile), [] when it names none."""
    return sorted((model.data_profile or {}).get("modalities") or {})


class Classifier:
    """The worker: spool -> Model.predict -> result objects -> results.jsonl."""

    def __init__(self, model: Model, spool: Spool, cfg: NodeConfig, studies: Studies, forwarder=None, log=print):
        self.model, self.spool, self.cfg, self.studies, self.forwarder = model, spool, cfg, studies, forwarder
        self.log = log
        self.reports = private_dir(spool.out_dir / "reports")
        self.modalities = bundle_modalities(model)
        self.algorithm = None  # report.Algorithm, built on first use (highdicom loads lazily)
        self.counts = {"classified": 0, "skipped": 0, "error": 0}
        self._swept = time.monotonic()

    def run(self, stop: threading.Event, drain: threading.Event) -> None:
        """Classify until ``stop``; after ``drain`` is set, until the queue is empty."""
        while not stop.is_set():
            first = self.spool.take(1, 0.2)
            if first:
                self.stream(first[0], stop)
            elif drain.is_set():
                return
            self.housekeeping()

    def housekeeping(self) -> None:
        """Study records that are due; what aborted associations left half received."""
        self.studies.flush()
        if time.monotonic() - self._swept > SWEEP_EVERY_S:
            self._swept = time.monotonic()
            if removed := self.spool.sweep_incoming(ABANDONED_AFTER_S):
                self.log(f"removed {removed} instance(s) left half received by aborted associations")

    def stream(self, first: Spooled, stop: threading.Event) -> None:
        """``first`` and every instance that arrives while the pipeline runs, through one ``Model.predict_iter``;
        each finished (result objects, commit) as it comes out. A failure that is not an instance's (a full disk)
        puts back every instance taken and not committed, and the next try is ``RETRY_S`` later."""
        taken = deque([first])

        def arrivals():
            yield str(first.path)
            while not stop.is_set() and (more := self.spool.take(1, IDLE_S)):
                taken.append(more[0])
                yield str(more[0].path)

        t0, done = time.monotonic(), 0
        try:
            for pred in self.model.predict_iter(arrivals(), self.cfg.batch_size, self.cfg.workers, self.cfg.max_pixels,
                                                self.cfg.strict, heatmaps=self.cfg.heatmap_sc, streams=self.cfg.streams):
                self.studies.add(self.finish(taken[0], pred))
                taken.popleft()
                done += 1
                self.housekeeping()
        except Exception as e:  # e.g. the disk is full: the thread lives on, what is not done is tried again
            undone = [i for i in taken if self.spool.is_pending(i.sop_uid)]  # not committed
            self.spool.requeue(undone)
            self.log(f"classifying failed ({type(e).__name__}: {e}); {len(undone)} instance(s) back in the "
                     f"queue, next try in {RETRY_S:g} s")
            stop.wait(RETRY_S)
        if done:
            self.log(f"classified {done} instance(s) in {time.monotonic() - t0:.2f} s ({self.spool.queued()} waiting)")

    def finish(self, item: Spooled, pred: Prediction) -> dict:
        """Status, result objects and the record of one instance; committed to results.jsonl."""
        import pydicom

        tag = uid_hash(item.sop_uid)[:12]
        try:
            source = pydicom.dcmread(item.path, stop_before_pixels=True)
        except Exception as e:  # checked when received; a damaged spool file is recorded, never retried forever
            source, pred = None, Prediction(pred.path, error=f"the spooled file cannot be read again ({type(e).__name__})",
                                            thresholds=pred.thresholds)  # a multi-label record stays one
        status, reason = self.status(pred, source)
        record = {**pred.to_record(self.model.sha256, self.model.runtime),
                  "path": item.path.name, "status": status, "reason": reason,
                  **_identity(source, item), "calling_ae": item.calling_ae, "received_at": _iso(item.received_at),
                  "sr": None, "sc": None}
        if status == "skipped":  # the model may have run, but its output is no result: none in the record either
            record.update(label=None, probabilities=None, logits=None, threshold=None)
            if "decisions" in record:  # a multi-label bundle's: no decisions either, as in its error records
                record.update(decisions=None, positive_findings=None, any_positive=None)
        if status == "classified":
            try:
                record.update(self.write_results(source, pred, datetime.datetime.fromtimestamp(item.received_at)))
            except Exception as e:  # a result object that cannot be built is an error of this instance, said so
                record.update(status="error", reason=f"the SR could not be written: {type(e).__name__}: {e}")
        record["classified_at"] = _iso(time.time())
        self.spool.commit(item, record)
        self.counts[record["status"]] += 1
        what = said(pred) if record["status"] == "classified" else f"{record['status']}: {record['reason']}"
        self.log(f"{tag}: {what}" + (f" [{len(pred.warnings)} warning(s)]" if pred.warnings else ""))
        return record

    def status(self, pred: Prediction, source) -> tuple[str, str | None]:
        if not pred.ok:  # the reason without the spool file's path, which means nothing to the sender
            reason = pred.error.removeprefix(f"{pred.path}: ")
            return ("error" if pred.unexpected else "skipped"), reason
        modality = str(source.get("Modality", "") or "") if source is not None else ""
        slice_of = SLICE_SOP_CLASSES.get(str(source.get("SOPClassUID", "")) if source is not None else "")
        if slice_of and slice_of[0] not in self.modalities:
            return "skipped", (f"a {slice_of[0]} slice ({slice_of[1]}): the model is for "
                               f"{', '.join(self.modalities) or 'projection radiographs'}; a bundle exported with "
                               f"--modality {slice_of[0]} takes them")
        if self.modalities and modality and modality not in self.modalities:
            return "skipped", (f"modality {modality}: the model is for {', '.join(self.modalities)} "
                               "(its training data and export say so)")
        if not self.modalities and modality and modality not in RADIOGRAPH_MODALITIES:
            return "skipped", (f"modality {modality}: a bundle that names no modality is for radiographs "
                               f"({', '.join(RADIOGRAPH_MODALITIES)}); a bundle exported with --modality "
                               f"{modality} takes them")
        return "classified", None

    def write_results(self, source, pred: Prediction, received: datetime.datetime) -> dict:
        """The SR (and SC) of one classified instance: in DIR/reports/, and in each outbox (--forward, --forward-stow);
        their times are ``received`` (the instance's receipt), so that a redo after a crash makes the same bytes.

        The SR is filled from the model's template (``report.SRTemplate``: ``build_sr``'s dataset at a fraction of
        its cost); the SC is in a series per source series, at the source's proportions (``report.heatmap_rgb``)."""
        from medge.edge.apps.node import report

        if self.algorithm is None:
            self.algorithm = report.algorithm_of(self.model)
        sop = str(source.SOPInstanceUID)
        key = (sop, self.model.sha256)
        finding = report.finding_of(self.model, pred, self.cfg.class_codes)  # a Finding, or a multi-label Findings
        study = str(source.StudyInstanceUID)
        sr = report.sr_template(self.algorithm, finding).fill(
            source, finding, series_uid=report.result_uid(study, self.model.sha256, "sr"),
            instance_uid=report.result_uid(*key, "sr"))
        report.stamp(sr, received)
        out = {"sr": self._save(sr, f"{uid_hash(sop)}.sr.dcm"), "sr_sop_instance_uid": str(sr.SOPInstanceUID)}
        if self.cfg.heatmap_sc and pred.explanation is not None:
            series = str(source.get("SeriesInstanceUID") or study)  # Type 1, yet a source without one still gets its SC
            explained = self.model.classes[pred.explanation.class_index]
            legend = report.findings_legend(finding, explained) if isinstance(finding, report.Findings) else ()
            sc = report.build_heatmap_sc(source, report.heatmap_rgb(pred.explanation, source, legend), self.algorithm,
                                         series_uid=report.result_uid(series, self.model.sha256, "sc"),
                                         instance_uid=report.result_uid(*key, "sc"),
                                         explained=explained if legend else None)
            report.stamp(sc, received)
            out.update(sc=self._save(sc, f"{uid_hash(sop)}.sc.dcm"), sc_sop_instance_uid=str(sc.SOPInstanceUID))
        return out

    def _save(self, ds, name: str) -> str:
        """Encode once; write to reports/ and each outbox (--forward, --forward-stow), each atomically."""
        from medge.edge.outputs import atomic_write_bytes

        buf = io.BytesIO()
        ds.save_as(buf, enforce_file_format=True)
        data = buf.getvalue()
        path = atomic_write_bytes(self.reports / name, data)
        if self.forwarder is not None:
            self.forwarder.put(name, data)
        return str(Path("reports") / path.name)


def said(pred: Prediction) -> str:
    """A classified instance in the log: its label and the label's probability (a label by the bundle's threshold
    is often not the most probable class: "disease (0.304)", not the 0.696 of "normal"), or a multi-label label's
    findings and each finding's probability."""
    if pred.decisions is None:
        return f"{pred.label} ({pred.probabilities[pred.label]:.3f})"
    return f"{pred.label} ({', '.join(f'{k} {v:.3f}' for k, v in pred.probabilities.items())})"


def _identity(source, item: Spooled) -> dict:
    get = (lambda k: str(source.get(k, "") or "") or None) if source is not None else (lambda k: None)
    return {"study_instance_uid": get("StudyInstanceUID"), "series_instance_uid": get("SeriesInstanceUID"),
            "sop_instance_uid": get("SOPInstanceUID") or item.sop_uid, "sop_class_uid": get("SOPClassUID"),
            "modality": get("Modality")}
