"""Forwarding results to PACS: one on-disk outbox per channel (C-STORE, DICOMweb STOW-RS), each emptied with
retries that back off.

``DIR/outbox/<name>.dcm`` holds each SR (and SC) to send by C-STORE (--forward), ``DIR/outbox-stow/<name>.dcm``
each to send by STOW-RS (--forward-stow); the classifier writes every result into each channel's folder,
atomically, before its record is committed (``Outboxes.put``). A channel sends its folder, oldest first, and
a file leaves it only after that channel's server said it stored that SOP Instance UID, so one channel
being down holds back or repeats nothing of the other. When a server is down, does not answer or is out
of resources, the round stops and the next one waits 1, 2, 4, ... s, at most ``retry_max_s``. A file a
server can never take moves to ``failed/`` in its channel's folder, with the reason logged, so that it
does not hold back the others: for C-STORE no context for its SOP class (e.g. a PACS that stores no
Secondary Capture) or a 0xA9xx or 0xCxxx refusal; for STOW-RS the answers ``stow_verdict`` calls refused.
The folders survive restarts. Result objects have UIDs derived from their source instance
(``report.result_uid``), so a file sent again after a crash between the server's answer and the deletion
is the same instance to the server, not a second result.

STOW-RS (PS3.18 10.5) is plain HTTP from the standard library (``http.client``, ``ssl``): one
``POST {url}/studies`` per object, ``multipart/related; type="application/dicom"``, on one connection per
round, the answer asked as ``application/dicom+json``. Logs name files by their hash, servers by AE title
or URL, answers by status code, never a password, a token, or the text of a server's error (it may quote
patient data).
"""
from __future__ import annotations

import http.client
import io
import json
import os
import secrets
import ssl
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

from medge import __version__
from medge.edge.apps.node.config import NodeConfig, Peer, Stow
from medge.edge.apps.node.scp import no_delay
from medge.edge.apps.node.spool import fsync_dir, private_dir
from medge.edge.errors import UsageError

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
    """One channel: its outbox folder, sent by ``sender`` (``CStoreSender``, ``StowSender``); ``run`` until stopped,
    ``send_round`` once. A sender's ``send(files, outbox)`` calls ``delivered`` or ``give_up`` per file it has an
    answer for and returns None, or the reason it stopped (the round is retried after ``delay_s``)."""

    def __init__(self, folder: Path, sender, retry_max_s: float = 60.0, log=print):
        self.dir = private_dir(Path(folder))
        self.sender, self.retry_max_s, self.log = sender, retry_max_s, log
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
        """Send what waits, oldest first. True when the outbox is empty afterwards."""
        files = self.waiting()
        if not files:
            return True
        why = self.sender.send(files, self)
        if why is not None:
            return self._failed(why)
        self.failures, self.last_error = 0, None
        return not self.waiting()

    def delivered(self, path: Path, answer: str) -> None:
        """The server stored it: the file leaves the outbox."""
        path.unlink(missing_ok=True)
        self.sent += 1
        self.log(f"forwarded {path.name} to {self.sender.destination} ({answer})")

    def give_up(self, path: Path, why: str) -> None:
        """A permanent refusal: the file goes to failed/ (kept, said so) and the others are still sent."""
        failed = private_dir(self.dir / "failed")
        os.replace(path, failed / path.name)
        fsync_dir(failed)
        self.refused += 1
        self.log(f"{self.sender.option}: {path.name} not stored: {why}; kept in {self.dir.name}/failed/")

    def _failed(self, why: str) -> bool:
        self.failures += 1
        self.last_error = why
        waiting = len(self.waiting())  # what waits, the object the round stopped at included
        self.log(f"{self.sender.option}: {why}; {waiting} result object(s) waiting in {self.dir.name}/, "
                 f"retrying in {self.delay_s():.0f} s")
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
            deadline, woken = time.monotonic() + wait, False
            while not stop.is_set() and time.monotonic() < deadline:
                if self.wake.wait(min(0.2, max(0.0, deadline - time.monotonic()))) and not self.failures:
                    woken = True
                    break
            if not woken or stop.is_set():
                self.sender.idle()  # nothing new for a while: let go of the connection


