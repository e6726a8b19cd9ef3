"""The parts of ``medge node`` without a network: settings, the spool and its ledger, study records, sending the SR
and SC (what they hold: test_report.py), and the command line's refusals."""
import importlib.util
import json
import os

import numpy as np
import pytest

from medge.edge.apps.node.config import (
    NodeConfig,
    Peer,
    check_ae_title,
    parse_allow,
    parse_class_code,
    parse_class_codes,
    parse_forward,
)
from medge.edge.apps.node.spool import RESULTS, Spool, uid_hash
from medge.edge.apps.node.studies import Studies, disease_classes
from medge.edge.errors import ConfigError, UsageError


# --- settings ----------------------------------------------------------------------------------------------------
def test_peers_and_ae_titles():
    assert parse_allow("MODALITY1") == Peer("MODALITY1")
    assert parse_allow("PACS@10.0.0.5") == Peer("PACS", "10.0.0.5")
    assert parse_forward("ORTHANC@10.0.0.5:4242") == Peer("ORTHANC", "10.0.0.5", 4242)
    assert parse_forward("PACS@[::1]:104") == Peer("PACS", "::1", 104)
    assert check_ae_title(" MEDGE ", "--ae-title") == "MEDGE"
    for bad in ("", "A" * 17, "BACK\\SLASH", "TAB\tX"):
        with pytest.raises(UsageError, match="not a DICOM AE title"):
            check_ae_title(bad, "--ae-title")
    for bad in ("ORTHANC", "ORTHANC@host", "ORTHANC@host:0", "@host:104", "ORTHANC@host:99999"):
        with pytest.raises(UsageError, match="--forward"):
            parse_forward(bad)
    with pytest.raises(UsageError, match="AE@HOST"):
        parse_allow("PACS@")


def test_settings_are_checked_once():
    with pytest.raises(ConfigError, match="--queue"):
        NodeConfig(queue=0)
    with pytest.raises(ConfigError, match="--study-timeout"):
        NodeConfig(study_timeout_s=0)
    with pytest.raises(UsageError, match="go together"):
        NodeConfig(tls_cert="a.pem")
    with pytest.raises(UsageError, match="mutual TLS"):
        NodeConfig(tls_ca="ca.pem")
    assert NodeConfig().host == "127.0.0.1" and NodeConfig().batch_size == 1


PTX = ("36118008", "SCT", "Pneumothorax")


@pytest.mark.parametrize("text, problem", [
    ("ptx", "give NAME=SCHEME:VALUE"), ("ptx=SCT", "give NAME=SCHEME:VALUE"),
    ("=SCT:36118008", "the class NAME before '=' is empty"), ("ptx=:36118008", "SCHEME is empty"),
    ("ptx=SCT:", "VALUE is empty"), ("ptx=SCT:36118008:", "MEANING is empty"),
    ("ptx=99ABCDEFGHIJKLMNO:1", "SCHEME '99ABCDEFGHIJKLMNO' is longer than DICOM's 16 characters"),
    (f"ptx=SCT:{'1' * 65}", "VALUE '1+' is longer than DICOM's 64 characters"),
    (f"ptx=SCT:1:{'m' * 65}", "MEANING 'm+' is longer than DICOM's 64 characters$"),
    (f"{'c' * 65}=SCT:1", "MEANING 'c+' is longer .* \\(the class name is the meaning when none is given\\)"),
    ("ptx=SCT:1:a\\b", "MEANING 'a.+b' holds a backslash or a control character"),
    ("ptx=SCT:1\t2", "VALUE '1.+2' holds a backslash or a control character"),
    ("ptx=99L:urn:oid:1.2.3", "a URN code value cannot be given"),
])
def test_class_code_refusals_name_the_option_and_the_problem(text, problem):
    with pytest.raises(UsageError, match=f"^--class-code .*{problem}"):
        parse_class_code(text)


def test_class_codes():
    assert parse_class_code("ptx=SCT:36118008:Pneumothorax") == ("ptx", PTX)
    assert parse_class_code(" ptx = SCT : 36118008 ") == ("ptx", ("36118008", "SCT", "ptx"))  # meaning: the name
    assert parse_class_code("a b=99LOCAL:X-1:one: two") == ("a b", ("X-1", "99LOCAL", "one: two"))
    assert parse_class_code(f"ptx=SCT:{'1' * 64}:{'m' * 64}")[1][0] == "1" * 64  # a Long Code Value
    assert parse_class_codes(["ptx=SCT:36118008:Pneumothorax", "normal=SCT:17621005:Normal"]) == {
        "ptx": PTX, "normal": ("17621005", "SCT", "Normal")}
    with pytest.raises(UsageError, match="--class-code ptx: given twice"):
        parse_class_codes(["ptx=SCT:36118008:Pneumothorax", "ptx=SCT:1"])
    assert NodeConfig().class_codes == {}


