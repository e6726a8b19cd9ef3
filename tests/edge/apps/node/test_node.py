"""``medge node`` as a hospital connects it: dcmtk's echoscu, storescu and dsrdump, and pynetdicom as a misbehaving
sender (aborted transfers, malformed data, unsupported transfer syntaxes, many associations, a 60 MB instance),
``kill -9`` and restarts. The Orthanc round trip is in test_node_pacs.py.
"""
import json
import os
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("pynetdicom", reason="the node extra is not installed")
pytest.importorskip("highdicom", reason="the node extra is not installed")

from tests.edge.apps.node.nodes import (  # noqa: E402
    DCMTK,
    DSRDUMP,
    PYDICOM_GRAY,
    PYDICOM_RGB,
    NodeProcess,
    bundle_classes,
    certificates,
    echoscu,
    pydicom_file,
    results,
    sr_probabilities,
    storescu,
    with_study,
    write_radiograph,
)

needs_dcmtk = pytest.mark.skipif(not DCMTK, reason="dcmtk is not installed (apt-get install dcmtk)")
JPEG_BASELINE = "1.2.840.10008.1.2.4.50"


def send(port, *items, calling="PYSCU", contexts=None, abort_after_pdus=None):
    """C-STORE each item (a path or a Dataset) over one pynetdicom association; the status of each (None: none came).

    ``contexts``: [(sop_class, [transfer syntaxes])] to propose instead of the items' own.
    ``abort_after_pdus``: abort the association after that many P-DATA PDUs of the first item.
    """
    import pydicom
    from pynetdicom import AE, _config

    _config.STORE_SEND_CHUNKED_DATASET = True  # a file is sent as its bytes, as read (a malformed one too)
    ae = AE(ae_title=calling)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
    if contexts is None:
        contexts = []
        for item in items:
            ds = pydicom.dcmread(item, stop_before_pixels=True) if isinstance(item, (str, Path)) else item
            contexts.append((str(ds.SOPClassUID), [str(ds.file_meta.TransferSyntaxUID)]))
    for sop_class, syntaxes in dict.fromkeys((c, tuple(t)) for c, t in contexts):
        ae.add_requested_context(sop_class, list(syntaxes))
    assoc = ae.associate("127.0.0.1", port, ae_title="MEDGE", max_pdu=16384)
    if not assoc.is_established:
        return assoc
    statuses = []
    if abort_after_pdus:
        sent, real = [0], assoc.dul.send_pdu

        def counting(primitive):
            sent[0] += 1
            if sent[0] == abort_after_pdus:
                assoc.abort()
                raise ConnectionAbortedError("aborted by the test")
            real(primitive)

        assoc.dul.send_pdu = counting
    try:
        for item in items:
            status = assoc.send_c_store(item)
            statuses.append(int(status.Status) if "Status" in status else None)
    except ConnectionAbortedError:
        statuses.append("aborted")
    finally:
        if assoc.is_established:
            assoc.release()
    return statuses


def predict_records(bundle, files) -> dict[str, dict]:
    """``medge predict --batch-size 1`` on ``files``: file name -> record."""
    run = subprocess.run(["medge", "predict", "--model", str(bundle), "--batch-size", "1", "--format", "jsonl",
                          *map(str, files)], capture_output=True, text=True, timeout=120)
    assert run.returncode in (0, 1), run.stderr
    return {Path(r["path"]).name: r for r in map(json.loads, run.stdout.splitlines())}


NM_CAPTURE = "nm_capture.dcm"


@pytest.fixture
def sources(tmp_path):
    """What a hospital sends: generated CR and DX (uncompressed, JPEG baseline), pydicom's compressed grayscale
    Secondary Captures (JPEG 2000, JPEG-LS, 12-bit JPEG, deflate) as captures of a radiograph say (Modality OT),
    colour ones (RLE, JPEG), a CT slice, and a nuclear medicine capture as pydicom ships it (Modality NM)."""
    folder = tmp_path / "in"
    folder.mkdir()
    files = [write_radiograph(folder / "cr.dcm", "CR", seed=1), write_radiograph(folder / "dx.dcm", "DX", seed=2),
             write_radiograph(folder / "dx_jpeg.dcm", "DX", seed=3, transfer=JPEG_BASELINE),
             write_radiograph(folder / "ct.dcm", "CT", seed=4)]
    files += [with_study(pydicom_file(name), folder / name, modality="OT") for name in PYDICOM_GRAY + PYDICOM_RGB]
    files.append(with_study(pydicom_file("JPEG2000.dcm"), folder / NM_CAPTURE, new_instance=True))
    return files


