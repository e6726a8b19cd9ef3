"""The node's Storage SCP (pynetdicom): who may connect, what it accepts, and the C-STORE handler.

- Presentation contexts: the single-frame grayscale image SOP classes a classifier takes
  (``IMAGE_SOP_CLASSES``, plus those of the modalities the bundle's data profile names),
  and CT and MR slices (``SLICE_SOP_CLASSES``: taken, then recorded as skipped unless the
  bundle is for that modality),
  each with every transfer syntax ``edge.inputs.dicom`` decodes here; anything else is rejected
  at negotiation, and C-ECHO is answered.
- The called AE title must be ``--ae-title``, else A-ASSOCIATE-RJ, rejected-permanent,
  "called AE title not recognised"; with ``--allow AE[@HOST]`` another caller gets
  rejected-permanent, "calling AE title not recognised" (PS3.8 9.3.4).
- TLS handshakes run on the connection's own thread with a time limit, so a caller that
  connects and says nothing holds up no one else.
- Every association rejected, aborted or lost, and every failed TLS handshake, is a log
  line: the caller (AE title, address) and why; never patient data.
- A received dataset is written to a temporary file by pynetdicom, not held in memory
  (``STORE_RECV_CHUNKED_DATASET``), so a 60 MB instance costs disk, not RAM; it is
  refused above ``--max-instance-mb``.
- C-STORE answers, in this order: 0x0000 for a SOP Instance UID already spooled or done
  (no second result); 0xA700 (out of resources) when the queue is full, the instance is too
  large or it cannot be written; 0xC210 (cannot understand) when its header cannot be
  read (an element whose length runs past the end is named), or lacks the UIDs a result
  needs; else the instance is spooled durably (``spool.Spool.put``) and only then 0x0000.
- A copy of a UID that another association is writing at that moment waits for that
  copy's outcome (``Spool.reserve``): spooled, it is a duplicate (0x0000); failed, this
  copy is spooled instead. Success is never answered before some complete copy is safe;
  still undecided after ``OTHER_COPY_WAIT_S``, 0xA700 (the sender retries).
"""
from __future__ import annotations

import socket
import ssl
import time

from medge.edge.apps.node.config import NodeConfig
from medge.edge.apps.node.spool import Spool, uid_hash
from medge.edge.inputs.dicom import transfer_syntaxes
from medge.edge.node_extra import VERIFICATION