class CStoreSender:
    """C-STORE to ``peer`` (--forward) over one association, kept while results keep coming (a new one per result
    costs the PACS and the node ~5 ms of CPU and the result ~50 ms); released once the outbox has been idle
    (``idle``), and dropped after anything but a clean round."""

    option, folder = "forward", "outbox"
    count_keys = ("forwarded", "forward_refused", "outbox")  # sent, refused, waiting in the node's summary

    def __init__(self, peer: Peer, calling_ae: str):
        self.peer, self.calling_ae = peer, calling_ae
        self.destination = str(peer)
        self._assoc = None

    def _association(self):
        """The kept association if the PACS still holds it, else a new one (None, with the reason, if refused)."""
        from pynetdicom import AE

        if self._assoc is not None and self._assoc.is_established:
            return self._assoc, None
        ae = AE(ae_title=self.calling_ae)
        for uid in (SR_STORAGE, SC_STORAGE):
            ae.add_requested_context(uid, EXPLICIT_LE)
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
        assoc = ae.associate(self.peer.host, self.peer.port, ae_title=self.peer.ae_title)
        if not assoc.is_established:
            return None, (f"association with {self.peer} not established "
                          f"({'rejected' if assoc.is_rejected else 'no answer or aborted'})")
        no_delay(assoc)
        self._assoc = assoc
        return assoc, None

    def idle(self, broken: bool = False) -> None:
        """Let go of the kept association: released, or aborted when the round ended otherwise than cleanly."""
        assoc, self._assoc = self._assoc, None
        if assoc is not None and assoc.is_established:
            assoc.abort() if broken else assoc.release()

    def send(self, files: list[Path], outbox: Forwarder) -> str | None:
        kept = self._assoc is not None
        why = self._round(files, outbox)
        if why is not None and kept:  # the PACS may have closed the kept association meanwhile: once more, anew
            why = self._round([f for f in files if f.exists()], outbox)
        return why

    def _round(self, files: list[Path], outbox: Forwarder) -> str | None:
        assoc, why = self._association()
        if assoc is None:
            return why
        clean = False
        try:
            why = self._send_each(assoc, files, outbox)
            clean = why is None
            return why
        finally:
            if not clean:
                self.idle(broken=True)

    def _send_each(self, assoc, files: list[Path], outbox: Forwarder) -> str | None:
        for path in files:
            try:
                status = assoc.send_c_store(path)
            except ValueError as e:  # no presentation context for its SOP class: this PACS will never take it
                outbox.give_up(path, f"{self.peer} accepted no context for it ({e})")
                continue
            except RuntimeError:  # the association ended under it
                return f"the association with {self.peer} ended before {path.name} was stored"
            code = getattr(status, "Status", None)
            if code is None or transient(int(code)):
                why = "no answer" if code is None else f"status 0x{int(code):04X}"
                return f"{self.peer} did not store {path.name}: {why}"
            if not stored(int(code)):
                outbox.give_up(path, f"{self.peer} refused it with status 0x{int(code):04X}")
                continue
            outbox.delivered(path, f"status 0x{int(code):04X}")
        return None


# --- STOW-RS -------------------------------------------------------------------------------------------------------
REFERENCED_SOP_SEQUENCE, FAILED_SOP_SEQUENCE = "00081199", "00081198"
REFERENCED_SOP_INSTANCE_UID, FAILURE_REASON, WARNING_REASON = "00081155", "00081197", "00081196"
STORED, REFUSED, RETRY = "stored", "refused", "retry"
# HTTP answers that do not name the instance. It was alone in its request, so these refuse it and a resend would be
# refused again: 400 (bad request), 409 (conflict: none stored), 413 (too large for the server or a proxy), 422.
HTTP_REFUSED = {400: "bad request", 409: "conflict, none stored", 413: "too large for the server or a proxy before it",
                422: "unprocessable"}
