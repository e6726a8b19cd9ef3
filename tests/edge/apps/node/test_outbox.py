"""The node's outboxes without a PACS: STOW-RS against a local HTTP server (what it sends, how each answer is read,
credentials, a private CA, retries and restarts), its settings, and C-STORE and STOW-RS side by side.

The Orthanc round trips (C-STORE and STOW-RS, outages, restarts) are in test_node_pacs.py.
"""
import base64
import http.server
import json
import shutil
import ssl
import threading
from pathlib import Path

import pytest

pydicom = pytest.importorskip("pydicom", reason="the node extra (pydicom) is not installed")

from medge.benchmarks.pacs import free_port  # noqa: E402
from medge.edge.apps.node.config import STOW_PASSWORD_ENV, NodeConfig, Peer, Stow  # noqa: E402
from medge.edge.apps.node.outbox import (  # noqa: E402
    REFUSED,
    RETRY,
    STORED,
    Forwarder,
    Outboxes,
    StowSender,
    stow_verdict,
)
from medge.edge.errors import UsageError  # noqa: E402
from tests.edge.apps.node.nodes import certificates, wait_until  # noqa: E402

SR_CLASS = "1.2.840.10008.5.1.4.1.1.88.34"
PASSWORD, TOKEN = "pa55-w0rd:with colon", "t0ken.abc"  # never to appear in a log


