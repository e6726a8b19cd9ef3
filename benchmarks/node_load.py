"""Load on ``medge node``: instances/s and latency from C-STORE to the SR in PACS, for 1, 4 and 8 associations,
against ``medge predict``'s pipeline on the same files.

Usage: python -m medge.benchmarks.node_load --model bundles/xray --files 48 --size 2048 --associations 1,4,8 --out node_load.json
       python -m medge.benchmarks.node_load --model bundles/xray --inputs dicom/ --out node_load.json
       python -m medge.benchmarks.node_load --from node_load.json [--readme benchmarks/results/README.md]

Writes ``--files`` synthetic DX instances (12-bit values, uncompressed, ``--size`` px a
side: 8 MB at 2048) unless ``--inputs`` names a folder of DICOM files, then starts
Orthanc (a temporary folder, loopback ports, no plugins) and ``medge node --port 0
--forward ORTHANC@127.0.0.1:PORT`` in a subprocess with its defaults (batch size 1),
on the engine this process's ``Model.load`` chose. For each association count ``c``
the files are sent, each with new Study/Series/SOP Instance UIDs (the node takes a
UID once), split over ``c`` senders that each open their own association and C-STORE
their share in turn: dcmtk's ``storescu`` processes by default (C, as modalities and
PACS send; its verbose lines, timed as they arrive, give each C-STORE's start and
answer), or pynetdicom threads in this process (``--sender pynetdicom``, any transfer
syntax; Python costs ~30 ms of CPU per 8 MB sent, on the box the node runs on). An instance's latency runs from the start of its
C-STORE to its SR being in Orthanc; SR arrivals are seen by polling Orthanc's
``/changes`` every ``poll_s`` (so a latency is at most ``poll_s`` late) and matched
to their source through the node's results.jsonl (``sr_sop_instance_uid``).
instances/s = SRs stored / (last SR in Orthanc - first C-STORE start). Each round
also records where the time went: the C-STORE answer, the node's spool-to-classified
time (results.jsonl ``received_at`` -> ``classified_at``), classified-to-PACS, the
node's pipeline runs (instances per ``Model.predict_iter`` run, from its log) and the
CPU seconds of the node, Orthanc, the senders (with the polling) and the
whole box (/proc/stat) over the round. The senders share the box with the node: on
a 2-core box their CPU is part of what the node does not get.

The contender, interleaved with the rounds (before the first, between rounds, after
the last: the box drifts): ``Model.predict`` on the same files in this process, with
``medge predict``'s defaults (batch size 8, one pipeline thread per core) and with the
node's batch size 1; instances/s from the first file read to the last result, and this
process's CPU time per instance (the Orthanc polling paused meanwhile). Each round's
ratio is node / the mean of the predict runs just before and after it; ``cpu_figures``
adds the same in CPU per instance and the ratio's ceiling with the senders beside.
"""
from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import httpx
import numpy as np

from medge.benchmarks.common import add_out_arguments, check_outputs, emit, environment, research_parser
from medge.benchmarks.pacs import Orthanc
from medge.edge.execution.budget import busy_cpu_s
from medge.edge.model import Model
from medge.edge.numeric import latency_summary
from medge.edge.system import machine

DX = "1.2.840.10008.5.1.4.1.1.1.1"  # Digital X-Ray Image Storage - For Presentation
NODE_AE, PACS_AE, SCU_AE = "MEDGE", "ORTHANC", "LOADSCU"
GOAL = (4, 0.8)  # at 4 associations, node instances/s >= 0.8 x medge predict's on a 2-core box
CLASSIFIED_LINE = re.compile(r"classified (\d+) instance\(s\) in ([\d.]+) s")
STORED_LINE = re.compile(r"stored from \S+ \(([\d.]+) MB, (\d+) ms\)")


@dataclass(frozen=True)
class LoadConfig:
    """What one run measures."""

    files: int = 48  # synthetic instances (ignored with --inputs); medge predict runs 48 as 8 passes of 6 on 2 cores
    size: int = 2048  # their side in px: a DX detector's (8 MB); the whole run takes ~70 s on 2 cores (1024: ~50 s)
    associations: tuple[int, ...] = (1, 4, 8)  # concurrent associations per round
    predict_batch_sizes: tuple[int, ...] = (8, 1)  # medge predict's default --batch-size first (the goal's), the node's
    warmup_files: int = 4  # a first round and predict run, not recorded: nets built, caches warm
    poll_s: float = 0.02  # how often Orthanc's /changes is read: the resolution of an SR's arrival
    round_timeout_s: float = 600.0
    node_args: tuple[str, ...] = ()  # more medge node options, e.g. ("--batch-size", "4")
    sender: str = "storescu"  # dcmtk's storescu (C, as modalities and PACS send) or "pynetdicom" (Python, in this process)