# The same for every object: the node's configuration or the server's. Kept and retried (with the fix in the log),
# so that everything goes out once the operator mends it, instead of every result moving to failed/.
HTTP_CONFIGURATION = {401: "check --stow-user and its password, or --stow-token-file (re-read at each try)",
                      403: "the server refuses this user or token: check its permissions (re-read at each try)",
                      404: "no such path: check the --forward-stow URL (the DICOMweb base, without /studies)",
                      405: "no STOW-RS at this URL: check --forward-stow and that the server's DICOMweb is on",
                      406: "the server cannot answer in application/dicom+json",
                      415: "the server takes no multipart/related application/dicom here: check --forward-stow"}


def stow_verdict(status: int, body: bytes, uid: str) -> tuple[str, str]:
    """What a STOW-RS answer says of the one instance it carried: (STORED, REFUSED or RETRY; why, for the log).

    A response dataset (PS3.18 10.5.3) that names the instance decides, whatever the HTTP status: in the
    ReferencedSOPSequence it is stored (a WarningReason is logged); in the FailedSOPSequence its FailureReason
    says, as a C-STORE status would, whether to retry (0xA7xx out of resources, 0xFE00) or give up. Otherwise the
    HTTP status does: ``HTTP_REFUSED`` gives up, everything else (200 or 202 that do not list it, ``HTTP_CONFIGURATION``,
    3xx, 408, 429, 5xx, any other) retries: a result is never dropped unless the server refused it.
    """
    answer = f"HTTP {status}"
    dataset = _response_dataset(body)
    if dataset is not None:
        item = _item_of(dataset, REFERENCED_SOP_SEQUENCE, uid)
        if item is not None:
            warning = _first_value(item, WARNING_REASON)
            return STORED, answer + (f", warning 0x{int(warning):04X}" if warning is not None else "")
        item = _item_of(dataset, FAILED_SOP_SEQUENCE, uid)
        if item is not None:
            reason = _first_value(item, FAILURE_REASON)
            why = f"{answer}, failure reason " + ("not given" if reason is None else f"0x{int(reason):04X}")
            return (RETRY if reason is not None and transient(int(reason)) else REFUSED), why
    if status in HTTP_REFUSED:
        return REFUSED, f"{answer} ({HTTP_REFUSED[status]})"
    if status in HTTP_CONFIGURATION:
        return RETRY, f"{answer}: {HTTP_CONFIGURATION[status]}"
    if 300 <= status < 400:
        return RETRY, f"{answer}: a redirect, not followed: give the address it points to as --forward-stow"
    return RETRY, answer + (": the answer does not list it as stored" if status in (200, 202) else "")


def _response_dataset(body: bytes) -> dict | None:
    """The DICOM JSON dataset of a STOW-RS answer (some servers wrap it in a list), or None (not one: an error page)."""
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return None
    if isinstance(data, list) and len(data) == 1:
        data = data[0]
    if isinstance(data, dict) and (REFERENCED_SOP_SEQUENCE in data or FAILED_SOP_SEQUENCE in data):
        return data
    return None


def _item_of(dataset: dict, sequence: str, uid: str) -> dict | None:
    items = (dataset.get(sequence) or {}).get("Value") or []
    return next((i for i in items if isinstance(i, dict) and _first_value(i, REFERENCED_SOP_INSTANCE_UID) == uid), None)


def _first_value(item: dict, tag: str):
    values = (item.get(tag) or {}).get("Value") or [None]
    return values[0]


def multipart(data: bytes) -> tuple[bytes, str]:
    """One Part 10 file as a STOW-RS request body, and its Content-Type (a boundary that is not in the file)."""
    boundary = secrets.token_hex(16)
    while boundary.encode() in data:
        boundary = secrets.token_hex(16)
    body = b"".join([f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode(), data,
                     f"\r\n--{boundary}--\r\n".encode()])
    return body, f'multipart/related; type="application/dicom"; boundary={boundary}'


