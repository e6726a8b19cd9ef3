"""The node's disk state: what was received and not yet classified, and what is done. Nothing lost, nothing twice.

  DIR/spool/<h>.dcm      an instance acknowledged to its sender (written, fsynced and renamed
                         before the C-STORE success status goes back), not yet classified
  DIR/spool/<h>.json     what the association said of it (calling AE, when), written before the .dcm
  DIR/incoming/          instances being received (pynetdicom writes each there as it arrives, not to
                         memory); what an aborted association leaves is deleted
  DIR/results.jsonl      one line per instance, appended and fsynced: the commit point
  DIR/images/<h>.dcm     with --keep-images, the instance once its result is safe (else deleted)

``<h>`` is ``uid_hash`` of the SOP Instance UID: file names and logs carry no UID.
An instance is done when its SOP Instance UID has a line in results.jsonl; after a
crash (even ``kill -9``) the spool files without one are classified again, those
with one are only cleaned up, and a line cut short by the crash is dropped, so each
instance gets exactly one result. The spool, the outboxes, reports and studies are mode 0700,
results.jsonl 0600 (its UIDs lead to patients).
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path

from medge.edge.outputs import atomic_write_text
from medge.edge.paths import to_json

RESULTS = "results.jsonl"


def uid_hash(uid: str) -> str:
    """A short stable name for a UID in file names and logs (no UID, no patient data)."""
    return hashlib.sha256(uid.encode("ascii", "replace")).hexdigest()[:20]


def private_dir(path: Path) -> Path:
    """Create ``path`` (and parents) and make it mode 0700: the folders that hold patient images."""
    path.mkdir(parents=True, exist_ok=True)
    os.chmod(path, 0o700)
    return path


def fsync_dir(path: Path) -> None:
    """Make a rename or unlink in ``path`` durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@dataclass(frozen=True)
class Spooled:
    """One received instance waiting in the spool."""

    sop_uid: str
    path: Path
    calling_ae: str
    received_at: float  # time.time()