@needs_dcmtk
def test_dcmtk_sends_every_transfer_syntax_and_each_instance_gets_one_record(tmp_path, bundle, sources):
    with NodeProcess(bundle, tmp_path / "out") as node:
        assert echoscu(node.port).returncode == 0
        storescu(node.port, *sources)
        records = node.wait_results(len(sources))
        storescu(node.port, sources[0], sources[4])  # resent: acknowledged, no second result
        assert echoscu(node.port).returncode == 0  # the resend has been handled
    assert len(results(tmp_path / "out")) == len(sources)
    log = node.log()
    assert log.count("already received") == 2
    import pydicom

    from medge.edge.apps.node.report import class_codes

    classes = bundle_classes(bundle)
    meanings = {name: code[2] for name, code in zip(classes, class_codes(classes), strict=True)}
    by_sop = {r["sop_instance_uid"]: r for r in records}
    assert len(by_sop) == len(sources)
    for path in sources:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        r = by_sop[ds.SOPInstanceUID]
        assert (r["study_instance_uid"], r["series_instance_uid"]) == (ds.StudyInstanceUID, ds.SeriesInstanceUID)
        if path.name in PYDICOM_RGB:
            assert r["status"] == "skipped" and "colour" in r["reason"], r
        elif path.name == "ct.dcm":
            assert r["status"] == "skipped" and "CT slice" in r["reason"], r
        elif path.name == NM_CAPTURE:  # a bundle that names no modality is for radiographs: no result, said so
            assert r["status"] == "skipped" and r["reason"].startswith("modality NM: a bundle that names no"), r
            assert r["label"] is None and r["probabilities"] is None and r["input"]["modality"] == "NM", r
        else:
            assert r["status"] == "classified", r
            assert r["label"] in r["probabilities"] and r["sr"], r
            dump = subprocess.run([DSRDUMP, str(tmp_path / "out" / r["sr"])], capture_output=True, text=True)
            assert dump.returncode == 0, dump.stderr
            present = f'CODE:(,,"{meanings[r["label"]]}")=(52101004,SCT,"Present")'  # the label, present
            assert "Imaging Measurement Report" in dump.stdout and dump.stdout.count(present) == 1, dump.stdout
        if r["status"] != "classified":
            assert r["sr"] is None
    # no patient data in the log; the spool is emptied and private; the SOP Instance UIDs are hashed
    assert "Doe^Jane" not in log and "PAT-1" not in log and "19700101" not in log
    assert not any(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID in log for p in sources)
    assert list((tmp_path / "out" / "spool").iterdir()) == []
    assert (tmp_path / "out" / "spool").stat().st_mode & 0o777 == 0o700


def test_sr_probabilities_equal_medge_predict(tmp_path, bundle, sources):
    classified = [p for p in sources if p.name not in PYDICOM_RGB and p.name not in ("ct.dcm", NM_CAPTURE)]
    with NodeProcess(bundle, tmp_path / "out") as node:
        assert send(node.port, *classified) == [0] * len(classified)
        records = node.wait_results(len(classified))
    expected = predict_records(bundle, classified)
    import pydicom

    for path in classified:
        uid = pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID
        r = next(r for r in records if r["sop_instance_uid"] == uid)
        want = expected[path.name]["probabilities"]
        assert r["probabilities"] == want  # the record: bit-identical floats
        sr = pydicom.dcmread(tmp_path / "out" / r["sr"])
        assert sr_probabilities(sr, bundle_classes(bundle)) == want  # the SR's FloatingPointValue too
        assert r["label"] == expected[path.name]["label"]


@needs_dcmtk
def test_allow_rejects_other_callers(tmp_path, bundle):
    with NodeProcess(bundle, tmp_path / "out", "--allow", "MODALITY1", "--allow", "PACS@127.0.0.1") as node:
        assert echoscu(node.port, calling="MODALITY1").returncode == 0
        assert echoscu(node.port, calling="PACS").returncode == 0
        refused = echoscu(node.port, calling="INTRUDER")
        assert refused.returncode != 0
        assert "Calling AE Title Not Recognized" in refused.stdout + refused.stderr
    assert "not in --allow" in node.log()