class StowSender:
    """STOW-RS to ``stow.url`` (--forward-stow): one POST per object, on one connection per round."""

    option, folder = "forward-stow", "outbox-stow"
    count_keys = ("stowed", "stow_refused", "outbox_stow")

    def __init__(self, stow: Stow):
        self.stow = stow
        self.destination = stow.url
        parts = urlsplit(stow.url)
        self.path = parts.path.rstrip("/") + "/studies"

    def idle(self) -> None:
        """Nothing kept between rounds: each round opens its own connection."""

    def connect(self) -> http.client.HTTPConnection:
        parts = urlsplit(self.stow.url)
        if parts.scheme == "http":
            return http.client.HTTPConnection(parts.hostname, parts.port, timeout=self.stow.timeout_s)
        context = ssl.create_default_context(cafile=self.stow.ca)  # with --stow-ca, that CA alone
        return http.client.HTTPSConnection(parts.hostname, parts.port, timeout=self.stow.timeout_s, context=context)

    def send(self, files: list[Path], outbox: Forwarder) -> str | None:
        import pydicom

        try:
            authorization = self.stow.authorization()
        except UsageError as e:
            return str(e)
        headers = {"Accept": "application/dicom+json", "User-Agent": f"medge/{__version__}"}
        if authorization is not None:
            headers["Authorization"] = authorization
        connection = self.connect()
        try:
            for path in files:
                data = path.read_bytes()
                uid = str(pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True,
                                          specific_tags=["SOPInstanceUID"]).SOPInstanceUID)
                body, content_type = multipart(data)
                try:
                    connection.request("POST", self.path, body, {**headers, "Content-Type": content_type})
                    response = connection.getresponse()
                    answer = response.read()
                except (OSError, http.client.HTTPException) as e:  # refused, reset, timed out, TLS: the server's state
                    return f"{self.destination} did not answer for {path.name} ({type(e).__name__}: {e})"
                verdict, why = stow_verdict(response.status, answer, uid)
                if verdict == STORED:
                    outbox.delivered(path, why)
                elif verdict == REFUSED:
                    outbox.give_up(path, f"{self.destination} refused it: {why}")
                else:
                    return f"{self.destination} did not store {path.name}: {why}"
        finally:
            connection.close()
        return None


class Outboxes:
    """The node's channels, from its settings: C-STORE (``cfg.forward``), STOW-RS (``cfg.stow``), both or neither.
    ``put`` queues a result in every channel's folder; each ``Forwarder`` then runs on its own."""

    def __init__(self, out_dir: str | Path, cfg: NodeConfig, log=print):
        senders: list[CStoreSender | StowSender] = []
        if cfg.forward:
            senders.append(CStoreSender(cfg.forward, cfg.ae_title))
        if cfg.stow:
            senders.append(StowSender(cfg.stow))
        self.channels = [Forwarder(Path(out_dir) / s.folder, s, cfg.retry_max_s, log) for s in senders]

    def put(self, name: str, data: bytes) -> None:
        """Queue one encoded result in each channel (a crash before the last write redoes the instance: all again)."""
        for channel in self.channels:
            channel.put(name, data)

    def notes(self) -> list[str]:
        """At start, per channel: results left waiting by an earlier run, and any refused ones kept in failed/
        (easy to miss: they are never sent again unless moved back)."""
        notes = []
        for f in self.channels:
            failed = sorted((f.dir / "failed").glob("*.dcm")) if (f.dir / "failed").is_dir() else []
            if waiting := len(f.waiting()):
                notes.append(f"{waiting} result(s) from an earlier run wait in {f.dir.name}/ for --{f.sender.option}")
            if failed:
                notes.append(f"{len(failed)} result(s) refused earlier by the --{f.sender.option} server are kept in "
                             f"{f.dir.name}/failed/ (move them back to {f.dir.name}/ to send them again)")
        return notes

    def counts(self) -> dict:
        """Per channel: sent, refused (in failed/) and waiting, under the channel's keys of the node's summary."""
        return {key: value for f in self.channels
                for key, value in zip(f.sender.count_keys, (f.sent, f.refused, len(f.waiting())), strict=True)}