class Spool:
    """The spool folder, the results ledger and the queue between them (thread-safe)."""

    def __init__(self, out_dir: str | os.PathLike, capacity: int, keep_images: bool = False):
        self.out_dir = Path(out_dir)
        self.dir = private_dir(self.out_dir / "spool")
        self.incoming = private_dir(self.out_dir / "incoming")  # instances being received (``scp``)
        self.results_path = self.out_dir / RESULTS
        os.close(os.open(self.results_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600))  # UIDs: private
        os.chmod(self.results_path, 0o600)
        self.capacity, self.keep_images = capacity, keep_images
        self._lock = threading.Condition()
        self._queue: deque[Spooled] = deque()
        self._pending: set[str] = set()  # SOP Instance UIDs in the spool (queued or being classified)
        self._reserved: set[str] = set()  # being written by an association right now
        self.waiting = 0  # associations waiting in ``reserve`` for another copy's outcome
        self.done: dict[str, dict] = {}  # SOP Instance UID -> its record
        self.recovered = self._recover()

    # --- start-up ---------------------------------------------------------------------------------------------
    def _read_results(self) -> None:
        if not self.results_path.exists():
            return
        data = self.results_path.read_bytes()
        end = data.rfind(b"\n") + 1
        if end < len(data):  # a line cut short by a crash: drop it (its instance is still in the spool)
            with open(self.results_path, "r+b") as f:
                f.truncate(end)
                os.fsync(f.fileno())
        for line in data[:end].splitlines():
            try:
                rec = json.loads(line)
                self.done[rec["sop_instance_uid"]] = rec
            except (json.JSONDecodeError, KeyError, TypeError):
                continue

    def _recover(self) -> int:
        """Read the ledger; queue every spooled instance without a result; clean up the rest. Returns how many."""
        self._read_results()
        for tmp in [*self.dir.glob(".*"), *self.incoming.iterdir()]:  # cut short: never acknowledged
            tmp.unlink(missing_ok=True)
        queued = []
        for meta_path in self.dir.glob("*.json"):
            dcm = meta_path.with_suffix(".dcm")
            try:
                meta = json.loads(meta_path.read_text(encoding="utf-8"))
            except (OSError, json.JSONDecodeError):
                meta = None
            if not dcm.exists() or meta is None:  # crashed between the sidecar and the image: never acknowledged
                meta_path.unlink(missing_ok=True)
                if meta is None and dcm.exists():  # an image whose sidecar is damaged: classify it all the same
                    meta = {"sop_instance_uid": None, "calling_ae": "", "received_at": dcm.stat().st_mtime}
                else:
                    continue
            uid = meta.get("sop_instance_uid") or dcm.stem
            item = Spooled(uid, dcm, meta.get("calling_ae", ""), float(meta.get("received_at", 0.0)))
            if uid in self.done:
                self.release(item)
            else:
                queued.append(item)
        for dcm in self.dir.glob("*.dcm"):  # an image without any sidecar
            if dcm.stem not in {Path(i.path).stem for i in queued} and not dcm.with_suffix(".json").exists():
                queued.append(Spooled(dcm.stem, dcm, "", dcm.stat().st_mtime))
        queued.sort(key=lambda i: i.received_at)
        for item in queued:
            self._pending.add(item.sop_uid)
            self._queue.append(item)
        return len(queued)

    def sweep_incoming(self, max_age_s: float) -> int:
        """Delete what an aborted association left in ``incoming/`` (untouched for ``max_age_s``); returns how many."""
        removed, now = 0, time.time()
        for path in self.incoming.iterdir():
            try:
                if now - path.stat().st_mtime > max_age_s:
                    path.unlink()
                    removed += 1
            except FileNotFoundError:  # received in full and moved into the spool meanwhile
                continue
        return removed

    # --- receiving (association threads) ----------------------------------------------------------------------
    def reserve(self, sop_uid: str, wait_s: float = 0.0) -> str:
        """Claim ``sop_uid`` for writing: "ok", "duplicate" (done or queued), "full", or "busy".

        A copy that another association is writing right now has no outcome yet: it may still fail (unreadable,
        too large, a write error), and then this copy is the one to keep. So this waits up to ``wait_s`` for
        that outcome: spooled -> "duplicate"; failed -> this copy claims the UID. Still undecided -> "busy",
        which the caller must not answer with success.
        """
        deadline = time.monotonic() + wait_s
        with self._lock:
            while sop_uid in self._reserved:
                left = deadline - time.monotonic()
                if left <= 0:
                    return "busy"
                self.waiting += 1
                try:
                    self._lock.wait(left)
                finally:
                    self.waiting -= 1
            if sop_uid in self.done or sop_uid in self._pending:
                return "duplicate"
            if len(self._pending) + len(self._reserved) >= self.capacity:
                return "full"
            self._reserved.add(sop_uid)
            return "ok"

    def unreserve(self, sop_uid: str) -> None:
        """Give up the claim (the copy was not spooled): a copy waiting in ``reserve`` may now take it."""
        with self._lock:
            self._reserved.discard(sop_uid)
            self._lock.notify_all()

    def put(self, sop_uid: str, received: Path, calling_ae: str) -> Spooled:
        """Move or copy the received file into the spool durably, then queue it. Raises OSError when it cannot."""
        h = uid_hash(sop_uid)
        target, meta = self.dir / f"{h}.dcm", self.dir / f"{h}.json"
        now = time.time()
        try:
            atomic_write_text(meta, to_json({"sop_instance_uid": sop_uid, "calling_ae": calling_ae, "received_at": now}))
            tmp = self.dir / f".{h}.dcm.tmp"
            try:
                os.replace(received, tmp)  # same file system: no copy
            except OSError:
                shutil.copyfile(received, tmp)
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
            os.replace(tmp, target)
            fsync_dir(self.dir)
        except OSError:
            for p in (meta, self.dir / f".{h}.dcm.tmp"):
                p.unlink(missing_ok=True)
            self.unreserve(sop_uid)
            raise
        item = Spooled(sop_uid, target, calling_ae, now)
        with self._lock:
            self._reserved.discard(sop_uid)
            self._pending.add(sop_uid)
            self._queue.append(item)
            self._lock.notify_all()
        return item

    # --- classifying (the worker thread) ----------------------------------------------------------------------
    def take(self, most: int, timeout_s: float) -> list[Spooled]:
        """Up to ``most`` queued instances, in arrival order; waits up to ``timeout_s`` for the first."""
        with self._lock:
            if not self._queue:
                self._lock.wait(timeout_s)
            return [self._queue.popleft() for _ in range(min(most, len(self._queue)))]

    def is_pending(self, sop_uid: str) -> bool:
        """Acknowledged and not yet committed."""
        with self._lock:
            return sop_uid in self._pending

    def requeue(self, items: list[Spooled]) -> None:
        """Put taken instances back at the head of the queue, in their order (their classification failed)."""
        with self._lock:
            self._queue.extendleft(reversed(items))
            self._lock.notify_all()

    def queued(self) -> int:
        with self._lock:
            return len(self._queue)

    def pending(self) -> int:
        """Instances acknowledged and not yet done (queued, being classified, or being written)."""
        with self._lock:
            return len(self._pending) + len(self._reserved)

    def commit(self, item: Spooled, record: dict) -> None:
        """Append ``record`` to results.jsonl (fsynced): from now on ``item`` is done. Then release its files."""
        line = to_json(record) + "\n"
        with self._lock:
            with open(self.results_path, "a", encoding="utf-8") as f:
                f.write(line)
                f.flush()
                os.fsync(f.fileno())
            self.done[record.get("sop_instance_uid") or item.sop_uid] = record
            self._pending.discard(item.sop_uid)
        self.release(item)

    def release(self, item: Spooled) -> None:
        """Delete (or, with keep_images, move to images/) a done instance's spool files."""
        if self.keep_images and item.path.exists():
            os.replace(item.path, private_dir(self.out_dir / "images") / item.path.name)
        else:
            item.path.unlink(missing_ok=True)
        item.path.with_suffix(".json").unlink(missing_ok=True)