def test_the_node_says_at_start_which_classes_it_codes_privately():
    from medge.edge.apps.node import coding_notes

    assert coding_notes(["disease", "normal"], NodeConfig()) == []  # medge's table codes both
    (note,) = coding_notes(["ptx", "atelectasis", "normal"], NodeConfig())
    assert note.startswith("note: the SR codes ptx, atelectasis in medge's private scheme 99MEDGE")
    assert "dciodvfy warns" in note and '--class-code "ptx=SCT:' in note
    assert coding_notes(["ptx", "normal"], NodeConfig(class_codes={"ptx": PTX})) == []
    with pytest.raises(UsageError, match="--class-code ptx: no such class in the bundle"):
        coding_notes(["disease", "normal"], NodeConfig(class_codes={"ptx": PTX}))


def test_the_log_gives_the_labels_probability():
    from medge.edge.apps.node.worker import said
    from medge.edge.prediction import Prediction

    by_threshold = Prediction("x.dcm", label="disease", probabilities={"disease": 0.304, "normal": 0.696})
    assert said(by_threshold) == "disease (0.304)"  # not the most probable class's 0.696
    findings = Prediction("x.dcm", label="Effusion", probabilities={"Effusion": 0.61, "Nodule": 0.2},
                          decisions={"Effusion": True, "Nodule": False}, thresholds={"Effusion": 0.4, "Nodule": 0.5})
    assert said(findings) == "Effusion (Effusion 0.610, Nodule 0.200)"


# --- the spool ---------------------------------------------------------------------------------------------------
def _received(tmp_path, name="incoming.dcm", data=b"DICM" * 10):
    path = tmp_path / name
    path.write_bytes(data)
    return path


def test_spool_put_take_commit_and_duplicates(tmp_path):
    spool = Spool(tmp_path / "out", capacity=2)
    assert (tmp_path / "out" / "spool").stat().st_mode & 0o777 == 0o700
    assert spool.reserve("1.2.3") == "ok"
    assert spool.reserve("1.2.3") == "busy"  # being written by another association: no outcome yet
    item = spool.put("1.2.3", _received(tmp_path), "SCU")
    assert item.path.name == f"{uid_hash('1.2.3')}.dcm" and item.path.read_bytes() == b"DICM" * 10
    assert spool.reserve("1.2.3") == "duplicate"  # queued
    assert spool.reserve("1.2.4") == "ok" and spool.reserve("1.2.5") == "full"
    spool.unreserve("1.2.4")
    (taken,) = spool.take(8, 0.01)
    assert taken == item and spool.pending() == 1
    spool.commit(taken, {"sop_instance_uid": "1.2.3", "status": "classified"})
    assert spool.pending() == 0 and not item.path.exists() and not item.path.with_suffix(".json").exists()
    assert spool.reserve("1.2.3") == "duplicate"  # done: no second result
    assert [json.loads(x) for x in (tmp_path / "out" / RESULTS).read_text().splitlines()] == \
        [{"sop_instance_uid": "1.2.3", "status": "classified"}]


def test_spool_recovery_after_a_crash(tmp_path):
    """What kill -9 leaves: acknowledged instances without a result, a done one not yet cleaned up, a copy cut short,
    a sidecar without its image, and a results line cut in the middle."""
    out = tmp_path / "out"
    spool = Spool(out, capacity=10)
    items = [spool.put(f"1.2.{i}", _received(tmp_path, f"r{i}.dcm"), "SCU") for i in range(4)]
    with open(out / RESULTS, "a") as f:  # 1.2.0 done, its files still there (the crash came before the clean-up)
        f.write(json.dumps({"sop_instance_uid": "1.2.0", "status": "classified"}) + "\n")
        f.write('{"sop_instance_uid": "1.2.1", "sta')  # the crash cut this line: 1.2.1 is not done
    (out / "spool" / ".abc.dcm.tmp").write_bytes(b"half")  # never acknowledged
    (out / "spool" / "feedface.json").write_text('{"sop_instance_uid": "9.9"}')  # image never renamed in
    again = Spool(out, capacity=10)
    assert again.recovered == 3 and set(again.done) == {"1.2.0"}
    assert sorted(i.sop_uid for i in again.take(10, 0.01)) == ["1.2.1", "1.2.2", "1.2.3"]
    assert (out / RESULTS).read_text().endswith("}\n")  # the torn line is gone
    assert not items[0].path.exists() and not (out / "spool" / ".abc.dcm.tmp").exists()
    assert not (out / "spool" / "feedface.json").exists()
    assert again.reserve("1.2.0") == "duplicate" and again.reserve("1.2.2") == "duplicate"