# --- inputs ---------------------------------------------------------------------------------------------------------
def make_dicom_files(folder: Path, n: int, size: int) -> list[Path]:
    """N DX instances as a modality writes them: radiograph-like pixels, 12 bits stored in 16, Explicit VR Little
    Endian, two views per study. The pixels are medge.train.synth's images drawn at up to 512 px (at 2048 px one
    takes ~5 s), resized to ``size`` with per-pixel noise."""
    import cv2
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, ExplicitVRLittleEndian, generate_uid

    from medge.train.synth import SynthConfig, make_image

    cfg = SynthConfig(size=min(size, 512), seed=21)
    folder.mkdir(parents=True, exist_ok=True)
    paths, study = [], None
    for i in range(n):
        if i % 2 == 0:
            study = generate_uid()
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.MediaStorageSOPClassUID, ds.file_meta.MediaStorageSOPInstanceUID = DX, generate_uid()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.file_meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
        ds.SOPClassUID, ds.SOPInstanceUID = DX, ds.file_meta.MediaStorageSOPInstanceUID
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, generate_uid()
        ds.PatientID, ds.PatientName, ds.PatientBirthDate, ds.PatientSex = f"LOAD-{i // 2}", "Load^Test", "19700101", "O"
        ds.AccessionNumber, ds.StudyID, ds.StudyDate, ds.StudyTime = f"A{i // 2}", "1", "20260101", "120000"
        ds.ReferringPhysicianName = ""
        ds.Modality, ds.SeriesNumber, ds.InstanceNumber = "DX", 1 + i % 2, 1
        ds.PresentationIntentType, ds.ImageType = "FOR PRESENTATION", ["ORIGINAL", "PRIMARY"]
        ds.Rows = ds.Columns = size
        ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PixelRepresentation = 1, "MONOCHROME2", 0
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 12, 11
        img = cv2.resize(make_image(i, i % 3 == 0, cfg), (size, size), interpolation=cv2.INTER_CUBIC)
        img += np.random.default_rng(i).normal(0, 0.01, img.shape).astype(np.float32)
        ds.PixelData = np.round(np.clip(img, 0, 1) * 4095).astype(np.uint16).tobytes()
        path = folder / f"dx{i:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def scan_dicom_folder(folder: str) -> list[Path]:
    """The DICOM files (Part 10) under ``folder``, sorted; SystemExit when there are none."""
    import pydicom

    found = []
    for path in sorted(p for p in Path(folder).rglob("*") if p.is_file()):
        try:
            pydicom.dcmread(path, stop_before_pixels=True)
        except Exception:  # not DICOM: not ours to send
            continue
        found.append(path)
    if not found:
        raise SystemExit(f"--inputs {folder}: no DICOM files")
    return found


def with_fresh_uids(paths: list[Path], folder: Path) -> list[tuple[Path, str]]:
    """Copies of ``paths`` in ``folder`` with new Study, Series and SOP Instance UIDs (the grouping kept);
    returns (path, SOP Instance UID) each."""
    import pydicom
    from pydicom.uid import generate_uid

    folder.mkdir(parents=True, exist_ok=True)
    new: dict[str, str] = {}
    out = []
    for i, path in enumerate(paths):
        ds = pydicom.dcmread(path)
        for keyword in ("StudyInstanceUID", "SeriesInstanceUID"):
            old = str(ds.get(keyword, "") or f"{keyword}-{i}")
            setattr(ds, keyword, new.setdefault(old, generate_uid()))
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        target = folder / f"{i:04d}.dcm"
        ds.save_as(target, enforce_file_format=True)
        out.append((target, str(ds.SOPInstanceUID)))
    return out


def presentation_contexts(paths: list[Path]) -> list[tuple[str, str]]:
    """(SOP class, transfer syntax) of the files, each pair once."""
    import pydicom

    pairs = set()
    for path in paths:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        pairs.add((str(ds.SOPClassUID), str(ds.file_meta.TransferSyntaxUID)))
    return sorted(pairs)


