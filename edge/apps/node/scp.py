"""The node's Storage SCP (pynetdicom): who may connect, what it accepts, and the C-STORE handler.

- Presentation contexts: the single-frame grayscale image SOP classes a classifier takes
  (``IMAGE_SOP_CLASSES``, plus those of the modalities the bundle's data profile names),
  and CT and MR slices (``SLICE_SOP_CLASSES``: taken, then recorded as skipped unless the
  bundle is for that modality),
  each with every transfer syntax ``edge.inputs.dicom`` decodes here; anything else is rejected
  at negotiation, and C-ECHO is answered.
- ``--allow AE[@HOST]``: another caller gets A-ASSOCIATE-RJ, rejected-permanent, "calling
  AE title not recognised" (PS3.8 9.3.4).
- A received dataset is written to a temporary file by pynetdicom, not held in memory
  (``STORE_RECV_CHUNKED_DATASET``), so a 60 MB instance costs disk, not RAM; it is
  refused above ``--max-instance-mb``.
- C-STORE answers, in this order: 0x0000 for a SOP Instance UID already received (no
  second result); 0xA700 (out of resources) when the queue is full, the instance is too
  large or it cannot be written; 0xC210 (cannot understand) when its header cannot be
  read or lacks the UIDs a result needs; else the instance is spooled durably
  (``spool.Spool.put``) and only then 0x0000.
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
OUT_OF_RESOURCES, CANNOT_UNDERSTAND, SUCCESS = 0xA700, 0xC210, 0x0000
MAX_PDU = 1 << 20


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


class StorageSCP:
    """The association side: accepts, checks and spools; ``Node`` owns the rest."""

    def __init__(self, cfg: NodeConfig, spool: Spool, modalities=(), log=print):
        self.cfg, self.spool, self.log = cfg, spool, log
        self.sop_classes = sop_classes(modalities)
        self.syntaxes = transfer_syntaxes()
        self.counts = {"stored": 0, "duplicates": 0, "refused_full": 0, "refused_size": 0, "unreadable": 0,
                       "write_failed": 0, "rejected_associations": 0, "echo": 0}
        self.accepting = True
        self.server = None

    def build_ae(self):
        from pynetdicom import AE, _config

        _config.STORE_RECV_CHUNKED_DATASET = True  # the dataset goes to a temporary file, not memory
        _receive_into(self.spool.incoming)
        _config.LOG_HANDLER_LEVEL = "none"  # pynetdicom's own log would print patient attributes
        ae = AE(ae_title=self.cfg.ae_title)
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
        from pynetdicom import evt

        handlers = [(evt.EVT_REQUESTED, self._on_requested), (evt.EVT_C_ECHO, self._on_echo),
                    (evt.EVT_C_STORE, self._on_store)]
        self.server = self.build_ae().start_server((self.cfg.host, self.cfg.port), block=False,
                                                   ssl_context=tls_context(self.cfg), evt_handlers=handlers)
        return self.server

    # --- handlers (association threads) -----------------------------------------------------------------------
    def _allowed(self, ae_title: str, host: str) -> bool:
        if not self.cfg.allow:
            return True
        return any(p.ae_title == ae_title and (p.host is None or p.host == host) for p in self.cfg.allow)

    def _on_requested(self, event) -> None:
        no_delay(event.assoc)
        rq = event.assoc.requestor
        calling = str(rq.primitive.calling_ae_title).strip()
        if not self.accepting or not self._allowed(calling, rq.address):
            self.counts["rejected_associations"] += 1
            self.log(f"association from {calling}@{rq.address} rejected: "
                     f"{'stopping' if not self.accepting else 'not in --allow'}")
            if self.accepting:
                event.assoc.acse.send_reject(*REJECT_CALLING_AE)
            else:  # shutting down: transient, local limit exceeded
                event.assoc.acse.send_reject(0x02, 0x03, 0x02)
            event.assoc.kill()

    def _on_echo(self, event) -> int:
        self.counts["echo"] += 1
        return SUCCESS

    def _on_store(self, event) -> int:
        t0 = time.monotonic()
        uid = str(event.request.AffectedSOPInstanceUID or "")
        calling = str(event.assoc.requestor.ae_title).strip()
        tag = uid_hash(uid)[:12]
        verdict = self.spool.reserve(uid)
        if verdict == "duplicate":
            self.counts["duplicates"] += 1
            self.log(f"{tag}: already received from {calling}: acknowledged, no second result")
            return SUCCESS
        if verdict == "full":
            self.counts["refused_full"] += 1
            self.log(f"{tag}: queue full ({self.spool.pending()} waiting): out of resources (0xA700)")
            return OUT_OF_RESOURCES
        try:
            return self._spool(event, uid, calling, tag, t0)
        finally:
            self.spool.unreserve(uid)

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
    """Why the received file cannot become a result (unreadable header, missing or mismatched UIDs), or None."""
    import pydicom

    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
    except Exception as e:  # pydicom raises many kinds on damaged data
        return f"the dataset cannot be read ({type(e).__name__})"
    missing = [k for k in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID") if not ds.get(k)]
    if missing:
        return f"the dataset lacks {', '.join(missing)}"
    if str(ds.SOPInstanceUID) != uid:
        return "the dataset's SOP Instance UID is not the one of the C-STORE request"
    return None