@needs_dcmtk
@pytest.mark.skipif(shutil.which("openssl") is None, reason="the openssl command is not installed")
def test_dicom_over_mutual_tls(tmp_path, bundle):
    c = certificates(tmp_path / "pki")
    image = write_radiograph(tmp_path / "dx.dcm")
    args = ("--tls-cert", str(c["server.pem"]), "--tls-key", str(c["server.key"]), "--tls-ca", str(c["ca.pem"]))
    with NodeProcess(bundle, tmp_path / "out", *args) as node:
        tls = ["+tls", str(c["client.key"]), str(c["client.pem"]), "+cf", str(c["ca.pem"])]
        assert echoscu(node.port, extra=tls).returncode == 0
        storescu(node.port, image, extra=tls)
        (record,) = node.wait_results(1)
        assert record["status"] == "classified"
        plain = echoscu(node.port)  # no TLS: no association
        assert plain.returncode != 0
        anonymous = echoscu(node.port, extra=["+tla", "+cf", str(c["ca.pem"])])  # TLS without a client certificate
        assert anonymous.returncode != 0
    assert "(TLS)" in node.log()


def test_faults_leave_the_node_up_and_nothing_half_done(tmp_path, bundle):
    """An association aborted mid-transfer, a malformed dataset, an unsupported transfer syntax, then good data."""
    import pydicom

    big = write_radiograph(tmp_path / "big.dcm", size=2048)  # 8 MB: 8 PDUs of the 1 MiB the node takes
    garbage = tmp_path / "garbage.dcm"
    header = write_radiograph(tmp_path / "header.dcm", size=8)
    meta = pydicom.dcmread(header).file_meta
    pydicom.filewriter.dcmwrite(garbage, pydicom.Dataset(), implicit_vr=False)  # placeholder, overwritten below
    with open(garbage, "wb") as f:  # a valid preamble and file meta, then bytes that are no dataset
        f.write(b"\0" * 128 + b"DICM")
        pydicom.filewriter.write_file_meta_info(pydicom.filebase.DicomFileLike(f), meta)
        f.write(b"\x08\x00\x16\x00UI\xff\xff" + os.urandom(64))
    with NodeProcess(bundle, tmp_path / "out") as node:
        assert send(node.port, big, abort_after_pdus=4) == ["aborted"]
        statuses = send(node.port, garbage, contexts=[(meta.MediaStorageSOPClassUID, [meta.TransferSyntaxUID])])
        assert statuses[0] not in (None, 0x0000) and statuses[0] & 0xF000 in (0xA000, 0xC000), hex(statuses[0])
        assoc = send(node.port, contexts=[(pydicom.dcmread(big, stop_before_pixels=True).SOPClassUID,
                                           ["1.2.840.10008.1.2.4.100"])])  # MPEG-2: not decodable, not accepted
        assert not assoc.accepted_contexts and assoc.rejected_contexts
        assert send(node.port, big, header) == [0x0000, 0x0000]  # the aborted one, resent, and another
        records = node.wait_results(2)
    assert len(results(tmp_path / "out")) == 2
    assert sorted(r["status"] for r in records) == ["classified", "classified"]
    spool = tmp_path / "out" / "spool"
    assert list(spool.iterdir()) == []  # no partial file in the spool from the aborted transfer
    assert "cannot understand (0xC210)" in node.log()
    left = list((tmp_path / "out" / "incoming").iterdir())  # the aborted transfer's part, in the private folder
    assert len(left) <= 1, left
    with NodeProcess(bundle, tmp_path / "out"):
        assert list((tmp_path / "out" / "incoming").iterdir()) == []  # swept at start
    assert len(results(tmp_path / "out")) == 2


def test_kill_9_then_restart_gives_each_acknowledged_instance_one_result(tmp_path, bundle):
    files = [write_radiograph(tmp_path / f"i{i}.dcm", "DX" if i % 2 else "CR", seed=i) for i in range(10)]
    node = NodeProcess(bundle, tmp_path / "out", slow_predict_s=2.0).start()  # a slow box: the queue fills
    try:
        assert send(node.port, *files) == [0x0000] * len(files)  # every one acknowledged
    finally:
        node.stop(signal.SIGKILL)
    before = results(tmp_path / "out")
    assert len(before) < len(files)  # killed with instances acknowledged and not yet classified
    assert len(list((tmp_path / "out" / "spool").glob("*.dcm"))) == len(files) - len(before)
    with NodeProcess(bundle, tmp_path / "out") as node:
        assert f"{len(files) - len(before)} instance(s) from the spool" in node.log()
        after = node.wait_results(len(files))
        assert send(node.port, *files[:3]) == [0x0000] * 3  # resent after the restart: still no second result
    import pydicom

    uids = sorted(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID for p in files)
    assert sorted(r["sop_instance_uid"] for r in results(tmp_path / "out")) == uids  # exactly once each
    assert all(r["status"] == "classified" for r in after)
    assert list((tmp_path / "out" / "spool").iterdir()) == []