# --- the PACS ---------------------------------------------------------------------------------------------------------
class ChangeWatcher:
    """Reads Orthanc's /changes every ``poll_s`` on a thread: when each new instance was first seen (time.time())."""

    def __init__(self, pacs: Orthanc, poll_s: float):
        self.pacs, self.poll_s = pacs, poll_s
        self.seen: list[tuple[int, str, float]] = []  # (change seq, Orthanc instance ID, seen at)
        self.last = pacs.get_json("/changes?last")["Last"]
        self._stop, self._polling = threading.Event(), threading.Event()
        self._polling.set()
        self._lock, self._reading = threading.Lock(), threading.Lock()
        self._thread = threading.Thread(target=self._run, name="node-load-changes", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        client = httpx.Client()  # one kept-alive connection
        while not self._stop.is_set():
            if not self._polling.wait(0.1):  # paused
                continue
            asked = time.time()  # what this read sees was stored before it: the arrival is at most poll_s earlier
            try:
                with self._reading:
                    got = self.pacs.get_json(f"/changes?since={self.last}&limit=1000", client)
            except httpx.HTTPError:
                client.close()
                client = httpx.Client()
                continue
            with self._lock:
                self.seen += [(c["Seq"], c["ID"], asked) for c in got["Changes"] if c["ChangeType"] == "NewInstance"]
            self.last = got["Last"]
            if got["Done"]:
                self._stop.wait(self.poll_s)
        client.close()

    @contextlib.contextmanager
    def paused(self):
        """No reading in the block, a read under way finished first: ``Model.predict``'s runs, whose CPU time is
        this process's (the polling costs ~70 ms of CPU a second)."""
        self._polling.clear()
        with self._reading:
            pass
        try:
            yield
        finally:
            self._polling.set()

    def since(self, seq: int) -> list[tuple[int, str, float]]:
        with self._lock:
            return [s for s in self.seen if s[0] > seq]

    def mark(self) -> int:
        """The last change seen so far (``since`` it: what comes next)."""
        with self._lock:
            return max([self.last, *(s[0] for s in self.seen)])

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)


# --- the node -----------------------------------------------------------------------------------------------------------
def start_node(bundle: str, out_dir: Path, log_path: Path, pacs: Orthanc, engine: str, extra: tuple[str, ...],
               timeout_s: float = 120) -> tuple[subprocess.Popen, int]:
    """``medge node --port 0 --forward ORTHANC@127.0.0.1:PORT`` in a subprocess; returns it and its port once it listens."""
    command = [sys.executable, "-m", "medge.edge.apps.cli", "node", "--model", bundle, "--out", str(out_dir),
               "--port", "0", "--ae-title", NODE_AE, "--engine", engine,
               "--forward", f"{PACS_AE}@127.0.0.1:{pacs.dicom_port}", *extra]
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)
    deadline = time.monotonic() + timeout_s
    while True:
        if m := re.search(r"listening on [^:\s]+:(\d+)", log_path.read_text(errors="replace")):
            return proc, int(m.group(1))
        if proc.poll() is not None or time.monotonic() > deadline:
            stop_process(proc)
            raise RuntimeError(f"medge node did not start:\n{log_path.read_text(errors='replace')[-3000:]}")
        time.sleep(0.05)