def test_spool_write_failure_leaves_nothing_and_a_resend_works(tmp_path, monkeypatch):
    spool = Spool(tmp_path / "out", capacity=4)
    assert spool.reserve("1.2.3") == "ok"
    real = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (_ for _ in ()).throw(OSError(28, "No space left on device")))
    with pytest.raises(OSError, match="No space"):
        spool.put("1.2.3", _received(tmp_path), "SCU")
    monkeypatch.setattr(os, "fsync", real)
    assert list((tmp_path / "out" / "spool").iterdir()) == [] and spool.pending() == 0
    assert spool.reserve("1.2.3") == "ok"
    spool.put("1.2.3", _received(tmp_path), "SCU")
    assert spool.queued() == 1


def test_keep_images_moves_them_out_of_the_spool(tmp_path):
    spool = Spool(tmp_path / "out", capacity=4, keep_images=True)
    spool.reserve("1.2.3")
    item = spool.put("1.2.3", _received(tmp_path), "SCU")
    spool.commit(spool.take(1, 0.01)[0], {"sop_instance_uid": "1.2.3"})
    kept = tmp_path / "out" / "images" / item.path.name
    assert kept.read_bytes() == b"DICM" * 10 and (tmp_path / "out" / "images").stat().st_mode & 0o777 == 0o700


def test_classifier_survives_a_failure_that_is_not_the_instances_and_tries_again(tmp_path, bundle, monkeypatch):
    """The disk fills while results are committed: nothing is lost, the thread goes on, each instance once."""
    import threading
    import time

    pytest.importorskip("highdicom", reason="the node extra is not installed")
    import pydicom

    from medge.edge.apps.node import worker
    from medge.edge.model import Model
    from tests.edge.apps.node.nodes import write_radiograph

    monkeypatch.setattr(worker, "RETRY_S", 0.1)
    out = tmp_path / "out"
    spool = Spool(out, capacity=4)
    for i in range(2):
        path = write_radiograph(tmp_path / f"i{i}.dcm", seed=i)
        uid = pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID
        spool.reserve(uid)
        spool.put(uid, path, "SCU")
    real, calls = spool.commit, []

    def commit(item, record):
        calls.append(item.sop_uid)
        if len(calls) == 2:  # the second instance's commit fails once
            raise OSError(28, "No space left on device")
        real(item, record)

    monkeypatch.setattr(spool, "commit", commit)
    log = []
    studies = Studies(out, ["disease", "normal"], 5, log=lambda m: None)
    classifier = worker.Classifier(Model.load(bundle), spool, NodeConfig(), studies, log=log.append)
    stop, drain = threading.Event(), threading.Event()
    thread = threading.Thread(target=classifier.run, args=(stop, drain))
    thread.start()
    deadline = time.monotonic() + 60
    while spool.pending() and time.monotonic() < deadline:
        time.sleep(0.05)
    stop.set()
    thread.join(10)
    records = [json.loads(x) for x in (out / RESULTS).read_text().splitlines()]
    assert len(records) == 2 and len({r["sop_instance_uid"] for r in records}) == 2
    assert len(calls) == 3 and calls[1] == calls[2]  # the failed one was tried again, the other not
    assert any("No space left" in m and "1 instance(s) back in the queue" in m for m in log)


# --- studies -----------------------------------------------------------------------------------------------------
def _record(study, sop, p_disease, status="classified"):
    return {"study_instance_uid": study, "sop_instance_uid": sop, "series_instance_uid": "s", "status": status,
            "label": "disease" if p_disease > 0.5 else "normal", "received_at": sop,
            "probabilities": {"disease": p_disease, "normal": 1 - p_disease} if status == "classified" else None}