def test_sigterm_finishes_the_queue_and_exits(tmp_path, bundle):
    files = [write_radiograph(tmp_path / f"i{i}.dcm", seed=i) for i in range(4)]
    node = NodeProcess(bundle, tmp_path / "out", slow_predict_s=0.5).start()
    try:
        assert send(node.port, *files) == [0x0000] * 4
        assert node.stop(signal.SIGTERM, timeout_s=60) == 0  # 60 s: a guard against a hang, not a timing
    finally:
        node.kill()
    done, spooled = results(tmp_path / "out"), list((tmp_path / "out" / "spool").glob("*.dcm"))
    assert len(done) + len(spooled) == 4  # finished, or kept for the next start: nothing lost
    assert "SIGTERM" in node.log() and "stopped:" in node.log()


def test_full_queue_answers_out_of_resources_and_a_resend_works(tmp_path, bundle):
    files = [write_radiograph(tmp_path / f"i{i}.dcm", seed=i) for i in range(3)]
    with NodeProcess(bundle, tmp_path / "out", "--queue", "1", slow_predict_s=1.0) as node:
        statuses = send(node.port, *files)
        assert statuses[0] == 0x0000 and 0xA700 in statuses[1:], statuses
        refused = [f for f, s in zip(files, statuses, strict=True) if s == 0xA700]
        done = len(files) - len(refused)
        node.wait_results(done)
        for f in refused:  # the queue has room again (for one)
            assert send(node.port, f) == [0x0000]
            done += 1
            node.wait_results(done)
    assert "queue full" in node.log()


