"""The node's Storage SCP in this process, where a test can hold an association at a chosen point: two copies of
one instance racing, the called AE title, and the log lines of associations that end badly."""
import socket
import ssl
import threading
import time

import pytest

pytest.importorskip("pynetdicom", reason="the node extra is not installed")

from medge.edge.apps.node import scp as scp_module  # noqa: E402
from medge.edge.apps.node.config import NodeConfig  # noqa: E402
from medge.edge.apps.node.scp import CANNOT_UNDERSTAND, OUT_OF_RESOURCES, SUCCESS, StorageSCP, check_header  # noqa: E402
from medge.edge.apps.node.spool import Spool  # noqa: E402
from tests.edge.apps.node.nodes import wait_until, write_radiograph  # noqa: E402


@pytest.fixture
def make_scp(tmp_path, monkeypatch):
    """A StorageSCP on a free port with its spool and log; pynetdicom's process-wide settings restored after."""
    from pynetdicom import _config, dimse_messages

    for name in ("STORE_RECV_CHUNKED_DATASET", "LOG_HANDLER_LEVEL"):
        monkeypatch.setattr(_config, name, getattr(_config, name))
    monkeypatch.setattr(dimse_messages, "NamedTemporaryFile", dimse_messages.NamedTemporaryFile)
    started = []

    def make(**settings):
        log = []
        scp = StorageSCP(NodeConfig(port=0, **settings), Spool(tmp_path / "out", 8), log=log.append)
        scp.start()
        started.append(scp)
        return scp, scp.server.server_address[1], log

    yield make
    for scp in started:
        scp.server.shutdown()
        scp.server.server_close()


def associate(port: int, calling: str = "SCU", called: str = "MEDGE", contexts=("1.2.840.10008.5.1.4.1.1.1.1",)):
    from pynetdicom import AE

    ae = AE(ae_title=calling)
    for uid in contexts:  # the files' own transfer syntax only: the SCP cannot pick another for them
        ae.add_requested_context(uid, "1.2.840.10008.1.2.1")
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
    return ae.associate("127.0.0.1", port, ae_title=called)


def store(port: int, path, out: dict, key: str) -> None:
    assoc = associate(port)
    try:
        out[key] = int(assoc.send_c_store(path).Status)
    finally:
        assoc.release()


# --- two copies of one instance --------------------------------------------------------------------------------------
@pytest.mark.parametrize("failure", ["unreadable", "too large", "write error", "none"])
def test_a_copy_is_acknowledged_only_once_some_complete_copy_is_spooled(tmp_path, make_scp, monkeypatch, failure):
    """Association A is writing its copy of X when association B sends a valid copy of X. If A's copy then
    fails (cannot be understood, over the size limit, a write error), B's copy is the one spooled, and only
    then does B hear success; if A's copy is spooled, B's is a duplicate. Never: B told 'stored', nothing kept."""
    import pydicom

    good = write_radiograph(tmp_path / "good.dcm", size=64)
    uid = str(pydicom.dcmread(good).SOPInstanceUID)
    first = tmp_path / "first.dcm"
    ds = pydicom.dcmread(good)
    if failure == "unreadable":
        del ds.StudyInstanceUID
    elif failure == "too large":
        ds.add_new(0x00091010, "OB", b"\0" * 300_000)  # a private element: the copy is over the limit below
    ds.save_as(first, enforce_file_format=True)
    scp, port, log = make_scp(max_instance_mb=0.2)
    real_spool, real_put, calls = scp._spool, scp.spool.put, []

    def first_waits_for_the_second(event, *args):
        if not calls:  # A: hold its copy undecided until B has asked for the same UID
            calls.append("A")
            assert wait_until(lambda: scp.spool.waiting > 0 or "B" in statuses, 20)
        return real_spool(event, *args)

    def put(sop_uid, received, calling_ae):
        if failure == "write error" and "A-put" not in calls:
            calls.append("A-put")
            raise OSError(28, "No space left on device")
        return real_put(sop_uid, received, calling_ae)

    monkeypatch.setattr(scp, "_spool", first_waits_for_the_second)
    monkeypatch.setattr(scp.spool, "put", put)
    statuses: dict[str, int] = {}
    a = threading.Thread(target=store, args=(port, first, statuses, "A"))
    a.start()
    assert wait_until(lambda: calls)
    store(port, good, statuses, "B")
    a.join(30)
    expected_a = {"unreadable": CANNOT_UNDERSTAND, "too large": OUT_OF_RESOURCES, "write error": OUT_OF_RESOURCES,
                  "none": SUCCESS}[failure]
    assert statuses == {"A": expected_a, "B": SUCCESS}
    (item,) = scp.spool.take(8, 1.0)  # exactly one copy spooled, and it is a complete one
    assert item.sop_uid == uid and pydicom.dcmread(item.path).SOPInstanceUID == uid
    kept = pydicom.dcmread(item.path)
    assert "StudyInstanceUID" in kept and 0x00091010 not in kept
    assert scp.counts["stored"] == 1 and scp.counts["duplicates"] == (failure == "none")