def test_study_label_is_the_highest_disease_probability_and_late_instances_update_it(tmp_path):
    assert disease_classes(["disease", "normal"]) == ["disease"]
    assert disease_classes(["Normal", "effusion", "nodule"]) == ["effusion", "nodule"]
    studies = Studies(tmp_path, ["disease", "normal"], timeout_s=5, log=lambda m: None)
    studies.add(_record("S", "1", 0.2))
    studies.add(_record("S", "2", 0.7))
    studies.add(_record("S", "3", 0.0, status="skipped"))
    assert studies.flush() == 0  # not quiet long enough
    assert studies.flush(now=1e12) == 1
    path = tmp_path / "studies" / f"{uid_hash('S')}.json"
    first = json.loads(path.read_text())
    assert (first["label"], first["disease_probability"], first["deciding_instance"]) == ("disease", 0.7, "2")
    assert first["counts"] == {"classified": 2, "skipped": 1, "error": 0} and first["updated"] == 1
    studies.add(_record("S", "4", 0.9))
    assert studies.flush(now=1e12) == 1
    second = json.loads(path.read_text())
    assert second["deciding_instance"] == "4" and second["updated"] == 2 and len(second["instances"]) == 4
    again = Studies(tmp_path, ["disease", "normal"], timeout_s=5, log=lambda m: None)
    again.load([_record("S", str(i), 0.1) for i in range(1, 5)])
    assert again.flush(now=1e12) == 0  # after a restart: nothing to rewrite, the file lists them all



def _findings_record(sop, effusion, nodule, status="classified"):
    """A node record of the multi-label test bundle (Effusion decided at 0.4, Nodule unsupported)."""
    from medge.edge.findings import label_of

    positive = ["Effusion"] * (effusion >= 0.4) if status == "classified" else None
    return {"study_instance_uid": "S", "sop_instance_uid": sop, "series_instance_uid": "s", "status": status,
            "received_at": sop, "task": "multilabel", "thresholds": {"Effusion": 0.4, "Nodule": None},
            "label": label_of(positive) if positive is not None else None, "positive_findings": positive,
            "any_positive": bool(positive) if positive is not None else None,
            "probabilities": {"Effusion": effusion, "Nodule": nodule} if status == "classified" else None}


def test_a_multilabel_study_lists_the_positive_findings_of_its_instances(tmp_path):
    studies = Studies(tmp_path, ["Effusion", "Nodule"], timeout_s=5, log=lambda m: None)
    studies.add(_findings_record("1", 0.2, 0.9))  # the most probable finding, but undecided: not positive
    studies.add(_findings_record("2", 0.0, 0.0, status="skipped"))
    assert studies.flush(now=1e12) == 1
    path = tmp_path / "studies" / f"{uid_hash('S')}.json"
    first = json.loads(path.read_text())
    assert (first["label"], first["positive_findings"], first["any_positive"]) == (
        "No Finding (not decided: Nodule)", [], False)
    assert (first["disease_probability"], first["disease_classes"], first["deciding_instance"]) == (None, None, None)
    assert [i["positive_findings"] for i in first["instances"]] == [[], None]
    studies.add(_findings_record("3", 0.6, 0.1))
    studies.flush(now=1e12)
    second = json.loads(path.read_text())
    assert (second["label"], second["positive_findings"], second["any_positive"]) == ("Effusion", ["Effusion"], True)
    only_skipped = Studies(tmp_path / "b", ["Effusion", "Nodule"], timeout_s=5, log=lambda m: None)
    only_skipped.add(_findings_record("4", 0.0, 0.0, status="skipped"))
    only_skipped.flush(now=1e12)
    record = json.loads((tmp_path / "b" / "studies" / f"{uid_hash('S')}.json").read_text())
    assert (record["label"], record["positive_findings"], record["any_positive"]) == (None, [], None)

def test_a_multilabel_study_log_line_counts_its_positive_findings_not_a_probability_of_them_all(tmp_path):
    """The highest probability of any finding is no probability of the study's label (each finding has its own
    threshold): the log says how many findings are positive. A single-label study's line is as it was."""
    lines = []
    studies = Studies(tmp_path, ["Effusion", "Nodule"], timeout_s=5, log=lines.append)
    studies.add(_findings_record("1", 0.2, 0.9))
    studies.flush(now=1e12)
    studies.add(_findings_record("2", 0.6, 0.1))
    studies.flush(now=1e12)
    assert lines[0].endswith("label No Finding (not decided: Nodule) (0 positive finding(s))"), lines
    assert lines[1].endswith("label Effusion (1 positive finding(s))"), lines
    single = []
    plain = Studies(tmp_path / "s", ["disease", "normal"], timeout_s=5, log=single.append)
    plain.add({"study_instance_uid": "S", "sop_instance_uid": "1", "status": "classified", "received_at": "1",
               "label": "disease", "probabilities": {"disease": 0.7, "normal": 0.3}})
    plain.flush(now=1e12)
    assert single[0].endswith("label disease (probability of disease: 0.700)"), single