IMAGE_SOP_CLASSES = {
    "1.2.840.10008.5.1.4.1.1.1": "Computed Radiography Image Storage",
    "1.2.840.10008.5.1.4.1.1.1.1": "Digital X-Ray Image Storage - For Presentation",
    "1.2.840.10008.5.1.4.1.1.1.1.1": "Digital X-Ray Image Storage - For Processing",
    "1.2.840.10008.5.1.4.1.1.1.2": "Digital Mammography X-Ray Image Storage - For Presentation",
    "1.2.840.10008.5.1.4.1.1.1.2.1": "Digital Mammography X-Ray Image Storage - For Processing",
    "1.2.840.10008.5.1.4.1.1.7": "Secondary Capture Image Storage",
}
# Slices people send to a radiograph model by mistake: accepted, so that the sender hears success and the slice
# is recorded as skipped with the reason (``worker``), unless the bundle's profile names the modality.
SLICE_SOP_CLASSES = {
    "1.2.840.10008.5.1.4.1.1.2": ("CT", "CT Image Storage"),
    "1.2.840.10008.5.1.4.1.1.4": ("MR", "MR Image Storage"),
}
# Modalities a bundle's profile may name whose images come in other SOP classes.
MODALITY_SOP_CLASSES = {
    "IO": {"1.2.840.10008.5.1.4.1.1.1.3": "Digital Intra-Oral X-Ray Image Storage - For Presentation"},
    "XA": {"1.2.840.10008.5.1.4.1.1.12.1": "X-Ray Angiographic Image Storage"},
    "RF": {"1.2.840.10008.5.1.4.1.1.12.2": "X-Ray Radiofluoroscopic Image Storage"},
    "NM": {"1.2.840.10008.5.1.4.1.1.20": "Nuclear Medicine Image Storage"},
    "PT": {"1.2.840.10008.5.1.4.1.1.128": "Positron Emission Tomography Image Storage"},
}
REJECT_CALLING_AE = (0x01, 0x01, 0x03)  # rejected-permanent, service-user, calling AE title not recognised
REJECT_CALLED_AE = (0x01, 0x01, 0x07)  # rejected-permanent, service-user, called AE title not recognised
REJECT_STOPPING = (0x02, 0x03, 0x02)  # rejected-transient, service-provider (presentation), local limit exceeded
OTHER_COPY_WAIT_S = 30.0  # how long a copy waits for the outcome of one another association is writing
TLS_HANDSHAKE_S = 30.0  # a TLS caller must finish its handshake within this (the ACSE timeout)
OUT_OF_RESOURCES, CANNOT_UNDERSTAND, SUCCESS = 0xA700, 0xC210, 0x0000
MAX_PDU = 1 << 20
# pynetdicom's DUL thread polls every 1 ms while an association is open and idle (its ``_run_loop_delay``, which
# its source says to raise for less CPU): 4 idle associations cost 17 % of a core, 10 % at 5 ms.
DUL_IDLE_S = 0.005
FIRST_READ = MAX_PDU + 6  # ``read_whole``'s first buffer: a whole PDU of this node's size (and its header)
REACTOR_IDLE_S = 0.005  # the association thread's idle poll (pynetdicom: 1 ms); ``ReactorClock``


def no_delay(assoc) -> None:
    """TCP_NODELAY on an association's socket, as dcmtk sets it: a small DIMSE message (a C-STORE answer, an SR)
    otherwise waits for the peer's delayed ACK, some 40 ms each."""
    sock = getattr(getattr(getattr(assoc, "dul", None), "socket", None), "socket", None)
    if sock is not None:
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:  # not TCP, or closed already
            pass


def _receive_into(folder) -> None:
    """Make pynetdicom write received datasets into ``folder`` (private, on the spool's file system, swept of what
    aborted associations leave) instead of the system's temporary folder, where they would outlive an abort."""
    import functools
    import tempfile

    from pynetdicom import dimse_messages

    if not hasattr(dimse_messages, "NamedTemporaryFile"):  # another pynetdicom: its default folder, said so
        raise RuntimeError("this pynetdicom does not receive through dimse_messages.NamedTemporaryFile")
    dimse_messages.NamedTemporaryFile = functools.partial(tempfile.NamedTemporaryFile, dir=str(folder))


def read_whole(self, nr_bytes: int) -> bytearray:
    """``AssociationSocket.recv`` (what pynetdicom reads a PDU with): ``nr_bytes`` into one growing buffer.

    pynetdicom's own reads 4 KiB per call, each its own bytes object appended to the result: 2,048 calls and copies
    for an 8 MB instance. This asks the socket for all that is missing each time (loopback hands over 64 KiB and
    more per call), with the same result: the bytes read, fewer only when the peer closed the connection; an
    error or timeout raises as before. ``nr_bytes`` is what the peer's PDU header claims (pynetdicom does not
    bound it): the buffer starts at ``FIRST_READ`` at most and doubles only as bytes arrive, so a claim of 4 GiB
    costs what was sent, not 4 GiB."""
    buf = bytearray(min(nr_bytes, FIRST_READ))
    got = 0
    while got < nr_bytes:
        if got == len(buf):  # full, and more is due: twice the size, at most what is missing
            buf.extend(bytes(min(len(buf), nr_bytes - got)))
        with memoryview(buf) as view:
            n = self.socket.recv_into(view[got:])
        if not n:  # the connection was closed: what came so far
            break
        got += n
    del buf[got:]
    return buf