def test_a_copy_still_undecided_after_the_wait_is_refused_not_acknowledged(tmp_path, monkeypatch):
    spool = Spool(tmp_path / "out", 8)
    assert spool.reserve("1.2.3") == "ok"  # another association is writing it and does not finish
    assert spool.reserve("1.2.3", wait_s=0.05) == "busy"
    spool.unreserve("1.2.3")  # that copy failed: the next one may take the UID
    assert spool.reserve("1.2.3", wait_s=0.05) == "ok"


# --- who may associate ----------------------------------------------------------------------------------------------
def test_the_called_ae_title_must_be_the_nodes(make_scp):
    scp, port, log = make_scp(ae_title="MEDGE")
    wrong = associate(port, called="WRONGCALLED")
    assert wrong.is_rejected
    rj = wrong.acceptor.primitive
    assert (rj.result, rj.result_source, rj.diagnostic) == (0x01, 0x01, 0x07)  # permanent, called AE not recognised
    assert any("rejected: called AE title 'WRONGCALLED' is not this node's ('MEDGE')" in m for m in log)
    right = associate(port, called="MEDGE")
    assert right.is_established
    (accepted,) = [a for a in scp.server.active_associations if a.is_established]  # the rejected one may linger
    assert accepted.dul._run_loop_delay == scp_module.DUL_IDLE_S  # pynetdicom still has the knob, and it is set
    right.release()
    assert scp.counts["rejected_associations"] == 1


# --- what ends badly is said -----------------------------------------------------------------------------------------
def test_an_aborted_association_is_a_log_line_naming_the_caller(tmp_path, make_scp):
    scp, port, log = make_scp()
    assoc = associate(port, calling="MODALITY7")
    assert assoc.is_established
    assoc.abort()
    assert wait_until(lambda: any("aborted" in m for m in log))
    (line,) = [m for m in log if "aborted" in m]
    assert line.startswith("association from MODALITY7@127.0.0.1 aborted") and "0 instance(s) stored" in line
    released = associate(port, calling="MODALITY8")
    released.release()
    time.sleep(0.5)  # a released association must add no such line
    assert not any("MODALITY8" in m for m in log) and scp.counts["aborted_associations"] == 1


def test_a_damaged_element_length_is_named_as_damage(tmp_path):
    good = write_radiograph(tmp_path / "good.dcm", size=8)
    data = good.read_bytes()
    at = data.index(b"\x10\x00\x10\x00PN")  # Patient's Name, before the UIDs in the file
    damaged = tmp_path / "damaged.dcm"
    damaged.write_bytes(data[:at + 6] + b"\xf0\xff" + data[at + 8:])  # its length now runs past the end
    why = check_header(damaged, "1.2.3")
    assert why.startswith("the dataset is damaged: element (0010,0010) states a length of 65520 bytes")
    for length in (b"\x03\x00", b"\x28\x00"):  # a wrong length inside the file: the reader lands inside a value
        damaged.write_bytes(data[:at + 6] + length + data[at + 8:])
        assert check_header(damaged, "1.2.3").startswith(
            "the dataset is damaged: the length of element (0010,0010) is probably wrong, for what follows it is no "
            "DICOM element (")  # not the garbage "element" past it alone, as before
    assert check_header(good, "1.2.3") == "the dataset's SOP Instance UID is not the one of the C-STORE request"