def part10(folder: Path, uid: str) -> tuple[str, bytes]:
    """A small Part 10 SR-class file with this SOP Instance UID (what the outbox holds): (file name, bytes)."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian

    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID, ds.file_meta.MediaStorageSOPInstanceUID = SR_CLASS, uid
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID, ds.SOPInstanceUID = SR_CLASS, uid
    ds.PatientID, ds.PatientName = "PAT-SECRET-1", "Doe^Jane"
    ds.ContentDescription = "R" * 64
    path = folder / f"{uid}.dcm"
    ds.save_as(path, enforce_file_format=True)
    return f"h{uid.replace('.', '')}.sr.dcm", path.read_bytes()


def dataset(stored=(), failed=(), warning=None) -> dict:
    """A STOW-RS response dataset in DICOM JSON: ``stored`` UIDs, ``failed`` (UID, reason) pairs."""
    def item(uid, extra=None):
        return {"00081150": {"vr": "UI", "Value": [SR_CLASS]}, "00081155": {"vr": "UI", "Value": [uid]}, **(extra or {})}

    warn = {"00081196": {"vr": "US", "Value": [warning]}} if warning is not None else None
    return {"00081199": {"vr": "SQ", "Value": [item(u, warn) for u in stored]},
            "00081198": {"vr": "SQ", "Value": [item(u, {"00081197": {"vr": "US", "Value": [r]}}) for u, r in failed]}}


def parse_multipart(content_type: str, body: bytes) -> list[bytes]:
    """The parts of a multipart/related body, strictly as PS3.18 frames them (one Content-Type header per part)."""
    params = dict(p.strip().split("=", 1) for p in content_type.split(";")[1:])
    assert content_type.split(";")[0].strip() == "multipart/related" and params["type"] == '"application/dicom"'
    chunks = body.split(b"--" + params["boundary"].encode())
    assert chunks[0] == b"" and chunks[-1] == b"--\r\n", (chunks[0][:40], chunks[-1][:40])
    parts = []
    for chunk in chunks[1:-1]:
        head, _, data = chunk.partition(b"\r\n\r\n")
        assert head == b"\r\nContent-Type: application/dicom" and data.endswith(b"\r\n"), head
        parts.append(data[:-2])
    return parts


class FakeStow:
    """A DICOMweb server on loopback (optionally https): records each POST and answers with ``answer(uid)``,
    a (status, JSON-able body or bytes) pair; by default every instance is stored."""

    def __init__(self, port: int = 0, tls: ssl.SSLContext | None = None):
        self.requests: list[dict] = []
        self.answer = lambda uid: (200, dataset(stored=[uid]))
        fake = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as real servers do

            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                parts = parse_multipart(self.headers["Content-Type"], body)
                uids = [str(pydicom.dcmread(pydicom.filebase.DicomBytesIO(p)).SOPInstanceUID) for p in parts]
                fake.requests.append({"path": self.path, "headers": dict(self.headers), "parts": parts, "uids": uids})
                status, answer = fake.answer(uids[0])
                data = answer if isinstance(answer, bytes) else json.dumps(answer).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/dicom+json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler)
        if tls is not None:
            self.server.socket = tls.wrap_socket(self.server.socket, server_side=True)
        scheme = "https" if tls is not None else "http"
        self.url = f"{scheme}://127.0.0.1:{self.server.server_address[1]}/dicom-web/"
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)

    def __enter__(self) -> "FakeStow":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()

    def stored_uids(self) -> list[str]:
        return [u for r in self.requests for u in r["uids"]]


def stow_outbox(tmp_path: Path, stow: Stow, log: list, retry_max_s: float = 60.0) -> Forwarder:
    return Forwarder(tmp_path / "out" / "outbox-stow", StowSender(stow), retry_max_s, log.append)


def queue(forwarder, tmp_path: Path, uids) -> dict[str, str]:
    """Put a file per UID into the outbox, in order; file name -> UID."""
    names = {}
    for uid in uids:
        name, data = part10(tmp_path, uid)
        forwarder.put(name, data)
        names[name] = uid
    return names


def outbox_uids(forwarder: Forwarder, names: dict[str, str], folder: str = "") -> list[str]:
    where = forwarder.dir / folder if folder else forwarder.dir
    return sorted(names[p.name] for p in where.glob("*.dcm"))


# --- what one answer says of the instance it carried --------------------------------------------------------------
U = "1.2.3.4"
VERDICTS = [  # (HTTP status, body, verdict, words of the log line)
    (200, dataset(stored=[U]), STORED, "HTTP 200"),
    (202, dataset(stored=[U], warning=0xB000), STORED, "warning 0xB000"),
    (200, [dataset(stored=[U])], STORED, "HTTP 200"),  # a dataset wrapped in a list
    (400, dataset(stored=[U]), STORED, "HTTP 400"),  # Orthanc: 400 for a bad part, the good ones still listed stored
    (200, dataset(stored=["1.2.3.5"]), RETRY, "does not list it"),
    (200, b"", RETRY, "does not list it"),
    (202, dataset(failed=[(U, 0xA700)]), RETRY, "0xA700"),
    (409, dataset(failed=[(U, 0x0110)]), REFUSED, "0x0110"),
    (409, dataset(failed=[(U, 0xC000)]), REFUSED, "0xC000"),
    (409, b"", REFUSED, "none stored"),
    (400, b"<html>bad request</html>", REFUSED, "bad request"),
    (413, b"", REFUSED, "too large"),
    (401, {"HttpError": "Unauthorized"}, RETRY, "--stow-user"),
    (403, b"", RETRY, "permissions"),
    (404, b"", RETRY, "--forward-stow URL"),
    (415, b"", RETRY, "multipart/related"),
    (301, b"", RETRY, "redirect"),
    (429, b"", RETRY, "HTTP 429"),
    (503, b"", RETRY, "HTTP 503"),
]


@pytest.mark.parametrize("status,body,verdict,words", VERDICTS, ids=[f"{v[0]}-{v[2]}-{i}" for i, v in enumerate(VERDICTS)])
def test_stow_verdict(status, body, verdict, words):
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    got, why = stow_verdict(status, raw, U)
    assert (got, words in why) == (verdict, True), why


# --- what the node sends --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("auth", ["password-file", "password-env", "token-file", "none"])
def test_stow_posts_each_object_as_multipart_dicom_with_its_credentials(tmp_path, monkeypatch, auth):
    secret = tmp_path / "secret"
    secret.write_text((TOKEN if auth == "token-file" else PASSWORD) + "\n")  # as `echo` writes it
    monkeypatch.setenv(STOW_PASSWORD_ENV, PASSWORD if auth == "password-env" else "")
    options = {"password-file": dict(user="medge", password_file=str(secret)), "password-env": dict(user="medge"),
               "token-file": dict(token_file=str(secret)), "none": {}}[auth]
    log = []
    with FakeStow() as server:
        forwarder = stow_outbox(tmp_path, Stow(server.url, **options), log)
        names = queue(forwarder, tmp_path, ["1.2.3.1", "1.2.3.2"])
        assert forwarder.send_round() is True
    expected = {"password-file": "Basic " + base64.b64encode(f"medge:{PASSWORD}".encode()).decode(),
                "token-file": f"Bearer {TOKEN}", "none": None}
    expected["password-env"] = expected["password-file"]
    assert [r["uids"] for r in server.requests] == [["1.2.3.1"], ["1.2.3.2"]]  # one object per request, oldest first
    for request, name in zip(server.requests, names, strict=True):
        assert request["path"] == "/dicom-web/studies"
        assert request["parts"] == [(tmp_path / f"{names[name]}.dcm").read_bytes()]  # byte for byte
        assert request["headers"]["Accept"] == "application/dicom+json"
        assert request["headers"].get("Authorization") == expected[auth]
    assert forwarder.waiting() == [] and forwarder.sent == 2 and forwarder.refused == 0
    assert sorted(m.split()[1] for m in log if m.startswith("forwarded ")) == sorted(names)
    text = "\n".join(log)
    assert PASSWORD not in text and TOKEN not in text and "PAT-SECRET-1" not in text and "Doe" not in text


def test_stow_answers_decide_per_object_and_a_transient_one_stops_the_round(tmp_path):
    """Refused objects go to failed/ without holding back the next; a retryable answer keeps it and what follows."""
    answers = {"1.2.3.1": (409, dataset(failed=[("1.2.3.1", 0xC000)])), "1.2.3.2": (200, dataset(stored=["1.2.3.2"])),
               "1.2.3.3": (413, b""), "1.2.3.4": (202, dataset(failed=[("1.2.3.4", 0xA700)]))}
    log = []
    with FakeStow() as server:
        server.answer = lambda uid: answers.get(uid, (200, dataset(stored=[uid])))
        forwarder = stow_outbox(tmp_path, Stow(server.url), log)
        names = queue(forwarder, tmp_path, ["1.2.3.1", "1.2.3.2", "1.2.3.3", "1.2.3.4", "1.2.3.5"])
        assert forwarder.send_round() is False
        assert server.stored_uids() == ["1.2.3.1", "1.2.3.2", "1.2.3.3", "1.2.3.4"]  # the round stopped at .4
        assert outbox_uids(forwarder, names, "failed") == ["1.2.3.1", "1.2.3.3"]
        assert outbox_uids(forwarder, names) == ["1.2.3.4", "1.2.3.5"]
        assert (forwarder.sent, forwarder.refused, forwarder.failures) == (1, 2, 1)
        assert "0xA700" in forwarder.last_error and any("kept in outbox-stow/failed/" in m for m in log)

        answers.clear()  # the server has room again
        assert forwarder.send_round() is True
    assert server.stored_uids()[4:] == ["1.2.3.4", "1.2.3.5"]  # each tried again once, nothing sent twice after success
    assert forwarder.waiting() == [] and forwarder.failures == 0 and forwarder.sent == 3


def test_stow_keeps_results_through_a_login_failure_and_reads_the_mended_token(tmp_path):
    """401 is the node's configuration, the same for every object: nothing moves to failed/, and a token file fixed
    while the node runs is used at the next try."""
    token = tmp_path / "token"
    token.write_text("expired\n")
    log = []
    with FakeStow() as server:
        good = f"Bearer {TOKEN}"
        server.answer = lambda uid: (200, dataset(stored=[uid])) if server.requests[-1]["headers"].get(
            "Authorization") == good else (401, b"")
        forwarder = stow_outbox(tmp_path, Stow(server.url, token_file=str(token)), log)
        names = queue(forwarder, tmp_path, ["1.2.3.1", "1.2.3.2"])
        assert forwarder.send_round() is False and forwarder.send_round() is False
        assert outbox_uids(forwarder, names) == ["1.2.3.1", "1.2.3.2"] and forwarder.refused == 0
        assert server.stored_uids() == ["1.2.3.1", "1.2.3.1"]  # the round stops at the first: the others would fail alike
        assert "HTTP 401" in forwarder.last_error and "--stow-token-file" in forwarder.last_error
        token.write_text(TOKEN + "\n")
        assert forwarder.send_round() is True
    assert server.stored_uids()[2:] == ["1.2.3.1", "1.2.3.2"] and forwarder.sent == 2
    assert not any(TOKEN in m or "expired" in m for m in log)


def test_stow_backs_off_while_the_server_is_down_and_a_restarted_node_delivers_once(tmp_path):
    port = free_port()
    log = []
    stow = Stow(f"http://127.0.0.1:{port}/dicom-web", timeout_s=5)
    forwarder = stow_outbox(tmp_path, stow, log, retry_max_s=3)
    names = queue(forwarder, tmp_path, ["1.2.3.1", "1.2.3.2", "1.2.3.3"])
    delays = []
    for _ in range(4):
        assert forwarder.send_round() is False
        delays.append(forwarder.delay_s())
    assert delays == [1, 2, 3, 3]  # 1, 2, 4 ... at most retry_max_s
    assert "ConnectionRefusedError" in forwarder.last_error
    assert "3 result object(s) waiting in outbox-stow/, retrying in 3 s" in log[-1]
    assert outbox_uids(forwarder, names) == ["1.2.3.1", "1.2.3.2", "1.2.3.3"]

    # The node restarts (a new forwarder on the same folder) and the server is up on its port: each once.
    with FakeStow(port) as server:
        restarted = stow_outbox(tmp_path, stow, log)
        assert restarted.send_round() is True
    assert server.stored_uids() == ["1.2.3.1", "1.2.3.2", "1.2.3.3"] and restarted.waiting() == []


def test_stow_forwarder_thread_sends_what_is_put_while_it_runs(tmp_path):
    log = []
    stop = threading.Event()
    with FakeStow() as server:
        forwarder = stow_outbox(tmp_path, Stow(server.url), log)
        thread = threading.Thread(target=forwarder.run, args=(stop, 30.0), daemon=True)  # polls only every 30 s
        thread.start()
        try:
            queue(forwarder, tmp_path, ["1.2.3.1"])
            assert wait_until(lambda: server.stored_uids() == ["1.2.3.1"] and not forwarder.waiting())  # woken by put
        finally:
            stop.set()
            thread.join(10)
    assert not thread.is_alive()


@pytest.mark.skipif(shutil.which("openssl") is None, reason="the openssl command is not installed")
def test_stow_over_https_trusts_the_private_ca_it_is_given(tmp_path):
    pki = certificates(tmp_path / "pki")
    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    tls.load_cert_chain(pki["server.pem"], pki["server.key"])
    log = []
    with FakeStow(tls=tls) as server:
        untrusted = stow_outbox(tmp_path, Stow(server.url), log)  # the system's CAs do not know the test CA
        names = queue(untrusted, tmp_path, ["1.2.3.1"])
        assert untrusted.send_round() is False and "SSLCertVerificationError" in untrusted.last_error
        assert server.requests == [] and outbox_uids(untrusted, names) == ["1.2.3.1"]
        trusted = stow_outbox(tmp_path, Stow(server.url, ca=str(pki["ca.pem"])), log)
        assert trusted.send_round() is True
    assert server.stored_uids() == ["1.2.3.1"]


# --- both channels ---------------------------------------------------------------------------------------------------
def test_c_store_down_holds_back_nothing_of_stow_and_each_channel_sends_each_result_once(tmp_path):
    pytest.importorskip("pynetdicom", reason="the node extra is not installed")
    from pynetdicom import AE, evt

    dicom_port = free_port()
    received = []
    log = []
    with FakeStow() as server:
        cfg = NodeConfig(forward=Peer("PACS", "127.0.0.1", dicom_port), stow=Stow(server.url))
        outboxes = Outboxes(tmp_path / "out", cfg, log.append)
        cstore, stow = outboxes.channels
        assert (cstore.dir.name, stow.dir.name) == ("outbox", "outbox-stow")
        names = queue(outboxes, tmp_path, ["1.2.3.1", "1.2.3.2"])
        assert outbox_uids(cstore, names) == outbox_uids(stow, names) == ["1.2.3.1", "1.2.3.2"]

        assert cstore.send_round() is False  # the PACS is down ...
        assert stow.send_round() is True  # ... the DICOMweb server takes everything meanwhile
        assert outbox_uids(cstore, names) == ["1.2.3.1", "1.2.3.2"] and stow.waiting() == []

        ae = AE(ae_title="PACS")
        ae.add_supported_context(SR_CLASS)
        pacs = ae.start_server(("127.0.0.1", dicom_port), block=False, evt_handlers=[
            (evt.EVT_C_STORE, lambda event: received.append(event.request.AffectedSOPInstanceUID) or 0x0000)])
        try:
            assert cstore.send_round() is True and stow.send_round() is True
        finally:
            pacs.shutdown()
    assert sorted(received) == ["1.2.3.1", "1.2.3.2"] and server.stored_uids() == ["1.2.3.1", "1.2.3.2"]
    assert outboxes.counts() == {"forwarded": 2, "forward_refused": 0, "outbox": 0,
                                 "stowed": 2, "stow_refused": 0, "outbox_stow": 0}


# --- settings ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kwargs,words", [
    (dict(url="pacs:8042/dicom-web"), "http(s)://HOST"),
    (dict(url="ftp://pacs/dicom-web"), "http(s)://HOST"),
    (dict(url="https://medge:secret@pacs/dicom-web"), "no user or password in the URL"),
    (dict(url="https://pacs/dicom-web?x=1"), "no query"),
    (dict(url="https://pacs:99999/dicom-web"), "port"),
    (dict(url="https://pacs/dicom-web", user="medge", token_file="t"), "give one"),
    (dict(url="https://pacs/dicom-web", password_file="p"), "--stow-password-file needs --stow-user"),
    (dict(url="http://pacs/dicom-web", ca="ca.pem"), "--stow-ca is for an https://"),
    (dict(url="https://pacs/dicom-web", timeout_s=0), "--stow-timeout"),
    (dict(url="http://pacs:8042/dicom-web/studies/"), "without /studies"),
])
def test_stow_settings_refuse_what_cannot_work(kwargs, words):
    with pytest.raises(UsageError, match=words.replace("(", r"\(").replace(")", r"\)").replace("?", r"\?")):
        Stow(**kwargs)


def test_stow_secrets_are_read_at_each_try_and_named_never_shown(tmp_path, monkeypatch):
    monkeypatch.delenv(STOW_PASSWORD_ENV, raising=False)
    with pytest.raises(UsageError, match=f"--stow-password-file FILE or \\${STOW_PASSWORD_ENV}"):
        Stow("https://pacs/dicom-web", user="medge").authorization()
    empty = tmp_path / "empty"
    empty.write_text("\n")
    with pytest.raises(UsageError, match="--stow-token-file .*empty"):
        Stow("https://pacs/dicom-web", token_file=str(empty)).authorization()
    with pytest.raises(UsageError, match="--stow-password-file .*cannot read"):
        Stow("https://pacs/dicom-web", user="medge", password_file=str(tmp_path / "missing")).authorization()
    token = tmp_path / "token"
    token.write_text("first\r\n")
    stow = Stow("https://pacs/dicom-web", token_file=str(token))
    assert stow.authorization() == "Bearer first"
    token.write_text("second")
    assert stow.authorization() == "Bearer second" and "second" not in repr(stow)
    assert Stow("https://pacs/dicom-web").authorization() is None
    assert Stow("http://pacs/dicom-web", token_file="t").cleartext_secret
    assert not Stow("http://127.0.0.1:8042/dicom-web", token_file="t").cleartext_secret
    assert not Stow("http://pacs/dicom-web").cleartext_secret


def test_cli_refuses_bad_stow_options(tmp_path, bundle, capsys, monkeypatch):
    from medge.edge.apps.cli import main

    monkeypatch.delenv(STOW_PASSWORD_ENV, raising=False)
    node = ["node", "--model", str(bundle), "--out", str(tmp_path / "out")]
    assert main([*node, "--stow-user", "medge"]) == 2
    assert "--stow-user without --forward-stow" in capsys.readouterr().err
    assert main([*node, "--forward-stow", "pacs/dicom-web"]) == 2
    assert "--forward-stow 'pacs/dicom-web'" in capsys.readouterr().err
    assert main([*node, "--forward-stow", "https://pacs/dicom-web", "--stow-token-file", "nope"]) == 2
    assert "--stow-token-file nope: file not found" in capsys.readouterr().err
    assert main([*node, "--forward-stow", "https://pacs/dicom-web", "--stow-user", "medge"]) == 2
    assert STOW_PASSWORD_ENV in capsys.readouterr().err
    assert not (tmp_path / "out").exists()  # refused before anything was made


def test_node_help_shows_the_stow_options(capsys):
    from medge.edge.apps.cli import main

    with pytest.raises(SystemExit) as exit_:
        main(["node", "--help"])
    assert exit_.value.code == 0
    text = capsys.readouterr().out
    for option in ("--forward-stow URL", "--stow-user USER", "--stow-password-file FILE", "--stow-token-file FILE",
                   "--stow-ca PEM", "--stow-timeout S", "DIR/outbox-stow/"):
        assert option in text, option


def test_c_store_keeps_its_association_while_results_come_and_lets_go_when_idle(tmp_path):
    """One association for a run of results (not one per result), released when the outbox goes idle, and a new
    one for the next result; a PACS that dropped the kept association meanwhile costs no failed round."""
    pytest.importorskip("pynetdicom", reason="the node extra is not installed")
    from pynetdicom import AE, evt

    from medge.edge.apps.node.outbox import CStoreSender

    events = {"requested": 0, "released": 0, "stored": 0}

    def count(key, status=None):
        def handler(event):
            events[key] += 1
            return status
        return handler

    ae = AE(ae_title="PACS")
    ae.add_supported_context(SR_CLASS, "1.2.840.10008.1.2.1")
    server = ae.start_server(("127.0.0.1", 0), block=False, evt_handlers=[
        (evt.EVT_REQUESTED, count("requested")), (evt.EVT_RELEASED, count("released")),
        (evt.EVT_C_STORE, count("stored", 0x0000))])
    try:
        sender = CStoreSender(Peer("PACS", "127.0.0.1", server.server_address[1]), "MEDGE")
        forwarder = Forwarder(tmp_path / "outbox", sender, log=lambda m: None)
        for i in range(3):  # three results, one round each, as the classifier writes them
            forwarder.put(*part10(tmp_path, f"1.2.3.{i}"))
            assert forwarder.send_round() is True
        assert events == {"requested": 1, "released": 0, "stored": 3}
        sender.idle()
        assert wait_until(lambda: events["released"] == 1)
        forwarder.put(*part10(tmp_path, "1.2.3.9"))
        assert forwarder.send_round() is True
        for assoc in list(server.active_associations):  # the PACS drops it (its idle timeout)
            assoc.abort()
        assert wait_until(lambda: not server.active_associations)
        forwarder.put(*part10(tmp_path, "1.2.3.10"))
        assert forwarder.send_round() is True and forwarder.failures == 0
        assert events["requested"] == 3 and events["stored"] == 5 and forwarder.sent == 5
    finally:
        sender.idle()
        server.shutdown()


def test_stow_files_are_checked_at_start(tmp_path, monkeypatch):
    """A --stow-ca that is no certificate is refused before anything runs; a secret others may read is warned of."""
    monkeypatch.delenv(STOW_PASSWORD_ENV, raising=False)
    not_pem = tmp_path / "ca.pem"
    not_pem.write_text("this is not a certificate\n")
    with pytest.raises(UsageError, match=r"--stow-ca .*ca\.pem: not a PEM CA certificate"):
        Stow("https://pacs/dicom-web", ca=str(not_pem)).check_files()
    password = tmp_path / "pw"
    password.write_text("s3cret\n")
    password.chmod(0o644)
    stow = Stow("https://pacs/dicom-web", user="medge", password_file=str(password))
    (warning,) = stow.check_files()
    assert "--stow-password-file" in warning and "mode 644" in warning and "chmod 600" in warning
    password.chmod(0o600)
    assert stow.check_files() == []
    monkeypatch.setenv(STOW_PASSWORD_ENV, "other")  # the file wins over the variable
    assert base64.b64decode(stow.authorization().split()[1]) == b"medge:s3cret"


def test_the_outboxes_say_at_start_what_an_earlier_run_left(tmp_path):
    outboxes = Outboxes(tmp_path, NodeConfig(forward=Peer("PACS", "127.0.0.1", 104),
                                              stow=Stow("http://127.0.0.1:8042/dicom-web")))
    assert outboxes.notes() == []
    cstore, stow = outboxes.channels
    cstore.put(*part10(tmp_path, "1.2.3.1"))
    (stow.dir / "failed").mkdir()
    name, data = part10(tmp_path, "1.2.3.2")
    (stow.dir / "failed" / name).write_bytes(data)
    assert outboxes.notes() == [
        "1 result(s) from an earlier run wait in outbox/ for --forward",
        "1 result(s) refused earlier by the --forward-stow server are kept in outbox-stow/failed/ "
        "(move them back to outbox-stow/ to send them again)"]