class ReactorClock:
    """``time`` as pynetdicom's association module sees it, with the association thread's idle poll slowed.

    Each association's thread checks for a decoded message every 1 ms (``time.sleep(0.001)`` in
    ``Association._run_reactor``, hard-coded): four open associations wake 4,000 times a second, and each wake-up
    takes the GIL from the threads reading and classifying. Here that sleep is ``REACTOR_IDLE_S``; every other
    sleep and clock of the module is ``time``'s own."""

    def __getattr__(self, name):
        return getattr(time, name)

    @staticmethod
    def sleep(seconds: float) -> None:
        time.sleep(REACTOR_IDLE_S if seconds == 0.001 else seconds)


def speed_up_pynetdicom() -> None:
    """Install ``read_whole`` and ``ReactorClock`` in pynetdicom (process-wide: the node's own sending associations
    use them too)."""
    from pynetdicom import association
    from pynetdicom.transport import AssociationSocket

    AssociationSocket.recv = read_whole
    association.time = ReactorClock()


def sop_classes(modalities) -> dict[str, str]:
    """The SOP classes accepted for a bundle whose profile names ``modalities``."""
    out = {**IMAGE_SOP_CLASSES, **{uid: name for uid, (_, name) in SLICE_SOP_CLASSES.items()}}
    for m in modalities or ():
        out.update(MODALITY_SOP_CLASSES.get(str(m).upper(), {}))
    return out


def tls_context(cfg: NodeConfig) -> ssl.SSLContext | None:
    """DICOM over TLS (IHE ATNA): TLS 1.2 or later; with --tls-ca the caller's certificate is required."""
    if not cfg.tls_cert:
        return None
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(cfg.tls_cert, cfg.tls_key)
    if cfg.tls_ca:
        ctx.load_verify_locations(cfg.tls_ca)
        ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


def server_class():
    """pynetdicom's threaded server, with the TLS handshake moved off the accepting thread.

    pynetdicom wraps each accepted socket and completes the handshake in ``get_request``, on the one thread that
    accepts connections: a caller that opens TCP and sends nothing stops everyone else, and a failed handshake
    is swallowed without a word. Here ``get_request`` only wraps the socket; the connection's own thread does
    the handshake, within ``TLS_HANDSHAKE_S``, and a failure is passed to ``on_tls_failure(host, reason)``.
    """
    from pynetdicom.transport import ThreadedAssociationServer

    class Server(ThreadedAssociationServer):
        on_tls_failure = staticmethod(lambda host, reason: None)

        def get_request(self):
            client, address = self.socket.accept()
            if self.ssl_context:
                client = self.ssl_context.wrap_socket(client, server_side=True, do_handshake_on_connect=False)
            return client, address

        def process_request_thread(self, request, client_address):
            if isinstance(request, ssl.SSLSocket):
                previous = request.gettimeout()
                try:
                    request.settimeout(TLS_HANDSHAKE_S)
                    request.do_handshake()
                    request.settimeout(previous)
                except (OSError, ValueError) as e:  # ssl.SSLError, a timeout, a reset
                    self.on_tls_failure(client_address[0], _tls_reason(e))
                    self.shutdown_request(request)
                    return
            super().process_request_thread(request, client_address)

    return Server


def _sop_name(uid: str) -> str:
    """A SOP class's name (pydicom's dictionary), else its UID."""
    from pydicom.uid import UID

    name = UID(uid).name
    return name if name and name != uid else uid


def _tls_reason(e: Exception) -> str:
    if isinstance(e, TimeoutError | socket.timeout):
        return f"no handshake within {TLS_HANDSHAKE_S:g} s"
    reason = getattr(e, "reason", None) or type(e).__name__
    hints = {"WRONG_VERSION_NUMBER": " (a caller speaking DICOM without TLS?)",
             "HTTP_REQUEST": " (an HTTP client?)",
             "PEER_DID_NOT_RETURN_A_CERTIFICATE": " (--tls-ca: the caller must present a certificate)"}
    return reason + hints.get(reason, "")