def stop_process(proc: subprocess.Popen, timeout_s: float = 30) -> int:
    """SIGTERM to its process group, SIGKILL after ``timeout_s``; its exit status."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    return proc.returncode


def senders_cpu_s() -> float:
    """CPU seconds of this process (the polling, and pynetdicom senders) and of its finished child processes (the
    storescu senders: the node and Orthanc are children too, but are reaped only at the end)."""
    import resource

    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + children.ru_utime + children.ru_stime


def box_busy_s() -> float:
    """CPU seconds the whole machine has used since boot (``edge.execution.budget.busy_cpu_s``), NaN off Linux."""
    busy = busy_cpu_s()
    return float("nan") if busy is None else busy


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` so far (Linux /proc), NaN when unreadable."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return float("nan")


# --- one round --------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Sent:
    """One C-STORE as the sender saw it."""

    sop_uid: str
    association: int
    start: float  # time.time() just before send_c_store
    answered: float  # when its status came back
    status: int | None  # None: no answer (aborted)


def send_share(port: int, files: list[tuple[Path, str]], contexts, index: int, barrier: threading.Barrier,
               out: list[Sent]) -> None:
    """One association: open it, wait for the others, C-STORE ``files`` in turn, release."""
    from pynetdicom import AE

    ae = AE(ae_title=SCU_AE)
    for sop_class, syntax in contexts:
        ae.add_requested_context(sop_class, syntax)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 120
    assoc = ae.associate("127.0.0.1", port, ae_title=NODE_AE)
    if assoc.is_established:  # as dcmtk's storescu does: without it Nagle + delayed ACK add ~40 ms per C-STORE
        assoc.dul.socket.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        barrier.wait(60)
    except threading.BrokenBarrierError:
        pass
    if not assoc.is_established:
        out += [Sent(uid, index, time.time(), time.time(), None) for _, uid in files]
        return
    try:
        for path, uid in files:
            t0 = time.time()
            try:
                status = assoc.send_c_store(path)
                code = int(status.Status) if "Status" in status else None
            except (RuntimeError, ValueError, OSError):
                code = None
            out.append(Sent(uid, index, t0, time.time(), code))
            if not assoc.is_established:
                break
    finally:
        if assoc.is_established:
            assoc.release()


STORESCU = "/usr/bin/storescu"  # dcmtk's (Debian's dcmtk); not the `storescu` pynetdicom puts on PATH
UNCOMPRESSED = {"1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2"}
STORESCU_LINE = re.compile(r"^I: (Sending file: (?P<path>.+)|Received Store Response \((?P<status>[^,)]+))")


def send_share_storescu(port: int, files: list[tuple[Path, str]], contexts, index: int, barrier: threading.Barrier,
                        out: list[Sent]) -> None:
    """One association by dcmtk's storescu (one process; TCP_NODELAY is its default): its verbose lines timed as they
    come, "Sending file" the start of a C-STORE and "Received Store Response" its answer. Uncompressed files only."""
    uid_of = {str(path): uid for path, uid in files}
    try:
        barrier.wait(60)
    except threading.BrokenBarrierError:
        pass
    command = [STORESCU, "-v", "-nh", "-x=", "-aet", SCU_AE, "-aec", NODE_AE, "127.0.0.1", str(port),
               *(str(p) for p, _ in files)]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1)
    current = None
    for line in proc.stdout:
        m = STORESCU_LINE.match(line.strip())
        if m and m.group("path"):
            current = (uid_of.get(m.group("path"), m.group("path")), time.time())
        elif m and current is not None:
            out.append(Sent(current[0], index, current[1], time.time(), 0 if m.group("status") == "Success" else -1))
            current = None
    proc.wait()
    answered = {s.sop_uid for s in out}
    out += [Sent(uid, index, time.time(), time.time(), None) for _, uid in files if uid not in answered]


def read_new_results(path: Path, offset: int) -> tuple[list[dict], int]:
    """The complete lines of results.jsonl after byte ``offset``, and the new offset."""
    if not path.exists():
        return [], offset
    with open(path, "rb") as f:
        f.seek(offset)
        data = f.read()
    end = data.rfind(b"\n") + 1
    return [json.loads(line) for line in data[:end].splitlines() if line.strip()], offset + end


def _epoch(iso: str | None) -> float | None:
    return datetime.datetime.fromisoformat(iso).timestamp() if iso else None


def read_round_log(path: Path, offset: int, instances: int, timeout_s: float = 10.0) -> str:
    """The node's log since ``offset``, once its pipeline runs account for ``instances`` (a run logs its line when
    the spool has been idle a moment, after its last SR may already be in the PACS), or after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        with open(path, "rb") as f:
            f.seek(offset)
            text = f.read().decode(errors="replace")
        if sum(int(n) for n, _ in CLASSIFIED_LINE.findall(text)) >= instances or time.monotonic() > deadline:
            return text
        time.sleep(0.05)


def node_log_stats(text: str) -> dict:
    """What the node's log says of a round: its Model.predict calls (instances each, seconds) and its spooling."""
    calls = [(int(n), float(s)) for n, s in CLASSIFIED_LINE.findall(text)]
    spooled_ms = [float(ms) for _, ms in STORED_LINE.findall(text)]
    sizes: dict[str, int] = {}
    for n, _ in calls:
        sizes[str(n)] = sizes.get(str(n), 0) + 1
    return {"classify_calls": len(calls), "instances_per_call": sizes,
            "mean_instances_per_call": sum(n for n, _ in calls) / len(calls) if calls else None,
            "classify_busy_s": sum(s for _, s in calls),
            "spool_ms": latency_summary(spooled_ms) if spooled_ms else None}