def test_eight_concurrent_associations(tmp_path, bundle):
    files = [write_radiograph(tmp_path / f"i{i}.dcm", seed=i, size=128) for i in range(16)]
    with NodeProcess(bundle, tmp_path / "out") as node:
        statuses = [None] * 8
        threads = [threading.Thread(target=lambda k=k: statuses.__setitem__(k, send(node.port, *files[2 * k:2 * k + 2],
                                                                                     calling=f"SCU{k}")))
                   for k in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert statuses == [[0x0000, 0x0000]] * 8
        records = node.wait_results(16)
    assert len({r["sop_instance_uid"] for r in records}) == 16
    assert {r["calling_ae"] for r in records} == {f"SCU{k}" for k in range(8)}


def test_a_60_mb_instance_is_refused_over_the_limit_and_taken_within_bounded_memory(tmp_path, bundle):
    big = write_radiograph(tmp_path / "big.dcm", size=5500)  # 5500 x 5500 x 2 bytes: 60.5 MB
    assert big.stat().st_size > 60e6
    with NodeProcess(bundle, tmp_path / "small", "--max-instance-mb", "50") as node:
        assert send(node.port, big) == [0xA700]
        assert "over --max-instance-mb 50" in node.log()
    with NodeProcess(bundle, tmp_path / "out") as node:
        assert send(node.port, big) == [0x0000]
        (record,) = node.wait_results(1)
        status = Path(f"/proc/{node.process.pid}/status")
        peak_mb = int(next(v for v in status.read_text().split("\n") if v.startswith("VmHWM")).split()[1]) / 1024
    assert record["status"] == "classified", record
    assert peak_mb < 2048, peak_mb  # the dataset went to disk, not held in memory several times over


def test_heatmap_secondary_capture(tmp_path, heat_bundle):
    import pydicom

    from medge.edge.apps.node import report
    from medge.edge.model import Model

    image = write_radiograph(tmp_path / "dx.dcm", size=192, columns=144)
    with NodeProcess(heat_bundle[0], tmp_path / "out", "--heatmap-sc") as node:
        assert send(node.port, image) == [0x0000]
        (record,) = node.wait_results(1)
    source = pydicom.dcmread(image, stop_before_pixels=True)
    sc = pydicom.dcmread(tmp_path / "out" / record["sc"])
    sr = pydicom.dcmread(tmp_path / "out" / record["sr"])
    assert sc.SOPClassUID == "1.2.840.10008.5.1.4.1.1.7" and sc.BurnedInAnnotation == "YES"
    assert (sc.PatientID, sc.StudyInstanceUID) == (source.PatientID, source.StudyInstanceUID)
    assert sc.SeriesInstanceUID not in (source.SeriesInstanceUID, sr.SeriesInstanceUID)
    # the overlay `medge predict --heatmaps` writes (over the image the model saw, 96 px for this bundle), given back
    # the source's proportions and size
    explanation = Model.load(heat_bundle[0]).predict([str(image)], heatmaps=True)[0].explanation
    assert sc.SamplesPerPixel == 3 and sc.pixel_array.shape == (192, 144, 3) and np.ptp(sc.pixel_array) > 0
    assert np.array_equal(sc.pixel_array, report.heatmap_rgb(explanation, source))
    assert sc.SourceImageSequence[0].ReferencedSOPInstanceUID == source.SOPInstanceUID
    assert sr.VerificationFlag == "UNVERIFIED" and "not for diagnostic use" in sr.SeriesDescription
    assert sr.StudyInstanceUID == source.StudyInstanceUID and sr.SeriesInstanceUID != source.SeriesInstanceUID
    equipment = sr.ContributingEquipmentSequence[0]
    purpose = equipment.PurposeOfReferenceCodeSequence[0]
    assert (purpose.CodeValue, purpose.CodingSchemeDesignator, purpose.CodeMeaning) == ("1630", "99IHE",
                                                                                         "Processing Algorithm")
    assert json.loads((tmp_path / "out" / "results.jsonl").read_text())["model_sha256"] in equipment.SoftwareVersions
    evidence = sr.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence[0].ReferencedSOPSequence[0]
    assert evidence.ReferencedSOPInstanceUID == source.SOPInstanceUID


def _wait_for(predicate, timeout_s=30.0):
    deadline = time.monotonic() + timeout_s
    while not (value := predicate()):
        assert time.monotonic() < deadline, f"{predicate} still false after {timeout_s} s"
        time.sleep(0.1)
    return value


def test_study_record_after_the_timeout_and_a_late_instance_updates_it(tmp_path, bundle):
    import pydicom
    from pydicom.uid import generate_uid

    study = generate_uid()
    first = [write_radiograph(tmp_path / f"a{i}.dcm", study_uid=study, seed=i) for i in range(2)]
    late = write_radiograph(tmp_path / "late.dcm", study_uid=study, seed=9)
    studies = tmp_path / "out" / "studies"
    with NodeProcess(bundle, tmp_path / "out", "--study-timeout", "1") as node:
        assert send(node.port, *first) == [0, 0]
        node.wait_results(2)
        (path,) = _wait_for(lambda: list(studies.glob("*.json")) if studies.exists() else [])
        v1 = json.loads(path.read_text())
        assert send(node.port, late) == [0]
        node.wait_results(3)
        _wait_for(lambda: json.loads(path.read_text())["updated"] > v1["updated"])
    v2 = json.loads(path.read_text())
    assert v1["study_instance_uid"] == study and len(v1["instances"]) == 2 and v1["counts"]["classified"] == 2
    assert len(v2["instances"]) == 3 and v2["updated"] == v1["updated"] + 1
    top = max(v2["instances"], key=lambda i: i["probabilities"]["disease"])
    assert v2["label"] == top["label"] and v2["disease_probability"] == top["probabilities"]["disease"]
    assert v2["deciding_instance"] == top["sop_instance_uid"]
    assert pydicom.dcmread(late, stop_before_pixels=True).SOPInstanceUID in [i["sop_instance_uid"] for i in v2["instances"]]


@needs_dcmtk
def test_a_multilabel_bundle_gets_a_group_per_finding_and_its_records(tmp_path, multilabel_bundle):
    """storescu sends a radiograph and a CT slice to a node with a multi-label bundle (Effusion threshold 0.4, Nodule
    unsupported): the radiograph's record carries the decisions, thresholds, positive findings and exam-level flag as
    ``medge predict``'s; its SR a group per finding with those probabilities and decisions, each finding coded in
    SNOMED CT (Nodule by medge's table, Effusion as --class-code says); its SC the most probable finding's heatmap.
    The slice, skipped, has a multi-label record without decisions."""
    import highdicom as hd
    import pydicom

    from medge.edge.findings import label_of

    image, ct = write_radiograph(tmp_path / "dx.dcm", size=96), write_radiograph(tmp_path / "ct.dcm", "CT", size=64)
    with NodeProcess(multilabel_bundle, tmp_path / "out", "--heatmap-sc", "--class-code",
                     "Effusion=SCT:60046008:Pleural effusion") as node:
        storescu(node.port, image, ct)
        records = {r["modality"]: r for r in node.wait_results(2)}
    record, skipped = records["DX"], records["CT"]
    probabilities = ", ".join(f"{k} {v:.3f}" for k, v in record["probabilities"].items())
    assert f": {record['label']} ({probabilities})" in node.log()  # each finding's probability, not only the top one
    assert skipped["status"] == "skipped" and (skipped["task"], skipped["thresholds"]) == (
        "multilabel", {"Effusion": 0.4, "Nodule": None})
    assert [skipped[k] for k in ("label", "decisions", "positive_findings", "any_positive", "sr")] == [None] * 5
    expected = predict_records(multilabel_bundle, [image])[image.name]
    assert record["status"] == "classified" and record["task"] == "multilabel"
    for key in ("probabilities", "label", "decisions", "thresholds", "positive_findings", "any_positive"):
        assert record[key] == expected[key], key
    assert record["thresholds"] == {"Effusion": 0.4, "Nodule": None} and record["decisions"]["Nodule"] is None
    assert record["positive_findings"] == ["Effusion"] * record["decisions"]["Effusion"]
    assert record["label"] == label_of(record["positive_findings"], ["Nodule"])  # "No Finding (not decided: ...)"
    assert record["any_positive"] is record["decisions"]["Effusion"]
    sr = hd.sr.Comprehensive3DSR.from_dataset(pydicom.dcmread(tmp_path / "out" / record["sr"]))
    groups = dict(zip(["Effusion", "Nodule"], sr.content.get_image_measurement_groups(), strict=True))
    assert [(g.finding_type.value, g.finding_type.scheme_designator, g.finding_type.meaning) for g in groups.values()
            ] == [("60046008", "SCT", "Pleural effusion"), ("27925004", "SCT", "Nodule")]
    assert "99MEDGE" not in node.log()  # no class coded privately: nothing to say at start
    for name, group in groups.items():
        measured = {m.name.meaning: m.value for m in group.get_measurements()}
        assert measured.pop("Probability") == record["probabilities"][name]  # bit for bit
        assert measured == ({"Threshold Value": 0.4} if name == "Effusion" else {})
        presence = [q.value.meaning for q in group.get_qualitative_evaluations()]
        decision = record["decisions"][name]
        assert presence == ([] if decision is None else ["Present" if decision else "Absent"])
    dump = subprocess.run([DSRDUMP, str(tmp_path / "out" / record["sr"])], capture_output=True, text=True)
    flag = "(52101004,SCT,\"Present\")" if record["any_positive"] else "(272519000,SCT,\"Absent\")"
    assert dump.returncode == 0 and f'<contains CODE:(,,"Clinical finding (finding)")={flag}>' in dump.stdout, \
        dump.stdout
    sc = pydicom.dcmread(tmp_path / "out" / record["sc"])
    top = max(record["probabilities"], key=record["probabilities"].get)
    assert sc.DerivationDescription.startswith(f"heatmap of where the model looked for {top}, the most probable")


@needs_dcmtk
def test_a_finding_without_a_standard_code_is_named_at_start_and_coded_privately(tmp_path, bundle):
    """A finding medge has no code for ("ptx"): the node says so at start (99MEDGE, dciodvfy, --class-code); its SR
    codes it (C0, 99MEDGE, "ptx"), declares 99MEDGE, and reads back with the record's probabilities."""
    import pydicom

    from tests.edge.multilabel import finding_entry, multilabel_copy

    findings = ("ptx", "Effusion")
    copy = multilabel_copy(bundle, tmp_path / "bundle", [finding_entry(name) for name in findings], findings)
    with NodeProcess(copy, tmp_path / "out") as node:
        storescu(node.port, write_radiograph(tmp_path / "dx.dcm", size=96))
        (record,) = node.wait_results(1)
    log = node.log()
    assert "note: the SR codes ptx in medge's private scheme 99MEDGE" in log and "dciodvfy" in log, log
    assert '--class-code "ptx=SCT:' in log
    sr = pydicom.dcmread(tmp_path / "out" / record["sr"])
    assert [item.CodingSchemeDesignator for item in sr.CodingSchemeIdentificationSequence] == ["99MEDGE", "99IHE"]
    assert sr_probabilities(sr, findings) == record["probabilities"]  # ptx found by (C0, 99MEDGE), bit for bit