class StorageSCP:
    """The association side: accepts, checks and spools; ``Node`` owns the rest."""

    def __init__(self, cfg: NodeConfig, spool: Spool, modalities=(), log=print):
        self.cfg, self.spool, self.log = cfg, spool, log
        self.sop_classes = sop_classes(modalities)
        self.syntaxes = transfer_syntaxes()
        self.counts = {"stored": 0, "duplicates": 0, "refused_full": 0, "refused_size": 0, "unreadable": 0,
                       "write_failed": 0, "refused_busy": 0, "rejected_associations": 0, "aborted_associations": 0,
                       "tls_failures": 0, "echo": 0}
        self.accepting = True
        self.server = None
        self._stored_on: dict[int, int] = {}  # id(association) -> instances it stored (for the log)

    def build_ae(self):
        from pynetdicom import AE, _config

        _config.STORE_RECV_CHUNKED_DATASET = True  # the dataset goes to a temporary file, not memory
        _receive_into(self.spool.incoming)
        speed_up_pynetdicom()
        _config.LOG_HANDLER_LEVEL = "none"  # pynetdicom's own log would print patient attributes
        ae = AE(ae_title=self.cfg.ae_title)
        ae.require_called_aet = True  # checked in _on_requested first, with a log line; this is the backstop
        ae.maximum_associations = self.cfg.max_associations
        ae.add_supported_context(VERIFICATION)
        for uid in self.sop_classes:
            ae.add_supported_context(uid, self.syntaxes)
        ae.acse_timeout, ae.dimse_timeout, ae.network_timeout = 30, 60, 60
        # PDUs of up to 1 MiB (pynetdicom's default is 16 KiB): an 8 MB radiograph costs 30 % less CPU to receive,
        # and one PDU, read whole, stays small however large the instance.
        ae.maximum_pdu_size = MAX_PDU
        return ae

    def start(self):
        """Listen (non-blocking); returns the server, whose ``server_address`` has the port."""
        import threading

        from pynetdicom import evt

        handlers = [(evt.EVT_REQUESTED, self._on_requested), (evt.EVT_REJECTED, self._on_rejected),
                    (evt.EVT_ESTABLISHED, self._on_established),
                    (evt.EVT_CONN_CLOSE, self._on_closed), (evt.EVT_C_ECHO, self._on_echo),
                    (evt.EVT_C_STORE, self._on_store)]
        ae = self.build_ae()
        self.server = ae.make_server((self.cfg.host, self.cfg.port), ssl_context=tls_context(self.cfg),
                                     evt_handlers=handlers, server_class=server_class())
        ae._servers.append(self.server)  # as AE.start_server does: the server's shutdown() takes itself off the list
        self.server.on_tls_failure = self._on_tls_failure
        threading.Thread(target=self.server.serve_forever, name="medge-node-accept", daemon=True).start()
        return self.server

    # --- handlers (association threads) -----------------------------------------------------------------------
    def _allowed(self, ae_title: str, host: str) -> bool:
        if not self.cfg.allow:
            return True
        return any(p.ae_title == ae_title and (p.host is None or p.host == host) for p in self.cfg.allow)

    def _on_requested(self, event) -> None:
        no_delay(event.assoc)
        if hasattr(event.assoc.dul, "_run_loop_delay"):
            event.assoc.dul._run_loop_delay = DUL_IDLE_S
        rq = event.assoc.requestor
        calling, called = str(rq.primitive.calling_ae_title).strip(), str(rq.primitive.called_ae_title).strip()
        if not self.accepting:
            why, reason = "the node is stopping", REJECT_STOPPING
        elif called != self.cfg.ae_title:
            why, reason = f"called AE title {called!r} is not this node's ({self.cfg.ae_title!r})", REJECT_CALLED_AE
        elif not self._allowed(calling, rq.address):
            hosts = [p.host for p in self.cfg.allow if p.ae_title == calling]
            why = (f"not in --allow (the AE title is, from {', '.join(hosts)} only)" if hosts and None not in hosts
                   else "not in --allow")
            reason = REJECT_CALLING_AE
        else:
            return
        self.counts["rejected_associations"] += 1
        self.log(f"association from {calling}@{rq.address} rejected: {why}")
        event.assoc.acse.send_reject(*reason)
        event.assoc.kill()

    def _on_established(self, event) -> None:
        """A line naming what the caller proposed and this node does not take (none of its contexts: it can send
        nothing, and usually aborts next); taken contexts are not logged."""
        assoc = event.assoc
        refused = sorted({str(c.abstract_syntax) for c in assoc.rejected_contexts} - {
            str(c.abstract_syntax) for c in assoc.accepted_contexts})
        if refused:
            names = ", ".join(_sop_name(uid) for uid in refused[:6]) + (f" and {len(refused) - 6} more"
                                                                      if len(refused) > 6 else "")
            self.log(f"association from {str(assoc.requestor.ae_title).strip()}@{assoc.requestor.address}: not "
                     f"taken: {names} (this node takes radiographs and the SOP classes of the bundle's modalities, "
                     "in the transfer syntaxes it decodes)")

    def _on_rejected(self, event) -> None:
        """pynetdicom's own rejections (ours are logged in ``_on_requested``): too many associations at once."""
        rq = event.assoc.requestor
        self.counts["rejected_associations"] += 1
        busy = sum(a.is_acceptor for a in event.assoc.ae.active_associations) > self.cfg.max_associations
        self.log(f"association from {str(rq.ae_title).strip()}@{rq.address} rejected: "
                 + (f"--max-associations {self.cfg.max_associations} reached" if busy
                    else "refused by the association layer"))

    def _on_closed(self, event) -> None:
        """One line for an association that ended other than by release: aborted, or its connection lost."""
        assoc = event.assoc
        stored = self._stored_on.pop(id(assoc), 0)
        if assoc.is_released or assoc.is_rejected or not getattr(assoc.requestor, "primitive", None):
            return
        self.counts["aborted_associations"] += 1
        if assoc.is_aborted or assoc.acse.is_aborted("a-abort"):  # the A-ABORT may still wait in the queue
            how = "aborted"
        else:
            how = "lost (its connection closed or failed without release or abort)"
        self.log(f"association from {str(assoc.requestor.ae_title).strip()}@{assoc.requestor.address} {how}"
                 f"{'' if self.accepting else ' while stopping'}; {stored} instance(s) stored on it")

    def _on_tls_failure(self, host: str, reason: str) -> None:
        self.counts["tls_failures"] += 1
        self.log(f"TLS handshake from {host} failed: {reason}")

    def _on_echo(self, event) -> int:
        self.counts["echo"] += 1
        return SUCCESS

    def _on_store(self, event) -> int:
        t0 = time.monotonic()
        uid = str(event.request.AffectedSOPInstanceUID or "")
        calling = str(event.assoc.requestor.ae_title).strip()
        tag = uid_hash(uid)[:12]
        verdict = self.spool.reserve(uid, OTHER_COPY_WAIT_S)
        if verdict == "duplicate":
            self.counts["duplicates"] += 1
            self.log(f"{tag}: already received from {calling}: acknowledged, no second result")
            return SUCCESS
        if verdict in ("full", "busy"):
            self.counts[f"refused_{verdict}"] += 1
            self.log(f"{tag}: " + (f"queue full ({self.spool.pending()} waiting)" if verdict == "full" else
                                   f"another association's copy still undecided after {OTHER_COPY_WAIT_S:g} s")
                     + ": out of resources (0xA700)")
            return OUT_OF_RESOURCES
        try:
            status = self._spool(event, uid, calling, tag, t0)
        finally:
            self.spool.unreserve(uid)
        if status == SUCCESS:
            self._stored_on[id(event.assoc)] = self._stored_on.get(id(event.assoc), 0) + 1
        return status

    def _spool(self, event, uid: str, calling: str, tag: str, t0: float) -> int:
        path = event.dataset_path
        size = path.stat().st_size
        if size > self.cfg.max_instance_mb * 1e6:
            self.counts["refused_size"] += 1
            self.log(f"{tag}: {size / 1e6:.0f} MB is over --max-instance-mb {self.cfg.max_instance_mb:g}: 0xA700")
            return OUT_OF_RESOURCES
        why = check_header(path, uid)
        if why:
            self.counts["unreadable"] += 1
            self.log(f"{tag}: from {calling}: {why}: cannot understand (0xC210)")
            return CANNOT_UNDERSTAND
        try:
            self.spool.put(uid, path, calling)
        except OSError as e:
            self.counts["write_failed"] += 1
            self.log(f"{tag}: cannot be spooled ({e.strerror or e}): out of resources (0xA700); a resend will work")
            return OUT_OF_RESOURCES
        self.counts["stored"] += 1
        self.log(f"{tag}: stored from {calling} ({size / 1e6:.1f} MB, {1000 * (time.monotonic() - t0):.0f} ms)")
        return SUCCESS