def run_round(ctx: "Session", paths: list[Path], associations: int, folder: Path) -> dict:
    """Send ``paths`` (fresh UIDs) over ``associations`` associations; wait for every SR in Orthanc; the figures."""
    files = with_fresh_uids(paths, folder)
    shares = [files[i::associations] for i in range(associations)]
    shares = [s for s in shares if s]
    mark, offset, log_offset = ctx.watcher.mark(), ctx.results_offset, ctx.node_log.stat().st_size
    cpu0 = {"node": cpu_s(ctx.node.pid), "orthanc": cpu_s(ctx.pacs.pid), "senders": senders_cpu_s(),
            "box": box_busy_s()}
    sent: list[Sent] = []
    barrier = threading.Barrier(len(shares))
    sender = send_share_storescu if ctx.cfg.sender == "storescu" else send_share
    threads = [threading.Thread(target=sender, args=(ctx.port, share, ctx.contexts, i, barrier, sent))
               for i, share in enumerate(shares)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    stored = {s.sop_uid for s in sent if s.status == 0}
    records: dict[str, dict] = {}
    deadline = time.monotonic() + ctx.cfg.round_timeout_s
    while True:
        new, offset = read_new_results(ctx.results, offset)
        records.update({r["sop_instance_uid"]: r for r in new if r.get("sop_instance_uid") in stored})
        with_sr = [r for r in records.values() if r.get("sr_sop_instance_uid")]
        arrived = ctx.watcher.since(mark)
        timed_out = time.monotonic() > deadline
        if (len(records) == len(stored) and len(arrived) >= len(with_sr)) or timed_out:
            break
        time.sleep(0.05)
    cpu_now = {"node": cpu_s(ctx.node.pid), "orthanc": cpu_s(ctx.pacs.pid), "senders": senders_cpu_s(),
               "box": box_busy_s()}
    cpu = {k: cpu_now[k] - v for k, v in cpu0.items()}
    ctx.results_offset = offset
    log_text = read_round_log(ctx.node_log, log_offset, len(records))
    arrival_by_sr = {}
    for _, orthanc_id, seen in arrived:
        uid = ctx.pacs.get_json(f"/instances/{orthanc_id}")["MainDicomTags"].get("SOPInstanceUID")
        arrival_by_sr[uid] = seen
    return {**round_figures(associations, sent, records, arrival_by_sr, cpu, node_log_stats(log_text)),
            "timed_out": timed_out}


def round_figures(associations: int, sent: list[Sent], records: dict, arrival_by_sr: dict, cpu: dict,
                  log: dict) -> dict:
    """instances/s, latency and its parts, statuses and CPU of one round."""
    latency, answer, spool_to_classified, classified_to_pacs, ends = [], [], [], [], []
    for s in sent:
        answer.append(1000 * (s.answered - s.start))
        rec = records.get(s.sop_uid) or {}
        seen = arrival_by_sr.get(rec.get("sr_sop_instance_uid"))
        if seen is None:
            continue
        ends.append(seen)
        latency.append(1000 * (seen - s.start))
        received, classified = _epoch(rec.get("received_at")), _epoch(rec.get("classified_at"))
        spool_to_classified.append(1000 * (classified - received))
        classified_to_pacs.append(1000 * (seen - classified))
    first = min(s.start for s in sent)
    wall = (max(ends) - first) if ends else float("nan")
    statuses: dict[str, int] = {}
    for s in sent:
        key = "no answer" if s.status is None else "not success (storescu)" if s.status < 0 else f"0x{s.status:04X}"
        statuses[key] = statuses.get(key, 0) + 1
    outcome: dict[str, int] = {}
    for rec in records.values():
        outcome[rec["status"]] = outcome.get(rec["status"], 0) + 1
    return {"associations": associations, "sent": len(sent), "c_store_status": statuses, "node_status": outcome,
            "srs_in_pacs": len(latency), "wall_s": wall, "instances_per_s": len(latency) / wall if ends else 0.0,
            "sending_s": max(s.answered for s in sent) - first, "latency_ms": latency_summary(latency),
            "parts_ms": {"c_store_answer": latency_summary(answer), "spooled_to_classified": latency_summary(spool_to_classified),
                         "classified_to_pacs": latency_summary(classified_to_pacs)},
            "node_log": log, "cpu_s": cpu, "box_busy_cores": cpu["box"] / wall if ends else None,
            "cpu_s_per_instance": {k: v / len(latency) for k, v in cpu.items()} if latency else None}


# --- the contender --------------------------------------------------------------------------------------------------
def run_predict(model: Model, paths: list[Path], batch_size: int) -> dict:
    """``Model.predict`` as ``medge predict`` runs it (pipelined, one thread per core): instances/s."""
    t0, cpu0 = time.perf_counter(), time.process_time()
    preds = model.predict([str(p) for p in paths], batch_size)
    wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    return {"batch_size": batch_size, "wall_s": wall, "instances_per_s": len(paths) / wall,
            "cpu_s_per_instance": cpu / len(paths), "classified": sum(p.ok for p in preds),
            "budget": model.budget.reason if model.budget else None}


def run_predicts(model: Model, paths: list[Path], cfg: LoadConfig) -> dict:
    return {str(b): run_predict(model, paths, b) for b in cfg.predict_batch_sizes}


# --- the run ----------------------------------------------------------------------------------------------------------
@dataclass
class Session:
    """What every round uses: the PACS, its change feed, the node and where it writes."""

    cfg: LoadConfig
    pacs: Orthanc
    watcher: ChangeWatcher
    node: subprocess.Popen
    port: int
    node_log: Path
    results: Path
    contexts: list
    results_offset: int = 0


def measure(bundle: str, paths: list[Path], cfg: LoadConfig, work: Path, orthanc: str, synthetic: bool) -> dict:
    model = Model.load(bundle)
    contexts = presentation_contexts(paths)
    warm = paths[:max(1, min(cfg.warmup_files, len(paths)))]
    model.predict([str(p) for p in warm], 1)
    pacs = Orthanc(work / "pacs", aet=PACS_AE, binary=orthanc).start()
    node = watcher = None
    try:
        node_log = work / "node.log"
        node, port = start_node(bundle, work / "node", node_log, pacs, model.engine, cfg.node_args)
        watcher = ChangeWatcher(pacs, cfg.poll_s)
        ctx = Session(cfg, pacs, watcher, node, port, node_log, work / "node" / "results.jsonl", contexts)
        warmup = run_round(ctx, warm, 1, work / "round-warmup")

        def contender() -> dict:
            with watcher.paused():  # its CPU is not predict's
                return run_predicts(model, paths, cfg)

        predicts, rounds = [contender()], []
        for i, c in enumerate(cfg.associations):
            rounds.append(run_round(ctx, paths, c, work / f"round-{i}"))
            shutil.rmtree(work / f"round-{i}", ignore_errors=True)
            predicts.append(contender())
    finally:
        if watcher is not None:
            watcher.stop()
        node_exit = stop_process(node) if node is not None else None
        pacs.stop()
    return make_record(model, paths, cfg, synthetic, warmup, rounds, predicts, node_exit)


def make_record(model, paths, cfg, synthetic, warmup, rounds, predicts, node_exit) -> dict:
    """The record: environment, config, the rounds with their ratios, the predict runs, the goal."""
    default_b = str(cfg.predict_batch_sizes[0])
    for i, r in enumerate(rounds):  # each round against the predict runs on either side of it
        around = {b: (predicts[i][b]["instances_per_s"] + predicts[i + 1][b]["instances_per_s"]) / 2 for b in predicts[0]}
        r["predict_instances_per_s"] = around
        r["ratio_vs_predict"] = {b: r["instances_per_s"] / v for b, v in around.items()}
        r.update(cpu_figures(r, [predicts[i][default_b], predicts[i + 1][default_b]]))
    predict_summary = {b: {"runs": [p[b]["instances_per_s"] for p in predicts],
                           "first": predicts[0][b]["instances_per_s"], "last": predicts[-1][b]["instances_per_s"],
                           "mean": sum(p[b]["instances_per_s"] for p in predicts) / len(predicts)} for b in predicts[0]}
    goals = []
    at, target = GOAL
    for r in rounds:
        if r["associations"] == at:
            ratio = r["ratio_vs_predict"][default_b]
            goals.append({"goal": f"node at {at} associations vs medge predict (batch size {default_b}), 2-core box",
                          "ratio": ratio, "target": target, "met": ratio >= target,
                          "ceiling_with_senders_beside": r.get("ceiling_with_senders_beside")})
    sizes = [p.stat().st_size for p in paths]
    return {"benchmark": "node_load", "machine": machine(), "environment": environment(),
            "versions": _versions(), "config": {**asdict(cfg), "synthetic_inputs": synthetic},
            "model_sha256": model.sha256, "engine": model.engine, "input_size": list(model.chw),
            "files": len(paths), "mean_file_mb": sum(sizes) / len(sizes) / 2**20,
            "image_size": None if not synthetic else cfg.size, "warmup": warmup, "rounds": rounds,
            "predict": {"runs": predicts, "summary": predict_summary}, "goals": goals, "node_exit": node_exit}


def cpu_figures(r: dict, around: list[dict]) -> dict:
    """Where a round's ratio comes from, in CPU per instance: ``Model.predict``'s (the runs on either side, batch size
    ``medge predict``'s), the node's, and the ratio of the two, what the node would reach on a box of its own (its
    senders and PACS elsewhere, as in a hospital); and the ceiling of the measured ratio with them beside it on this
    box: what even a node costing no more than ``Model.predict`` per instance could reach while the senders and
    PACS take their measured share, predict / (predict + senders + PACS). Records without CPU figures: {}."""
    per = r.get("cpu_s_per_instance") or {}
    if not per or any("cpu_s_per_instance" not in p for p in around):
        return {}
    predict = sum(p["cpu_s_per_instance"] for p in around) / len(around)
    beside = per["senders"] + per["orthanc"]
    return {"predict_cpu_s_per_instance": predict, "cpu_ratio_vs_predict": predict / per["node"],
            "ceiling_with_senders_beside": predict / (predict + beside)}


def _versions() -> dict:
    import highdicom
    import pydicom
    import pynetdicom

    from medge import __version__

    return {"medge": __version__, "pynetdicom": pynetdicom.__version__, "highdicom": highdicom.__version__,
            "pydicom": pydicom.__version__}


def table(record: dict) -> str:
    """The table of a record."""
    m, cfg = record["machine"], record["config"]
    b = str(cfg["predict_batch_sizes"][0])
    pred = record["predict"]["summary"]
    what = f"{cfg['size']} px synthetic DX" if record["image_size"] else "given files"
    head = (f"`medge node` on {m['cpu']}, {m['usable_cores']} of {m['cores']} cores; {record['files']} {what} "
            f"({record['mean_file_mb']:.1f} MB each), model input {'x'.join(map(str, record['input_size']))}, "
            f"engine {record['engine']}; git {record['environment']['git_revision']}.\n"
            + "\n".join(f"medge predict, batch size {k}: {v['first']:.2f} instances/s before the rounds, "
                        f"{v['last']:.2f} after (mean {v['mean']:.2f})" for k, v in pred.items()))
    lines = [head, "", f"| associations | instances/s | p50 ms | p99 ms | node / predict b{b} | SRs | C-STORE p50 ms | "
             "per pipeline run | node CPU s/inst | predict CPU s/inst | node / predict, CPU per inst | "
             "ceiling, senders beside | box busy cores |",
             "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in record["rounds"]:
        lat, cpu = r["latency_ms"], r["cpu_s_per_instance"] or {}
        per_call = r["node_log"]["mean_instances_per_call"]
        lines.append(f"| {r['associations']} | {r['instances_per_s']:.2f} | {lat['p50_ms']:.0f} | {lat['p99_ms']:.0f} | "
                     f"{r['ratio_vs_predict'][b]:.2f} | {r['srs_in_pacs']}/{r['sent']} | "
                     f"{r['parts_ms']['c_store_answer']['p50_ms']:.0f} | "
                     f"{per_call if per_call is None else f'{per_call:.1f}'} | {cpu.get('node', float('nan')):.3f} | "
                     f"{_num(r.get('predict_cpu_s_per_instance'), 3)} | {_num(r.get('cpu_ratio_vs_predict'), 2)} | "
                     f"{_num(r.get('ceiling_with_senders_beside'), 2)} | {r['box_busy_cores'] or float('nan'):.2f} |")
    for g in record["goals"]:
        ceiling = g.get("ceiling_with_senders_beside")
        lines.append(f"\nGoal: {g['goal']}: {g['ratio']:.2f} (target >= {g['target']}): {'met' if g['met'] else 'NOT met'}"
                     + ("" if ceiling is None else f"; ceiling with the senders and PACS beside it: {ceiling:.2f}"))
    return "\n".join(lines)


def _num(value, digits: int) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _ints(text: str) -> tuple[int, ...]:
    values = tuple(int(v) for v in text.split(",") if v.strip())
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: give whole numbers >= 1, comma-separated")
    return values


def write_readme(readme: str, record: dict, command: str) -> None:
    """Replace the README's node-load section with the table (``report.replace_section``)."""
    from medge.benchmarks.report import replace_section

    replace_section(Path(readme), "node-load", table(record), command)


def main(argv=None) -> int:
    d = LoadConfig()
    p = research_parser(__doc__)
    p.add_argument("--model", help="bundle folder")
    p.add_argument("--files", type=int, default=d.files, help="synthetic DX instances to write (default: %(default)s)")
    p.add_argument("--size", type=int, default=d.size, help="their side in px (default: %(default)s)")
    p.add_argument("--inputs", metavar="DIR", help="send the DICOM files in this folder instead")
    p.add_argument("--associations", type=_ints, default=d.associations,
                   help="concurrent associations per round (default: %(default)s)")
    p.add_argument("--predict-batch-sizes", type=_ints, default=d.predict_batch_sizes,
                   help="Model.predict contenders; the first is the goal's (default: %(default)s)")
    p.add_argument("--warmup-files", type=int, default=d.warmup_files, help="(default: %(default)s)")
    p.add_argument("--poll-s", type=float, default=d.poll_s, help="Orthanc /changes polling (default: %(default)s)")
    p.add_argument("--node-args", default="", help="extra medge node options, e.g. '--batch-size 4'")
    p.add_argument("--sender", choices=("storescu", "pynetdicom"), default=d.sender,
                   help="what sends: dcmtk's storescu processes (uncompressed files; as modalities send, in C) or "
                        "pynetdicom in this process (any transfer syntax; ~30 ms of Python CPU per 8 MB on the "
                        "same box) (default: %(default)s)")
    p.add_argument("--orthanc", default=shutil.which("Orthanc") or "/usr/sbin/Orthanc", help="Orthanc binary")
    add_out_arguments(p)
    p.add_argument("--from", dest="from_record", help="print the table of a record instead of measuring")
    p.add_argument("--readme", help="replace the node-load section of this README with the table")
    a = p.parse_args(argv)
    if a.from_record:
        record = json.loads(Path(a.from_record).read_text(encoding="utf-8"))
        print(table(record))
        if a.readme:
            write_readme(a.readme, record, f"python -m medge.benchmarks.node_load --from {a.from_record} --readme {a.readme}")
        return 0
    if not a.model:
        p.error("--model is required (or --from)")
    status = check_outputs("node_load", a.overwrite, {"record": a.out})
    if status:
        return status
    cfg = LoadConfig(files=a.files, size=a.size, associations=a.associations, predict_batch_sizes=a.predict_batch_sizes,
                     warmup_files=a.warmup_files, poll_s=a.poll_s, node_args=tuple(a.node_args.split()),
                     sender=a.sender)
    if cfg.sender == "storescu" and not os.access(STORESCU, os.X_OK):
        p.error(f"--sender storescu: {STORESCU} not found (apt-get install dcmtk), or give --sender pynetdicom")
    with tempfile.TemporaryDirectory(prefix="medge-node-load-") as tmp:
        work = Path(tmp)
        paths = scan_dicom_folder(a.inputs) if a.inputs else make_dicom_files(work / "inputs", cfg.files, cfg.size)
        compressed = sorted({ts for _, ts in presentation_contexts(paths)} - UNCOMPRESSED)
        if cfg.sender == "storescu" and compressed:
            p.error(f"--sender storescu sends uncompressed files only; {a.inputs} has {', '.join(compressed)}: "
                    "give --sender pynetdicom")
        record = measure(a.model, paths, cfg, work, a.orthanc, synthetic=not a.inputs)
    record["command"] = ["python", "-m", "medge.benchmarks.node_load", *(sys.argv[1:] if argv is None else argv)]
    emit(record, a.out)
    print(table(record))
    return 0


if __name__ == "__main__":
    sys.exit(main())