@pytest.mark.skipif(__import__("shutil").which("openssl") is None, reason="the openssl command is not installed")
def test_a_silent_or_failed_tls_caller_is_logged_and_holds_up_no_one(tmp_path, make_scp, monkeypatch):
    from tests.edge.apps.node.nodes import certificates

    c = certificates(tmp_path / "pki")
    monkeypatch.setattr(scp_module, "TLS_HANDSHAKE_S", 1.0)
    scp, port, log = make_scp(tls_cert=str(c["server.pem"]), tls_key=str(c["server.key"]))
    silent = socket.create_connection(("127.0.0.1", port))  # connects, never says a word
    plain = socket.create_connection(("127.0.0.1", port))
    plain.sendall(b"\x01\x00" + b"\0" * 64)  # an A-ASSOCIATE-RQ's first bytes, without TLS
    ctx = ssl.create_default_context(cafile=str(c["ca.pem"]))
    ctx.check_hostname = False
    from pynetdicom import AE

    ae = AE(ae_title="SCU")
    ae.add_requested_context("1.2.840.10008.1.1")
    ok = ae.associate("127.0.0.1", port, ae_title="MEDGE", tls_args=(ctx, None))
    assert ok.is_established  # while the silent caller still holds its connection open
    assert int(ok.send_c_echo().Status) == SUCCESS
    ok.release()
    assert wait_until(lambda: sum("TLS handshake from 127.0.0.1 failed" in m for m in log) == 2, 10), log
    assert any("no handshake within 1 s" in m for m in log)
    assert any("(a caller speaking DICOM without TLS?)" in m for m in log), log
    silent.close()
    plain.close()
    assert scp.counts["tls_failures"] == 2


def test_what_a_caller_proposes_and_the_node_does_not_take_is_named(make_scp):
    scp, port, log = make_scp()
    us = "1.2.840.10008.5.1.4.1.1.6.1"  # Ultrasound Image Storage: not a radiograph
    assoc = associate(port, calling="ULTRASOUND", contexts=(us, "1.2.840.10008.5.1.4.1.1.1"))
    assert assoc.is_established
    assoc.release()
    assert wait_until(lambda: any("not taken" in m for m in log))
    (line,) = [m for m in log if "not taken" in m]
    assert line.startswith("association from ULTRASOUND@127.0.0.1: not taken: Ultrasound Image Storage (")
    assert "Computed Radiography" not in line  # what it takes is not listed


def test_a_known_caller_from_another_host_is_told_apart(make_scp):
    from medge.edge.apps.node.config import Peer

    scp, port, log = make_scp(allow=(Peer("PACSA", "10.0.0.5"),))
    assert associate(port, calling="PACSA").is_rejected
    assert any("rejected: not in --allow (the AE title is, from 10.0.0.5 only)" in m for m in log), log


class _Sock:
    """An AssociationSocket's part that ``read_whole`` uses: ``socket``."""

    def __init__(self, sock):
        self.socket = sock


def test_read_whole_reads_what_was_asked_however_the_bytes_arrive():
    """What pynetdicom's ``recv`` returns: exactly the bytes asked for, whatever pieces the peer sends them in; fewer
    only when the peer closes; a timeout raises."""
    import random

    rng = random.Random(7)
    payload = rng.randbytes(3 * 2**20 + 123)
    a, b = socket.socketpair()

    def send():
        i = 0
        while i < len(payload):
            n = rng.choice((1, 7, 4096, 65536, 300_000))
            a.sendall(payload[i:i + n])
            i += n
        a.close()

    t = threading.Thread(target=send)
    t.start()
    first, rest = scp_module.read_whole(_Sock(b), 2**20), scp_module.read_whole(_Sock(b), 4 * 2**20)
    t.join()
    b.close()
    assert isinstance(first, bytearray) and bytes(first) == payload[:2**20]
    assert isinstance(rest, bytearray) and bytes(rest) == payload[2**20:]  # asked for more, the peer closed: what came
    c, d = socket.socketpair()
    d.settimeout(0.05)
    with pytest.raises(TimeoutError):
        scp_module.read_whole(_Sock(d), 10)
    c.close(), d.close()


def test_read_whole_holds_what_arrived_not_what_a_pdu_header_claims():
    """A peer claims a 1 GiB PDU and sends 100 bytes: the read returns them, having held about one PDU of this node's
    size (pynetdicom reads whatever length a header states; a buffer of the claim would be 1 GiB per connection)."""
    import tracemalloc

    a, b = socket.socketpair()
    a.sendall(bytes(range(100)))
    a.close()
    tracemalloc.start()
    try:
        got = scp_module.read_whole(_Sock(b), 1 << 30)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
        b.close()
    assert bytes(got) == bytes(range(100))
    assert peak < 2 * scp_module.FIRST_READ


def test_the_reactor_clock_slows_only_the_association_threads_idle_poll(monkeypatch):
    slept = []
    monkeypatch.setattr(scp_module.time, "sleep", slept.append)
    clock = scp_module.ReactorClock()
    clock.sleep(0.001)  # Association._run_reactor's idle poll
    clock.sleep(0.0001)  # the others are left as they are
    clock.sleep(0.1)
    assert slept == [scp_module.REACTOR_IDLE_S, 0.0001, 0.1]
    assert clock.monotonic is scp_module.time.monotonic and clock.time is scp_module.time.time