def check_header(path, uid: str) -> str | None:
    """Why the received file cannot become a result (unreadable or damaged header, missing or mismatched UIDs),
    or None."""
    import pydicom

    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        damaged = past_the_end(path, ds)
    except Exception as e:  # pydicom raises many kinds on damaged data
        return f"the dataset cannot be read ({type(e).__name__})"
    if damaged:
        return damaged
    missing = [k for k in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID") if not ds.get(k)]
    if missing:
        return f"the dataset lacks {', '.join(missing)}"
    if str(ds.SOPInstanceUID) != uid:
        return "the dataset's SOP Instance UID is not the one of the C-STORE request"
    return None


DEFLATED = "1.2.840.10008.1.2.1.99"


def past_the_end(path, ds) -> str | None:
    """The first top-level element whose stated length runs past the end of the file, said so; else None.

    pydicom reads such a value to the end of the file without complaint, and what should follow it (the UIDs)
    is then missing: without this the damage would be reported as a missing UID. Lengths are walked over the
    file's bytes after the file meta (values over 4 KiB are skipped, not read); a deflated dataset is not.
    """
    import os

    from pydicom.filereader import data_element_generator

    meta = getattr(ds, "file_meta", None)
    if (meta is None or "FileMetaInformationGroupLength" not in meta or ds.original_encoding[0] is None
            or str(meta.get("TransferSyntaxUID", "")) == DEFLATED):
        return None  # where the dataset starts, or how it is encoded, is not known for sure
    start = (132 if ds.preamble is not None else 0) + 12 + int(meta.FileMetaInformationGroupLength)
    size = os.path.getsize(path)
    previous = None
    with open(path, "rb") as fp:
        fp.seek(start)
        for raw in data_element_generator(fp, *ds.original_encoding, defer_size=4096):
            length = getattr(raw, "length", 0xFFFFFFFF)  # a sequence of undefined length comes parsed, checked
            if length != 0xFFFFFFFF and raw.value_tell + length > size:
                past = f"states a length of {length} bytes, past the end of the file ({size} bytes)"
                if previous is not None and not _an_element(raw):  # read from the middle of another value
                    return (f"the dataset is damaged: the length of element {previous} is probably wrong, for what "
                            f"follows it is no DICOM element ({raw.tag} {past})")
                return f"the dataset is damaged: element {raw.tag} {past}"
            previous = raw.tag
    return None


def _an_element(raw) -> bool:
    """Whether a raw element read from a file looks like one: a private tag (odd group), or a tag of the dictionary,
    with a VR of DICOM's (explicit VR); a wrong length before it has the reader take bytes of a value for a header."""
    from pydicom.datadict import dictionary_has_tag
    from pydicom.valuerep import VR

    if raw.VR is not None and raw.VR not in VR.__members__:
        return False
    return raw.tag.group % 2 == 1 or dictionary_has_tag(raw.tag)