# --- result objects (their content: test_report.py) -------------------------------------------------------------
def test_forwarder_sends_what_the_pacs_takes_and_sets_aside_what_it_never_will(tmp_path):
    """A PACS that stores SR but no Secondary Capture: the SC goes to outbox/failed/, the SR after it is delivered."""
    pytest.importorskip("pynetdicom", reason="the node extra is not installed")
    import io

    import pydicom
    from pynetdicom import AE, evt

    from medge.edge.apps.node import report
    from medge.edge.apps.node.outbox import SR_STORAGE, CStoreSender, Forwarder
    from tests.edge.apps.node.nodes import write_radiograph

    source = pydicom.dcmread(write_radiograph(tmp_path / "cr.dcm", "CR"), stop_before_pixels=True)
    algorithm = report.Algorithm("m", "1", "ab" * 32)
    finding = report.Finding(("disease", "normal"), {"disease": 0.25, "normal": 0.75}, "normal")
    sc = report.build_heatmap_sc(source, np.zeros((8, 8, 3), np.uint8), algorithm, "1.2.3.4", "1.2.3.5")
    sr = report.build_sr(source, finding, algorithm, "1.2.3.6", "1.2.3.7")
    received = []
    ae = AE(ae_title="PACS")
    ae.add_supported_context(SR_STORAGE)
    server = ae.start_server(("127.0.0.1", 0), block=False, evt_handlers=[
        (evt.EVT_C_STORE, lambda event: received.append(event.request.AffectedSOPInstanceUID) or 0x0000)])
    try:
        log = []
        sender = CStoreSender(Peer("PACS", "127.0.0.1", server.server_address[1]), "MEDGE")
        forwarder = Forwarder(tmp_path / "out" / "outbox", sender, log=log.append)
        for name, ds in (("a.sc.dcm", sc), ("b.sr.dcm", sr)):  # the SC first: it must not hold the SR back
            buf = io.BytesIO()
            ds.save_as(buf, enforce_file_format=True)
            forwarder.put(name, buf.getvalue())
        assert forwarder.send_round() is True
    finally:
        server.shutdown()
    assert received == ["1.2.3.7"] and forwarder.sent == 1 and forwarder.refused == 1
    assert [p.name for p in (tmp_path / "out" / "outbox" / "failed").iterdir()] == ["a.sc.dcm"]
    assert forwarder.waiting() == [] and any("kept in outbox/failed/" in m for m in log)


# --- the command line --------------------------------------------------------------------------------------------
def test_cli_refuses_bad_options(tmp_path, bundle, capsys):
    from medge.edge.apps.cli import main

    out = str(tmp_path / "out")
    assert main(["node", "--model", str(bundle), "--out", out, "--forward", "ORTHANC"]) == 2
    assert "AE@HOST:PORT" in capsys.readouterr().err
    assert main(["node", "--model", str(bundle), "--out", out, "--tls-cert", "x.pem"]) == 2
    assert "go together" in capsys.readouterr().err
    assert main(["node", "--model", str(bundle), "--out", out, "--tls-cert", "x.pem", "--tls-key", "y.pem"]) == 2
    assert "file not found" in capsys.readouterr().err
    assert main(["node", "--model", str(bundle), "--out", out, "--class-code", "ptx=SCT"]) == 2
    assert "--class-code 'ptx=SCT': give NAME=SCHEME:VALUE[:MEANING]" in capsys.readouterr().err
    assert main(["node", "--model", str(bundle), "--out", out, "--class-code", "ptx=SCT:36118008"]) == 2
    err = capsys.readouterr().err  # the bundle's classes are known once it is loaded, after the extra is checked
    if importlib.util.find_spec("pynetdicom") and importlib.util.find_spec("highdicom"):
        assert "--class-code ptx: no such class in the bundle (its classes: disease, normal)" in err
    else:  # a base install
        assert "needs the 'node' extra" in err
