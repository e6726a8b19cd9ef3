"""Forwarding results to PACS: an on-disk outbox emptied by C-STORE, with retries that back off.

``DIR/outbox/<name>.dcm`` holds each SR (and SC) to send, written atomically by the
classifier. The forwarder sends the oldest first over one association per round; a
file leaves the outbox only after the PACS answered success (or a warning, which
DICOM counts as stored). When the PACS is down, does not answer or is out of
resources, the round stops and the next one waits 1, 2, 4, ... s, at most
``retry_max_s``. A file the PACS can never take (no context for its SOP class, e.g.
a PACS that stores no Secondary Capture; a 0xA9xx or 0xCxxx refusal) moves to
``outbox/failed/``, logged, so that it does not hold back the others. The outbox is a folder, so it
survives restarts. Result objects have UIDs derived from their source instance
(``report.result_uid``), so a file sent again after a crash between the PACS's
answer and the deletion is the same instance to the PACS, not a second result.
"""
from __future__ import annotations

import os
import threading
import time
from pathlib import Path

from medge.edge.apps.node.config import Peer
from medge.edge.apps.node.scp import no_delay
from medge.edge.apps.node.spool import private_dir

SR_STORAGE = "1.2.840.10008.5.1.4.1.1.88.34"  # Comprehensive 3D SR Storage
SC_STORAGE = "1.2.840.10008.5.1.4.1.1.7"  # Secondary Capture Image Storage
EXPLICIT_LE = "1.2.840.10008.1.2.1"


def stored(status: int) -> bool:
    """C-STORE success (0x0000) or a warning (0xB000, 0xB006, 0xB007: stored with coercion or elements discarded)."""
    return status == 0x0000 or (status & 0xF000) == 0xB000


def transient(status: int) -> bool:
    """A refusal worth retrying: out of resources (0xA7xx) or cancelled (0xFE00);
    0xA9xx (data set does not match the SOP class) and 0xCxxx (cannot understand) will not change with time."""
    return (status & 0xFF00) == 0xA700 or status == 0xFE00


class Forwarder:
    """Sends the outbox to ``peer``; ``run`` until stopped, ``send_round`` once."""

    def __init__(self, out_dir: Path, peer: Peer, calling_ae: str, retry_max_s: float = 60.0, log=print):
        self.dir = private_dir(Path(out_dir) / "outbox")
        self.peer, self.calling_ae, self.retry_max_s, self.log = peer, calling_ae, retry_max_s, log
        self.wake = threading.Event()
        self.sent, self.failures, self.refused = 0, 0, 0
        self.last_error: str | None = None

    def put(self, name: str, data: bytes) -> Path:
        """Queue one encoded DICOM file (Part 10) for sending."""
        from medge.edge.outputs import atomic_write_bytes

        path = atomic_write_bytes(self.dir / name, data)
        self.wake.set()
        return path

    def waiting(self) -> list[Path]:
        return sorted(self.dir.glob("*.dcm"), key=lambda p: (p.stat().st_mtime_ns, p.name))

    def send_round(self) -> bool:
        """Send what waits, oldest first, over one association. True when the outbox is empty afterwards."""
        from pynetdicom import AE

        files = self.waiting()
        if not files:
            return True
        ae = AE(ae_title=self.calling_ae)
        for uid in (SR_STORAGE, SC_STORAGE):
            ae.add_requested_context(uid, EXPLICIT_LE)
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
        assoc = ae.associate(self.peer.host, self.peer.port, ae_title=self.peer.ae_title)
        if not assoc.is_established:
            return self._failed(f"association with {self.peer} not established "
                                f"({'rejected' if assoc.is_rejected else 'no answer or aborted'})")
        no_delay(assoc)
        try:
            for path in files:
                try:
                    status = assoc.send_c_store(path)
                except ValueError as e:  # no presentation context for its SOP class: this PACS will never take it
                    self._give_up(path, f"{self.peer} accepted no context for it ({e})")
                    continue
                code = getattr(status, "Status", None)
                if code is None or transient(int(code)):
                    why = "no answer" if code is None else f"status 0x{int(code):04X}"
                    return self._failed(f"{self.peer} did not store {path.name}: {why}")
                if not stored(int(code)):
                    self._give_up(path, f"{self.peer} refused it with status 0x{int(code):04X}")
                    continue
                path.unlink(missing_ok=True)
                self.sent += 1
                self.log(f"forwarded {path.name} to {self.peer} (status 0x{int(code):04X})")
        finally:
            if assoc.is_established:
                assoc.release()
        self.failures, self.last_error = 0, None
        return not self.waiting()

    def _give_up(self, path: Path, why: str) -> None:
        """A permanent refusal: the file goes to outbox/failed/ (kept, said so) and the others are still sent."""
        os.replace(path, private_dir(self.dir / "failed") / path.name)
        self.refused += 1
        self.log(f"forward: {path.name} not stored: {why}; kept in outbox/failed/")

    def _failed(self, why: str) -> bool:
        self.failures += 1
        self.last_error = why
        self.log(f"forward: {why}; retrying in {self.delay_s():.0f} s")
        return False

    def delay_s(self) -> float:
        return min(self.retry_max_s, 2.0 ** max(0, self.failures - 1))

    def run(self, stop: threading.Event, poll_s: float = 1.0) -> None:
        """Send until ``stop`` is set; a failed round waits ``delay_s`` (or until stopped)."""
        while not stop.is_set():
            self.wake.clear()  # before the round: a file put during it wakes the next one at once
            try:
                empty = self.send_round()
            except Exception as e:  # a PACS that resets the connection mid-way: retried like a refusal
                empty = self._failed(f"{type(e).__name__}: {e}")
            wait = poll_s if empty or not self.failures else self.delay_s()
            deadline = time.monotonic() + wait
            while not stop.is_set() and time.monotonic() < deadline:
                if self.wake.wait(min(0.2, max(0.0, deadline - time.monotonic()))) and not self.failures:
                    break
